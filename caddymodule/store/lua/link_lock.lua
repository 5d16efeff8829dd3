-- Link step 1, in the install's shard: read the install, answer a repeated
-- link from the remembered outcome, else take the install's link lock and,
-- if the install still has its anonymous user, reserve that user for this
-- external id (it can then never take another one). Also fix the id of the
-- user this link would create (pending_user, for pending_ext): a retry of
-- an interrupted link reuses it, so it can tell that it made that user.
-- Once locked, an install that expires (never linked) whose user is the
-- anonymous user CreateInstall made with it (AnonymousUserOf) is made
-- permanent here, with that user (step 1b in the same script).
-- KEYS[1] install hash, KEYS[2] install lock, KEYS[3] the hash and KEYS[4]
--   the old-schema installs set of the install's anonymous user (all in the
--   install's shard)
-- ARGV[1] external id, ARGV[2] lock token, ARGV[3] lock ttl (ms),
-- ARGV[4] a fresh candidate id for a new user, ARGV[5] AnonymousUserOf(the
--   install id): the anonymous user of an install without an anon_user
--   field (every one this release makes)
-- Returns {'missing'}, {'busy'},
--   {'same', user, link_created, link_merged_from}  (nothing changed, no lock),
--   {'repair', user, link_created, link_merged_from, prev}  (locked), or
--   {'locked', user, anon_user, anon_claim, link_ext, link_user, link_created,
--    link_merged_from, prev, candidate user id, TTL of the install (ms; -1
--    none; else the caller makes the install and its user permanent)}
local f = redis.call('HMGET', KEYS[1], 'user', 'anon_user', 'anon_claim', 'link_ext',
  'link_user', 'link_created', 'link_merged_from', 'prev', 'pending_ext', 'pending_user')
if not f[1] then
  return {'missing'}
end
for i = 2, 10 do
  if not f[i] then f[i] = '' end
end
local user, anon, claim, lext, luser, lcreated, lmerged, prev =
  f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
if anon == '' then
  -- Not stored since installs have a derived anonymous user.
  anon = ARGV[5]
end
if lext ~= '' and luser == '' then
  -- The last link's user: the install's user, which every link step that
  -- records an outcome sets with it (earlier releases also stored it).
  luser = user
end
local same = lext == ARGV[1] and luser == user
if same and prev == '' then
  return {'same', user, lcreated, lmerged}
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  if same then
    -- Answer; the holder of the lock finishes the leftover.
    return {'same', user, lcreated, lmerged}
  end
  return {'busy'}
end
if same then
  -- A repeat whose previous user may still list the install: the caller
  -- drops it from that set under the lock, then answers as remembered.
  return {'repair', user, lcreated, lmerged, prev}
end
if user == anon and claim == '' and not (luser == user and lext ~= '') then
  redis.call('HSET', KEYS[1], 'anon_claim', ARGV[1])
  claim = ARGV[1]
end
local cand = f[10]
if f[9] ~= ARGV[1] or cand == '' then
  cand = ARGV[4]
  redis.call('HSET', KEYS[1], 'pending_ext', ARGV[1], 'pending_user', cand)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and user == ARGV[5] then
  for _, key in ipairs({KEYS[1], KEYS[3], KEYS[4]}) do -- not the lock
    redis.call('PERSIST', key)
  end
  ttl = -1
end
return {'locked', user, anon, claim, lext, luser, lcreated, lmerged, prev, cand, tostring(ttl)}
