-- Create an install and its anonymous user, in the install's shard.
-- KEYS[1] install hash, KEYS[2] user hash, KEYS[3] outbox stream (all in
--   one shard: one slot)
-- ARGV[1] install id, ARGV[2] user id (AnonymousUserOf the install id), ARGV[3] now (unix ms),
-- ARGV[4] tenant, ARGV[5] data of the user.created event (JSON),
-- ARGV[6] TTL of the install and its user (ms; '0': they never expire)
-- The user lists the install as its field 'i:<install id>'.
-- Returns 1, or 0 if the install already exists (never for fresh ids).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
-- The install's anonymous user is not stored: it is AnonymousUserOf(install
-- id), ARGV[2] (installs of earlier releases have an anon_user field).
redis.call('HSET', KEYS[1], 'user', ARGV[2], 'created', ARGV[3])
redis.call('HSET', KEYS[2], 'created', ARGV[3], 'i:' .. ARGV[1], '')
if ARGV[6] ~= '0' then
  for i = 1, 2 do
    redis.call('PEXPIRE', KEYS[i], ARGV[6])
  end
end
redis.call('XADD', KEYS[3], '*', 'type', 'user.created', 'tenant', ARGV[4],
  'occurred_at', ARGV[3], 'data', ARGV[5])
return 1
