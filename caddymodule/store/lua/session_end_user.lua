-- End every live session of a user (back-channel logout), in its slot.
-- KEYS[1] outbox stream, KEYS[2] the user's live-session zset.
-- ARGV[1..6] see sessions_lib.lua; ARGV[7] user id, ARGV[8] reason.
-- Returns the ids of the sessions this call ended, each with a
-- session.ended event and an invalidation message. A session found past its
-- idle timeout or lifetime ends with that reason instead; ids whose hash is
-- gone or already ended leave the set.
local user = ARGV[7]
local ended = {}
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m, last = members[i], tonumber(members[i + 1])
  local h = redis.call('HMGET', sess_key(m), 'state', 'started', 'install')
  if not h[1] then
    -- The hash outlived its hold time: the session ended unnoticed.
    local why = 'idle'
    if LIFETIME > 0 then why = 'expired' end
    end_session(m, user, 0, nil, why, nil, false)
  elseif h[1] ~= 'live' then
    redis.call('ZREM', KEYS[2], m)
  else
    local started = tonumber(h[2]) or 0
    end_session(m, user, started, h[3], why_over(started, last) or ARGV[8], nil, true)
    ended[#ended + 1] = m
  end
end
return ended
