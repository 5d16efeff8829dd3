-- Keep one shard's outbox tidy and measure it:
--  1. trim the entries the group has acknowledged (ARGV[3] = '1'): every
--     entry older than the oldest one not yet acknowledged (the oldest
--     pending one, else the first one not yet read), all of them if none;
--  2. trim entries older than the retention point ARGV[2] (an id; '' for
--     none) whether acknowledged or not, and acknowledge the pending ones
--     among them (they can never be delivered any more);
--  3. put back in the due schedule pending entries idle for more than
--     ARGV[7] ms that it does not hold (none, unless someone read the
--     group by hand), so they are delivered;
--  4. delete consumers (other than ARGV[4]) without pending entries and
--     idle for more than ARGV[5] ms: instances that stopped.
-- KEYS[1] outbox stream, KEYS[2] due schedule, KEYS[3] dead-letter stream
--   (one shard: one slot)
-- ARGV[1] group, ARGV[2] retention point ('' or an id), ARGV[3] trim
-- acknowledged '1'/'0', ARGV[4] this consumer, ARGV[5] consumer idle ms,
-- ARGV[6] now (unix ms), ARGV[7] orphan idle ms, ARGV[8] the last possible
-- id before the retention point
-- Returns {oldest unacknowledged id or '' (with a group) / oldest id (without),
--   acknowledged trimmed, trimmed by retention, pending trimmed by retention,
--   outbox length, pending, dead letters, consumers deleted, repaired,
--   '1' if the group exists else '0'}.
local dead = redis.call('XLEN', KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'', 0, 0, 0, 0, 0, dead, 0, 0, '0'}
end

local function field(list, name)
  for i = 1, #list, 2 do
    if list[i] == name then return list[i + 1] end
  end
  return nil
end

local group = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(g, 'name') == ARGV[1] then group = g end
end

-- The oldest entry not yet acknowledged by the group: pending entries all
-- precede the group's last-delivered id, so it is the oldest pending one,
-- else the first one after the last delivered.
local function oldest_unacked()
  local p = redis.call('XPENDING', KEYS[1], ARGV[1])
  if tonumber(p[1]) > 0 then return p[2], tonumber(p[1]) end
  local last = field(group, 'last-delivered-id')
  local nxt = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
  if #nxt > 0 then return nxt[1][1], 0 end
  return nil, 0
end

local acked, retained, retained_pending, deleted, repaired = 0, 0, 0, 0, 0
local oldest, pending = nil, 0
if group then
  oldest, pending = oldest_unacked()
  if ARGV[3] == '1' then
    if oldest then
      acked = redis.call('XTRIM', KEYS[1], 'MINID', oldest)
    else
      acked = redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
    end
  end
end

if ARGV[2] ~= '' then
  retained = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
  if group and retained > 0 then
    -- Pending entries that were trimmed: acknowledge them, off the schedule.
    -- At most 10000 per run: the rest on the next one.
    for _ = 1, 100 do
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', ARGV[8], 100)
      if #p == 0 then break end
      for _, e in ipairs(p) do
        redis.call('XACK', KEYS[1], ARGV[1], e[1])
        redis.call('ZREM', KEYS[2], e[1])
        retained_pending = retained_pending + 1
      end
    end
    oldest, pending = oldest_unacked()
  end
end

if group then
  for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[7], '-', '+', 100)) do
    if not redis.call('ZSCORE', KEYS[2], e[1]) then
      redis.call('ZADD', KEYS[2], ARGV[6], e[1])
      repaired = repaired + 1
    end
  end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local name = field(c, 'name')
    if name ~= ARGV[4] and tonumber(field(c, 'pending')) == 0
        and tonumber(field(c, 'idle')) > tonumber(ARGV[5]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      deleted = deleted + 1
    end
  end
else
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 then oldest = first[1][1] end
end

return {oldest or '', acked, retained, retained_pending, redis.call('XLEN', KEYS[1]),
  pending, dead, deleted, repaired, group and '1' or '0'}
