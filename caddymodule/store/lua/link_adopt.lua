-- Link step 3 of a move, in the target user's shard: the user lists the
-- install (field 'i:<install id>') before the install points to it. Also
-- records the user's external id if its hash lacks it (repair of an
-- interrupted link).
-- KEYS[1] user hash
-- ARGV[1] install id, ARGV[2] external id of the user ('' to leave it)
redis.call('HSET', KEYS[1], 'i:' .. ARGV[1], '')
if ARGV[2] ~= '' then
  redis.call('HSETNX', KEYS[1], 'ext', ARGV[2])
end
return 1
