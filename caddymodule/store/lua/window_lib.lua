-- Shared by the failure scripts: prepended to each of them.
--
-- count_in_window adds one to the counter hash key (fields n and start:
-- the failures of the current fixed window and when it began), starting
-- a new window when window ms have passed since start. It returns the
-- count and the window's start; the caller writes them back (or acts on
-- them) in the same script.
local function count_in_window(key, now, window)
  local c = redis.call('HMGET', key, 'n', 'start')
  local n, start = tonumber(c[1]) or 0, tonumber(c[2]) or 0
  if now - start >= window then
    n, start = 0, now
  end
  return n + 1, start
end
