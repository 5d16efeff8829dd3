-- Shared by the scripts that change a JSON object stored as a hash (a
-- user's external attributes, a user's claims): prepended to each of them.
--
-- Each field of the hash is a top-level key JSON-encoded (quotes included)
-- and its value is compact JSON, so the object's compact JSON is
-- '{' .. k1 .. ':' .. v1 .. ',' .. ... '}' and its size is known without
-- decoding anything. An update is a mode, 'merge' (keys not named are
-- kept) or 'replace' (the whole object), and the pairs ARGV[first],
-- ARGV[first + 1], ...: a key, then its value ('null' removes the key).

-- obj_size_after is the size in bytes of the object's compact JSON once
-- the update is applied.
local function obj_size_after(key, mode, first)
  local lens = {}
  if mode == 'merge' then
    local cur = redis.call('HGETALL', key)
    for i = 1, #cur, 2 do
      lens[cur[i]] = #cur[i + 1]
    end
  end
  for i = first, #ARGV, 2 do
    if ARGV[i + 1] == 'null' then
      lens[ARGV[i]] = nil
    else
      lens[ARGV[i]] = #ARGV[i + 1]
    end
  end
  local size, n = 2, 0
  for k, l in pairs(lens) do
    size = size + #k + 1 + l
    n = n + 1
  end
  if n > 1 then
    size = size + n - 1
  end
  return size
end

-- obj_apply applies the update.
local function obj_apply(key, mode, first)
  if mode == 'replace' then
    redis.call('DEL', key)
  end
  for i = first, #ARGV, 2 do
    if ARGV[i + 1] == 'null' then
      redis.call('HDEL', key, ARGV[i])
    else
      redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    end
  end
end

-- obj_json is the object's compact JSON, keys in byte order.
local function obj_json(key)
  local flat = redis.call('HGETALL', key)
  local keys, vals = {}, {}
  for i = 1, #flat, 2 do
    keys[#keys + 1] = flat[i]
    vals[flat[i]] = flat[i + 1]
  end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    parts[i] = k .. ':' .. vals[k]
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

