-- Renew or end the expiry of the user made for an external id, in the
-- external id's shard (where such a user is made).
-- KEYS[1] ext key, KEYS[2] the user's hash, KEYS[3] the user's sessions
--   set, KEYS[4] the external id's bucket (all in one slot)
-- ARGV[1] the user the external id names, ARGV[2] TTL (ms; '0': make them
-- permanent), ARGV[3] the external id, ARGV[4] '1' if it is bucketed
-- Only the ext key and the hash are renewed if they expire (PEXPIRE XX);
-- the sessions set then lives exactly as long as the user, so that a
-- session of a user that expired ends at its next request. A mapping made
-- permanent moves into the bucket.
-- Returns the user's TTL afterwards (ms; -1 none, -2 no such user).
local bucket = ext_bucket(KEYS[4], ARGV[4])
if bucket ~= '' and redis.call('HGET', bucket, ARGV[3]) == ARGV[1] then
  -- A permanent mapping: its user was made permanent with it.
  if ARGV[2] == '0' then
    redis.call('PERSIST', KEYS[2])
  end
elseif redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.call('PTTL', KEYS[2])
elseif ARGV[2] == '0' then
  ext_persist(bucket, KEYS[1], ARGV[3], ARGV[1])
  redis.call('PERSIST', KEYS[2])
else
  for i = 1, 2 do
    redis.call('PEXPIRE', KEYS[i], ARGV[2], 'XX')
  end
end
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('PEXPIRE', KEYS[3], left)
  end
else
  redis.call('PERSIST', KEYS[3])
end
return left
