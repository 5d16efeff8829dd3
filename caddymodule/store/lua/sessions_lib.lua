-- Shared by every session script: prepended to each of them.
--
-- KEYS[1] is always the outbox stream of the shard, idl:{T:SS}:events. The
-- other keys a script touches are either passed after it or, for sessions
-- the script only learns about from the data (a user's other sessions),
-- named from KEYS[1]'s prefix: they carry the same {T:SS} hash tag and so
-- live in the same Cluster slot.
--
-- ARGV[1] now (unix ms), ARGV[2] idle timeout (ms, 0 = none), ARGV[3]
-- lifetime (ms, 0 = none), ARGV[4] keep (ms: how long past its natural end a
-- session hash is kept), ARGV[5] tenant, ARGV[6] invalidation channel.
-- Script-specific arguments start at ARGV[7].
local NOW = tonumber(ARGV[1])
local IDLE = tonumber(ARGV[2])
local LIFETIME = tonumber(ARGV[3])
local KEEP = tonumber(ARGV[4])
local TENANT = ARGV[5]
local CHANNEL = ARGV[6]
local EVENTS = KEYS[1]
local PREFIX = string.sub(EVENTS, 1, #EVENTS - #'events')

-- Numbers go to Redis as integer strings (never in exponent notation).
local function int(n) return string.format('%d', n) end

local function sess_key(sid) return PREFIX .. 'sess:' .. sid end
local function zset_key(user) return PREFIX .. 'user:' .. user .. ':sessions' end
local function user_key(user) return PREFIX .. 'user:' .. user end

-- hold_until is when the hash of a session that started at started and was
-- last active (or ended) at t may expire: never before the session could
-- have ended by itself, plus KEEP, so that an ended id keeps answering
-- session_ended with its reason for at least as long as it could have lived.
local function hold_until(started, t)
  if LIFETIME > 0 then
    return started + LIFETIME + KEEP
  end
  return t + IDLE + KEEP
end

local function hold(key, until_ms)
  local ttl = until_ms - NOW
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', key, int(ttl))
end

-- why_over is the reason a live session is over at NOW, or nil: whichever
-- of the idle timeout and the lifetime ran out first.
local function why_over(started, last)
  local idle_end, life_end
  if IDLE > 0 and NOW - last >= IDLE then idle_end = last + IDLE end
  if LIFETIME > 0 and NOW - started >= LIFETIME then life_end = started + LIFETIME end
  if idle_end and (not life_end or idle_end < life_end) then return 'idle' end
  if life_end then return 'expired' end
  return nil
end

-- end_session ends a live session: tombstone (unless tomb is false: its
-- hash is already gone), removal from the user's live set, a session.ended
-- event and an invalidation message, all in this script's atomic step.
-- Ids are idlink's own (validated base64url), so the event data is built
-- by concatenation without escaping.
local function end_session(sid, user, started, install, reason, by, tomb)
  local key = sess_key(sid)
  if tomb then
    if by then
      redis.call('HSET', key, 'state', 'ended', 'reason', reason, 'ended', ARGV[1], 'by', by)
    else
      redis.call('HSET', key, 'state', 'ended', 'reason', reason, 'ended', ARGV[1])
    end
    hold(key, hold_until(started, NOW))
  end
  redis.call('ZREM', zset_key(user), sid)
  local data = '{"session_id":"' .. sid .. '","user_id":"' .. user .. '","reason":"' .. reason .. '"'
  if install and install ~= '' then
    data = data .. ',"install_id":"' .. install .. '"'
  end
  if by then
    data = data .. ',"evicted_by":"' .. by .. '"'
  end
  data = data .. '}'
  redis.call('XADD', EVENTS, '*', 'type', 'session.ended', 'tenant', TENANT,
    'occurred_at', ARGV[1], 'data', data)
  redis.call('PUBLISH', CHANNEL, TENANT .. ' session ' .. sid)
end

