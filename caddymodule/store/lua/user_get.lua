-- Read a user: its hash fields and its installs set, in one snapshot.
-- KEYS[1] user hash, KEYS[2] user's installs set (one slot)
-- Returns {} for an unknown user, else {ext, created, install ids...}.
local f = redis.call('HMGET', KEYS[1], 'ext', 'created')
if not f[2] then
  return {}
end
local out = {f[1] or '', f[2]}
for _, i in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = i
end
return out
