-- Acknowledge a delivered outbox entry: off the group's pending list and off
-- the due schedule.
-- KEYS[1] outbox stream, KEYS[2] due schedule (one shard: one slot)
-- ARGV[1] group, ARGV[2] entry id
-- Returns 1 if the entry was pending, else 0 (already acknowledged).
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return n
