-- Resolve an external id to its user, creating the user on first sight.
-- KEYS[1] ext key, KEYS[2] hash of the candidate user, KEYS[3] outbox
--   stream, KEYS[4] the external id's bucket (all in the external id's
--   shard: one slot)
-- ARGV[1] candidate user id, ARGV[2] external id, ARGV[3] now (unix ms),
-- ARGV[4] tenant, ARGV[5] data of the user.created event (JSON),
-- ARGV[6] TTL of a user made here (ms; '0': it never expires),
-- ARGV[7] '1' if the id is bucketed
-- Returns {user id, 1 if created else 0, TTL of the mapping (ms; -1 none)}.
local bucket = ext_bucket(KEYS[4], ARGV[7])
local u, ttl = ext_get(bucket, KEYS[1], ARGV[2])
if u then
  return {u, 0, ttl}
end
ext_set(bucket, KEYS[1], ARGV[2], ARGV[1], ARGV[6])
redis.call('HSET', KEYS[2], 'ext', ARGV[2], 'created', ARGV[3])
if ARGV[6] ~= '0' then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('XADD', KEYS[3], '*', 'type', 'user.created', 'tenant', ARGV[4],
  'occurred_at', ARGV[3], 'data', ARGV[5])
if ARGV[6] == '0' then
  return {ARGV[1], 1, -1}
end
return {ARGV[1], 1, redis.call('PTTL', KEYS[1])}
