-- Last link step, in the install's shard: optionally record the outcome of
-- a link that kept the install's user (and set that user's external id
-- when it lives in this shard), forget a finished prev, release the lock.
-- KEYS[1] install hash, KEYS[2] install lock,
-- KEYS[3] the user's hash if in this shard, else KEYS[1]
-- ARGV[1] lock token, ARGV[2] prev to forget ('' none),
-- ARGV[3] user to record ('' to record nothing), ARGV[4] external id,
-- ARGV[5] created 0/1, ARGV[6] '1' if KEYS[3] is the user's hash
-- Returns 1, or 0 if the install no longer points to the user to record.
local ok = 1
if ARGV[3] ~= '' then
  if redis.call('HGET', KEYS[1], 'user') == ARGV[3] then
    -- The last link's user is the install's user (link_user, which
    -- earlier releases stored, always equals it), and without a merge
    -- link_merged_from is not stored (a missing one reads as '').
    redis.call('HSET', KEYS[1], 'link_ext', ARGV[4], 'link_created', ARGV[5])
    redis.call('HDEL', KEYS[1], 'pending_ext', 'pending_user', 'link_merged_from', 'link_user')
    if ARGV[6] == '1' then
      redis.call('HSET', KEYS[3], 'ext', ARGV[4])
    end
  else
    ok = 0
  end
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'prev') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'prev')
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return ok
