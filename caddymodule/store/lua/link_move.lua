-- Link step 4 of a move, in the install's shard: compare-and-set the
-- install's user, remember the outcome, append the event and tell every
-- instance to drop its cached mapping, atomically; forget the pending
-- candidate user. When the previous user
-- lives in this shard too, drop the install from its list (its field, and
-- its installs set of the old schema) and release the
-- lock here as well (and delete it if it was the install's anonymous user,
-- merged away: nothing else names it; the event carries its id); else
-- remember it as prev for the caller to finish.
-- KEYS[1] install hash, KEYS[2] install lock, KEYS[3] outbox,
-- KEYS[4] previous user's installs set if in this shard, else KEYS[1],
-- KEYS[5] previous user's hash if in this shard, else KEYS[1],
-- KEYS[6] previous user's claims hash if in this shard, else KEYS[1]
-- ARGV[1] install id, ARGV[2] expected (previous) user, ARGV[3] new user,
-- ARGV[4] external id, ARGV[5] created 0/1, ARGV[6] merged_from ('' none),
-- ARGV[7] lock token, ARGV[8] '1' if KEYS[4] is the previous user's set,
-- ARGV[9] now (unix ms), ARGV[10] tenant, ARGV[11] event type,
-- ARGV[12] event data (JSON), ARGV[13] invalidation channel, ARGV[14] message
-- Returns 1, or 0 if the install no longer points to the expected user
-- (the lock is then released).
local function unlock()
  if redis.call('GET', KEYS[2]) == ARGV[7] then
    redis.call('DEL', KEYS[2])
  end
end
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[2] then
  unlock()
  return 0
end
-- The last link's user is the install's user: link_user (which earlier
-- releases stored, always equal to it) is not. An empty link_merged_from
-- is not stored either (readers take a missing one as '').
redis.call('HSET', KEYS[1], 'user', ARGV[3], 'link_ext', ARGV[4], 'link_created', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'link_merged_from', ARGV[6])
  redis.call('HDEL', KEYS[1], 'pending_ext', 'pending_user', 'link_user')
else
  redis.call('HDEL', KEYS[1], 'pending_ext', 'pending_user', 'link_merged_from', 'link_user')
end
if ARGV[8] == '1' then
  redis.call('HDEL', KEYS[5], 'i:' .. ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[1], 'prev')
  unlock()
  if ARGV[6] ~= '' then
    redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  end
else
  redis.call('HSET', KEYS[1], 'prev', ARGV[2])
end
redis.call('XADD', KEYS[3], '*', 'type', ARGV[11], 'tenant', ARGV[10],
  'occurred_at', ARGV[9], 'data', ARGV[12])
redis.call('PUBLISH', ARGV[13], ARGV[14])
return 1
