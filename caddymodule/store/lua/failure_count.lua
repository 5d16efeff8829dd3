-- Count one failed verification of a client (its IP address), in the
-- counter's slot; ban the client once it fails more than the limit within
-- the window. Single key.
-- KEYS[1] the client's failure counter (hash: n, start, ban).
-- ARGV[1] now (unix ms), ARGV[2] window (ms), ARGV[3] max failures per
-- window, ARGV[4] ban (ms), ARGV[5] invalidation channel, ARGV[6] the
-- message announcing the ban, to which the ban's end (unix ms) is appended.
-- Returns {'banned', ms left} (already banned, or banned by this failure)
-- or {'counted', failures in the window}.
local now, window, max, ban = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local banned = tonumber(redis.call('HGET', KEYS[1], 'ban')) or 0
if banned > now then
  return {'banned', banned - now}
end
local n, start = count_in_window(KEYS[1], now, window)
if n > max then
  local till = string.format('%d', now + ban)
  redis.call('HSET', KEYS[1], 'n', '0', 'start', ARGV[1], 'ban', till)
  redis.call('PEXPIRE', KEYS[1], ban)
  redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. till)
  return {'banned', ban}
end
redis.call('HSET', KEYS[1], 'n', string.format('%d', n), 'start', string.format('%d', start))
redis.call('PEXPIRE', KEYS[1], start + window - now)
return {'counted', n}
