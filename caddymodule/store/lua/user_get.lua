-- Read a user: its hash fields and its installs, in one snapshot. A user
-- lists an install as its field 'i:<install id>', or (written before
-- those fields existed) as a member of its installs set.
-- KEYS[1] user hash, KEYS[2] user's installs set (one slot)
-- Returns {} for an unknown user, else {ext, created, install ids...}.
local flat = redis.call('HGETALL', KEYS[1])
local f, seen, installs = {}, {}, {}
for i = 1, #flat, 2 do
  local name = flat[i]
  if string.sub(name, 1, 2) == 'i:' then
    local id = string.sub(name, 3)
    seen[id] = true
    installs[#installs + 1] = id
  else
    f[name] = flat[i + 1]
  end
end
if not f['created'] then
  return {}
end
local out = {f['ext'] or '', f['created']}
for _, id in ipairs(installs) do
  out[#out + 1] = id
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not seen[id] then
    out[#out + 1] = id
  end
end
return out
