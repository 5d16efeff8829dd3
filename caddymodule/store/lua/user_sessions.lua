-- Read a user's live sessions and attributes (changes nothing).
-- KEYS[1] outbox stream (for the prefix), KEYS[2] the user's live-session
-- zset, KEYS[3] the user's attributes hash.
-- ARGV[1..6] see sessions_lib.lua.
-- Returns {{attribute key, value}... flat, {id, started, last, install,
-- verified}...}: the sessions live at NOW, least recently active first. Sessions past their
-- idle timeout or lifetime are left out (the next admission or request
-- ends them with their events).
local out = {}
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m, last = members[i], tonumber(members[i + 1])
  local h = redis.call('HMGET', sess_key(m), 'state', 'started', 'install', 'verified')
  if h[1] == 'live' and not why_over(tonumber(h[2]) or 0, last) then
    out[#out + 1] = {m, h[2] or '0', int(last), h[3] or '', h[4] or '0'}
  end
end
return {redis.call('HGETALL', KEYS[3]), out}
