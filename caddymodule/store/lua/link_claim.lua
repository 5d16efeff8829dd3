-- Link step 2, in the external id's shard: who is this external id? The
-- mapping is set only if absent and never reassigned, so concurrent links
-- of one external id from any number of installs agree on one user.
-- KEYS[1] ext key, KEYS[2] hash of the candidate new user, KEYS[3] outbox,
--   KEYS[4] the external id's bucket (all in the external id's shard: one
--   slot)
-- ARGV[1] 'claim' (the install's anonymous user, reserved for this external
--   id, becomes its user) or 'create' (a new user), ARGV[2] that user id,
-- ARGV[3] external id, ARGV[4] now (unix ms), ARGV[5] tenant,
-- ARGV[6] event type, ARGV[7] event data (JSON), ARGV[8] '1' if the id is
-- bucketed
-- Returns {user id, 1 if this call assigned it else 0, TTL of the ext key
-- (ms; -1 none; one that expires names a user made for an unverified id,
-- which the caller makes permanent)}.
local bucket = ext_bucket(KEYS[4], ARGV[8])
local u, ttl = ext_get(bucket, KEYS[1], ARGV[3])
if u then
  return {u, 0, ttl}
end
ext_set(bucket, KEYS[1], ARGV[3], ARGV[2], '0')
if ARGV[1] == 'create' then
  redis.call('HSET', KEYS[2], 'ext', ARGV[3], 'created', ARGV[4])
end
redis.call('XADD', KEYS[3], '*', 'type', ARGV[6], 'tenant', ARGV[5],
  'occurred_at', ARGV[4], 'data', ARGV[7])
return {ARGV[2], 1, -1}
