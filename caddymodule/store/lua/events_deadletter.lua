-- Move an outbox entry that kept failing to the dead-letter stream, in one
-- atomic step: the copy (every field of the entry, plus the event id, the
-- number of attempts, the reason and the last error) is appended and the
-- entry acknowledged together, so it is never both or neither. Only while
-- the caller still holds its lease.
-- KEYS[1] outbox stream, KEYS[2] due schedule, KEYS[3] dead-letter stream
--   (one shard: one slot)
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] the caller's lease end (unix ms),
-- ARGV[4] event id, ARGV[5] attempts, ARGV[6] reason, ARGV[7] last error,
-- ARGV[8] now (unix ms)
-- Returns the dead letter's id, or false if the caller lost the lease or
-- the entry is gone.
local s = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not s or tonumber(s) ~= tonumber(ARGV[3]) then
  return false
end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return false
end
local args = {}
local f = e[1][2]
for i = 1, #f, 2 do
  local k = f[i]
  if k ~= 'event_id' and k ~= 'attempts' and k ~= 'reason' and k ~= 'last_error' and k ~= 'failed_at' then
    args[#args + 1] = k
    args[#args + 1] = f[i + 1]
  end
end
args[#args + 1] = 'event_id'
args[#args + 1] = ARGV[4]
args[#args + 1] = 'attempts'
args[#args + 1] = ARGV[5]
args[#args + 1] = 'reason'
args[#args + 1] = ARGV[6]
args[#args + 1] = 'last_error'
args[#args + 1] = ARGV[7]
args[#args + 1] = 'failed_at'
args[#args + 1] = ARGV[8]
local id = redis.call('XADD', KEYS[3], '*', unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return id
