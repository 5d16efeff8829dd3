-- Link step 3 of a move, in the target user's shard: the user lists the
-- install before the install points to it. Also records the user's
-- external id if its hash lacks it (repair of an interrupted link).
-- KEYS[1] user hash, KEYS[2] user's installs set
-- ARGV[1] install id, ARGV[2] external id of the user ('' to leave it)
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSETNX', KEYS[1], 'ext', ARGV[2])
end
return 1
