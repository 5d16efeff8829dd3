-- Set a user's claims (written by the customer backend), in the user's slot.
-- KEYS[1] the user hash, KEYS[2] the user's claims hash (a JSON object
-- stored as jsonobj_lib.lua says), KEYS[3] the outbox stream.
-- ARGV[1] 'merge' or 'replace', ARGV[2] the limit of the claims as compact
-- JSON (bytes), ARGV[3] now (unix ms), ARGV[4] tenant, ARGV[5] user id,
-- ARGV[6..] claim pairs: the key JSON-encoded (quotes included), then the
-- value as compact JSON ('null' removes the key).
-- Returns {'ok', claims JSON, 1 if they changed else 0}, {'not_found'} for
-- an unknown user, {'expires'} for a user that expires (no link or
-- verified credential has named it yet: claims are kept for permanent
-- users only), or {'too_large', size} with nothing done. A change appends
-- user.claims_updated {user_id, claims} to the outbox.
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  return {'not_found'}
end
if ttl >= 0 then
  return {'expires'}
end
local size = obj_size_after(KEYS[2], ARGV[1], 6)
if size > tonumber(ARGV[2]) then
  return {'too_large', string.format('%d', size)}
end
local before = obj_json(KEYS[2])
obj_apply(KEYS[2], ARGV[1], 6)
local after = obj_json(KEYS[2])
if after == before then
  return {'ok', after, 0}
end
redis.call('XADD', KEYS[3], '*', 'type', 'user.claims_updated', 'tenant', ARGV[4],
  'occurred_at', ARGV[3], 'data', '{"user_id":"' .. ARGV[5] .. '","claims":' .. after .. '}')
return {'ok', after, 1}
