-- Take up to ARGV[5] outbox entries of one shard for delivery: first those
-- whose time has come in the due schedule (retries, and entries whose lease
-- ran out because the instance that held them stopped), claimed to this
-- consumer; then, if ARGV[6] is '1', new entries read through the group.
-- Every entry taken gets the lease ARGV[4] in the schedule, so no other
-- instance takes it until then: two instances never attempt one entry at
-- the same time.
-- KEYS[1] outbox stream, KEYS[2] due schedule (zset) (one shard: one slot)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] now (unix ms),
-- ARGV[4] lease end (unix ms), ARGV[5] max entries, ARGV[6] read new '1'/'0'
-- Returns a list of {entry id, {field, value, ...}, delivery count}.
local out = {}
local max = tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, max)
for _, id in ipairs(due) do
  local c = redis.pcall('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
  if type(c) == 'table' and c.err then
    -- No group (the stream was deleted): nothing of it is pending any more.
    redis.call('ZREM', KEYS[2], id)
  elseif c[1] and c[1][2] then
    redis.call('ZADD', KEYS[2], ARGV[4], id)
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    out[#out + 1] = {id, c[1][2], p[1][4]}
  else
    -- Acknowledged meanwhile, or its entry was trimmed from the stream
    -- (Redis 7 then drops it from the pending list itself; older versions
    -- return it without fields).
    if c[1] then
      redis.call('XACK', KEYS[1], ARGV[1], id)
    end
    redis.call('ZREM', KEYS[2], id)
  end
end
local room = max - #out
if ARGV[6] == '1' and room > 0 then
  local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room,
    'STREAMS', KEYS[1], '>')
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP') then
      return redis.error_reply(r.err)
    end
    -- From the start: events appended before the group existed (before the
    -- webhook was configured) are delivered too.
    redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
    r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room,
      'STREAMS', KEYS[1], '>')
  end
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do
      redis.call('ZADD', KEYS[2], ARGV[4], e[1])
      out[#out + 1] = {e[1], e[2], 1}
    end
  end
end
return out
