-- Admit a new session for a user under the limit, in the user's slot.
-- KEYS[1] outbox stream, KEYS[2] the user's live-session zset, KEYS[3] the
-- new session's hash, KEYS[4] the user hash, KEYS[5] the user's attributes
-- hash (all in the user's shard).
-- ARGV[1..6] see sessions_lib.lua; ARGV[7] new session id, ARGV[8] user id,
-- ARGV[9] max live sessions, ARGV[10] install id or '', ARGV[11] verified
-- ('1' or '0'), ARGV[12] data of the session.started event (JSON),
-- ARGV[13] attributes: '' (leave them), 'merge' or 'replace', ARGV[14] the
-- limit of the attributes as compact JSON (bytes), ARGV[15] verified email
-- or '', ARGV[16] verified phone or '', ARGV[17..] attribute pairs: the
-- key JSON-encoded (quotes included), then the value as compact JSON
-- ('null' removes the key).
-- The attributes hash is a JSON object stored as jsonobj_lib.lua says.
-- Returns {'ok', {ended ids, evicted by this session}} or, when the
-- attributes would exceed the limit, {'too_large', size} with nothing done.
local sid, user, max, install = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]

local attrs_mode = ARGV[13]
if attrs_mode ~= '' then
  local size = obj_size_after(KEYS[5], attrs_mode, 17)
  if size > tonumber(ARGV[14]) then
    return {'too_large', int(size)}
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return redis.error_reply('session id collision')
end

-- 1. End the sessions past their idle timeout or lifetime; set aside the
-- ones of the same install (a new login on a device replaces its old one).
local victims = {}
local keep = {}
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m, last = members[i], tonumber(members[i + 1])
  local h = redis.call('HMGET', sess_key(m), 'state', 'started', 'install', 'seq', 'verified')
  if not h[1] then
    -- The hash outlived its hold time: the session ended unnoticed.
    local why = 'idle'
    if LIFETIME > 0 then why = 'expired' end
    end_session(m, user, 0, nil, why, nil, false)
  elseif h[1] ~= 'live' then
    redis.call('ZREM', KEYS[2], m)
  else
    local started = tonumber(h[2]) or 0
    local why = why_over(started, last)
    if why then
      end_session(m, user, started, h[3], why, nil, true)
    elseif install ~= '' and h[3] == install then
      redis.call('ZREM', KEYS[2], m)
      victims[#victims + 1] = m
    elseif (h[5] == '1') == (ARGV[11] == '1') then
      -- Verified and unverified sessions are limited apart: an unverified
      -- (report or off mode) login never evicts a verified session.
      keep[#keep + 1] = {m, last, tonumber(h[4]) or 0}
    end
  end
end

-- 2. Of the sessions as verified as the new one (the two kinds are
-- limited apart), the least recently active go (of two last active in the same
-- millisecond, the one admitted first: seq counts the user's admissions),
-- so that with the new one the user has max live sessions.
if #keep >= max then
  table.sort(keep, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    if a[3] ~= b[3] then return a[3] < b[3] end
    return a[1] < b[1]
  end)
  for i = 1, #keep - max + 1 do
    victims[#victims + 1] = keep[i][1]
  end
end

-- 3. Admit the new session, store what the login told about the user.
local seq = redis.call('HINCRBY', KEYS[4], 'sess_seq', 1)
redis.call('HSET', KEYS[3], 'user', user, 'started', ARGV[1], 'last', ARGV[1],
  'install', install, 'verified', ARGV[11], 'state', 'live', 'seq', int(seq))
hold(KEYS[3], hold_until(NOW, NOW))
redis.call('ZADD', KEYS[2], ARGV[1], sid)
-- The live set of a user that expires (made for an unverified id) expires
-- with it: a session of a user that is gone ends at its next request.
local user_ttl = redis.call('PTTL', KEYS[4])
if user_ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], user_ttl)
end
if attrs_mode ~= '' then
  obj_apply(KEYS[5], attrs_mode, 17)
end
if ARGV[15] ~= '' then
  redis.call('HSET', KEYS[4], 'email', ARGV[15])
end
if ARGV[16] ~= '' then
  redis.call('HSET', KEYS[4], 'phone', ARGV[16])
end
redis.call('XADD', EVENTS, '*', 'type', 'session.started', 'tenant', TENANT,
  'occurred_at', ARGV[1], 'data', ARGV[12])

-- 4. End the evicted ones, naming the session that took their place.
for _, m in ipairs(victims) do
  local h = redis.call('HMGET', sess_key(m), 'started', 'install')
  end_session(m, user, tonumber(h[1]) or NOW, h[2], 'evicted', sid, true)
end
return {'ok', victims}
