-- End a session on request (logout), in its slot. Idempotent.
-- KEYS[1] outbox stream, KEYS[2] the session hash.
-- ARGV[1..6] see sessions_lib.lua; ARGV[7] session id, ARGV[8] reason.
-- Returns {'unknown'}, {'ended', reason} for a session that had already
-- ended, or {'ended_now', reason}. A session found past its idle timeout
-- or lifetime ends with that reason instead.
local sid = ARGV[7]
local h = redis.call('HMGET', KEYS[2], 'state', 'user', 'started', 'last', 'install', 'reason')
if not h[1] then
  return {'unknown'}
end
if h[1] ~= 'live' then
  return {'ended', h[6] or ''}
end
local started = tonumber(h[3]) or 0
local why = why_over(started, tonumber(h[4]) or 0) or ARGV[8]
end_session(sid, h[2] or '', started, h[5], why, nil, true)
return {'ended_now', why}
