-- Record the activity instances saw on sessions of one shard (one slot),
-- written behind the requests: each instance flushes what it saw once a
-- second, so that "least recently active" (session_admit.lua) and the idle
-- timeout are accurate to about a second on every instance while the
-- request path makes no Redis call.
-- KEYS[1] outbox stream, KEYS[2..] the session hashes.
-- ARGV[1..6] see sessions_lib.lua; ARGV[7..] one activity time (unix ms)
-- per session hash, in the order of KEYS[2..].
-- Activity only moves forward (an older report is ignored), never revives
-- an ended session and never ends one: a session past its idle timeout
-- when the activity came is left to session_touch.lua and session_admit.lua,
-- which end it with its event. Returns how many sessions it moved.
local moved = 0
for i = 2, #KEYS do
  local at = math.min(tonumber(ARGV[5 + i]) or 0, NOW)
  local h = redis.call('HMGET', KEYS[i], 'state', 'user', 'started', 'last')
  local last = tonumber(h[4]) or 0
  if h[1] == 'live' and at > last and (IDLE == 0 or at < last + IDLE) then
    local started = tonumber(h[3]) or 0
    if LIFETIME == 0 or at < started + LIFETIME then
      local sid = string.sub(KEYS[i], #PREFIX + #'sess:' + 1)
      if redis.call('ZADD', zset_key(h[2]), 'XX', 'CH', int(at), sid) == 1 then
        redis.call('HSET', KEYS[i], 'last', int(at))
        hold(KEYS[i], hold_until(started, at))
        moved = moved + 1
      end
    end
  end
end
return moved
