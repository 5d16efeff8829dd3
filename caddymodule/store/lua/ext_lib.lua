-- Shared by the scripts that read or write the user of an external id:
-- prepended to each of them.
--
-- A permanent mapping is a field of the external id's bucket hash
-- (Keys.ExternalBucket); one that expires (a user made for an unverified
-- id), one of an id too long for a bucket, and one written before buckets
-- existed are the external id's own key (Keys.External). bucket is the
-- bucket's key name, or '' when the id is not bucketed.

-- ext_get returns the user of external id ext and the TTL of the mapping
-- (ms; -1 none), or nil. A permanent own key of a bucketed id (the old
-- schema) is moved into the bucket.
local function ext_get(bucket, own, ext)
  if bucket ~= '' then
    local u = redis.call('HGET', bucket, ext)
    if u then
      return u, -1
    end
  end
  local u = redis.call('GET', own)
  if not u then
    return nil, -2
  end
  local ttl = redis.call('PTTL', own)
  if ttl == -1 and bucket ~= '' then
    redis.call('HSET', bucket, ext, u)
    redis.call('DEL', own)
  end
  return u, ttl
end

-- ext_set records u as the user of ext (which has none): permanently
-- (ttl '0'), in the bucket if there is one, else in the own key with the
-- TTL (ms).
local function ext_set(bucket, own, ext, u, ttl)
  if ttl ~= '0' then
    redis.call('SET', own, u, 'PX', ttl)
  elseif bucket ~= '' then
    redis.call('HSET', bucket, ext, u)
  else
    redis.call('SET', own, u)
  end
end

-- ext_persist makes the own key's mapping of ext to u permanent: into the
-- bucket if there is one.
local function ext_persist(bucket, own, ext, u)
  if bucket ~= '' then
    redis.call('HSET', bucket, ext, u)
    redis.call('DEL', own)
  else
    redis.call('PERSIST', own)
  end
end

-- ext_bucket is the bucket's key name if flag is '1', else ''.
local function ext_bucket(key, flag)
  if flag == '1' then
    return key
  end
  return ''
end
