-- Move dead letters back to the outbox, each in one atomic step with its
-- removal from the dead-letter stream. The new outbox entry keeps the
-- event's fields and its event id (receivers see the same id again); the
-- attempts start over.
-- KEYS[1] dead-letter stream, KEYS[2] outbox stream (one shard: one slot)
-- ARGV[1] '*' to move the oldest ARGV[2] dead letters, or '=' followed by
-- the dead-letter ids to move.
-- Returns {number moved, id not found, ...}.
local ids = {}
if ARGV[1] == '*' then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))) do
    ids[#ids + 1] = e[1]
  end
else
  for i = 2, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
end
local out = {0}
for _, id in ipairs(ids) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e == 0 then
    out[#out + 1] = id
  else
    local args = {}
    local f = e[1][2]
    for i = 1, #f, 2 do
      local k = f[i]
      if k ~= 'attempts' and k ~= 'reason' and k ~= 'last_error' and k ~= 'failed_at' then
        args[#args + 1] = k
        args[#args + 1] = f[i + 1]
      end
    end
    redis.call('XADD', KEYS[2], '*', unpack(args))
    redis.call('XDEL', KEYS[1], id)
    out[1] = out[1] + 1
  end
end
return out
