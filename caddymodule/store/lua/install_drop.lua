-- Drop an install from the user it left (step "dropped" of a link), in
-- that user's slot: its field in the user hash and, for data of the old
-- schema, its member of the user's installs set. Idempotent.
-- KEYS[1] the user hash, KEYS[2] the user's installs set (old schema).
-- ARGV[1] the install's field (i:<install id>), ARGV[2] the install id.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
