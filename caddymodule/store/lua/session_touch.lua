-- Look a session up and record activity on it, in its slot. Ends it (with
-- its events) if it is past its idle timeout or lifetime.
-- KEYS[1] outbox stream, KEYS[2] the session hash.
-- ARGV[1..6] see sessions_lib.lua; ARGV[7] session id.
-- Returns {'unknown'}, {'ended', reason, user id}, or
-- {'live', user id, started, last, install, verified, external id, email,
-- phone, TTL of the user (ms; -1 none)} (times in unix ms; absent values
-- are ''). The user's live set keeps its own TTL: only a user that expires
-- has one, and the set expires with the user (see user_expiry.lua).
local sid = ARGV[7]
local h = redis.call('HMGET', KEYS[2], 'state', 'user', 'started', 'last', 'install', 'verified', 'reason')
if not h[1] then
  return {'unknown'}
end
local user = h[2] or ''
if h[1] ~= 'live' then
  return {'ended', h[7] or '', user}
end
local started, last = tonumber(h[3]) or 0, tonumber(h[4]) or 0
local zkey = zset_key(user)
local why = why_over(started, last)
if not why and not redis.call('ZSCORE', zkey, sid) then
  -- Not in the user's live set (which expired): it cannot be counted
  -- against the limit any more, so it cannot stay live.
  why = 'expired'
end
if why then
  end_session(sid, user, started, h[5], why, nil, true)
  return {'ended', why, user}
end
if NOW > last then
  last = NOW
  redis.call('HSET', KEYS[2], 'last', ARGV[1])
  redis.call('ZADD', zkey, 'XX', ARGV[1], sid)
end
hold(KEYS[2], hold_until(started, last))
local ukey = user_key(user)
local u = redis.call('HMGET', ukey, 'ext', 'email', 'phone')
return {'live', user, h[3] or '0', int(last), h[5] or '', h[6] or '0', u[1] or '', u[2] or '', u[3] or '',
  redis.call('PTTL', ukey)}
