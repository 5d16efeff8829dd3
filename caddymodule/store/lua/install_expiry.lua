-- Renew or end the expiry of an install and of the user it points to, in
-- the install's shard.
-- KEYS[1] install hash; KEYS[2] the user's hash and KEYS[3] the user's
--   installs set, when the user lives in this shard (all in one slot)
-- ARGV[1] the user the install points to, ARGV[2] TTL (ms; '0': make them
-- permanent), ARGV[3] '1' to give the TTL to an install no link ever
-- touched (it points to its anonymous user, which no link has reserved),
-- ARGV[4] the install's anonymous user when it has no anon_user field
-- (AnonymousUserOf the install id)
-- Only keys that expire are changed (PEXPIRE XX), but for such an install;
-- the user's keys only while the install points to the user.
-- Returns the install's TTL afterwards (ms; -1 none, -2 no install).
local f = redis.call('HMGET', KEYS[1], 'user', 'anon_user', 'anon_claim')
if not f[2] then
  f[2] = ARGV[4] -- not stored: the derived anonymous user
end
if f[1] ~= ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
local opt = 'XX'
if ARGV[3] == '1' and f[2] == f[1] and not f[3] then
  opt = nil
end
for i = 1, #KEYS do
  if ARGV[2] == '0' then
    redis.call('PERSIST', KEYS[i])
  elseif opt then
    redis.call('PEXPIRE', KEYS[i], ARGV[2], opt)
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return redis.call('PTTL', KEYS[1])
