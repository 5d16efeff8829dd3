-- Count one failed verification on a request that carried a live session,
-- in the session's slot; end the session (reason too_many_failures, with
-- its session.ended event and announcement) once it has more failures
-- than the limit within the window. Nothing is stored for a session that
-- is not live, so random ids cost nothing.
-- KEYS[1] outbox stream, KEYS[2] the session hash, KEYS[3] the session's
-- failure counter (hash: n, start).
-- ARGV[1..6] see sessions_lib.lua; ARGV[7] session id, ARGV[8] window
-- (ms), ARGV[9] max failures per window.
-- Returns {'not_live'}, {'counted', failures} or {'ended'}.
local sid, window, max = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local h = redis.call('HMGET', KEYS[2], 'state', 'user', 'started', 'install')
if h[1] ~= 'live' then
  return {'not_live'}
end
local n, start = count_in_window(KEYS[3], NOW, window)
if n > max then
  redis.call('DEL', KEYS[3])
  end_session(sid, h[2] or '', tonumber(h[3]) or 0, h[4], 'too_many_failures', nil, true)
  return {'ended'}
end
redis.call('HSET', KEYS[3], 'n', int(n), 'start', int(start))
redis.call('PEXPIRE', KEYS[3], start + window - NOW)
return {'counted', n}
