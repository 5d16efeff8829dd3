-- Move an outbox entry's time in the due schedule (a retry after a failed
-- attempt, or an early release of its lease), only while the caller still
-- holds the lease it took: if the lease ran out and another instance took
-- the entry, or the entry was acknowledged, nothing changes.
-- KEYS[1] due schedule
-- ARGV[1] entry id, ARGV[2] the caller's lease end (unix ms),
-- ARGV[3] new time (unix ms)
-- Returns 1 if moved, else 0.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
