-- End a user's live sessions on request (revocation by the user or an
-- administrator), in the user's slot.
-- KEYS[1] outbox stream, KEYS[2] the user's live-session zset.
-- ARGV[1..6] see sessions_lib.lua; ARGV[7] user id, ARGV[8] reason,
-- ARGV[9] the handle of the one session to end (redis.sha1hex of its id),
-- or '' for all of them, ARGV[10] the id of a session to leave alone, or ''.
-- Returns {{id, reason}...}: the sessions ended, each with its reason (a
-- session found past its idle timeout or lifetime ends with that reason
-- instead). Only members of the user's own set are considered, so a
-- handle of another user's session ends nothing.
local user, reason, handle, keep = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local out = {}
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m, last = members[i], tonumber(members[i + 1])
  if m ~= keep and (handle == '' or redis.sha1hex(m) == handle) then
    local h = redis.call('HMGET', sess_key(m), 'state', 'started', 'install')
    if not h[1] then
      -- The hash outlived its hold time: the session ended unnoticed.
      local why = 'idle'
      if LIFETIME > 0 then why = 'expired' end
      end_session(m, user, 0, nil, why, nil, false)
      out[#out + 1] = {m, why}
    elseif h[1] ~= 'live' then
      redis.call('ZREM', KEYS[2], m)
    else
      local started = tonumber(h[2]) or 0
      local why = why_over(started, last) or reason
      end_session(m, user, started, h[3], why, nil, true)
      out[#out + 1] = {m, why}
    end
  end
end
return out
