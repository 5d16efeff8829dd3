package store

import (
	"context"
	"strconv"
	"time"
)

// Expiry of what no link and no verified credential ever touched
//
// POST /installs needs no credential, and a report- or off-mode platform
// resolves any external id it is sent, so both would let anyone grow Redis
// forever. What they make expires instead:
//
//   - CreateInstall writes the install hash and its anonymous user's hash
//     (which lists the install) with the Expiry's TTL; ResolveUnverified
//     writes the ext key and the hash of a user it makes with it (both in
//     the external id's shard), and a session admitted for such a user
//     gives the user's sessions set the user's TTL.
//   - A use renews them: InstallUser (a request with the install id),
//     ResolveUnverified (a request with the external id) and RenewUser (a
//     request on a session of the user) set the TTL anew once a tenth of
//     it has passed since the last renewal (RenewDue). The check reads the
//     TTL Redis has, so that one renewal serves every instance, and a
//     renewal costs one more round trip at most once per tenth of the TTL
//     and key; the in-process caches keep such an entry only until it is
//     due (RenewIn), so a request after that renews it.
//   - A link makes the install and its anonymous user permanent before
//     anything names them (step 1b of links.go), and makes a user made for
//     an unverified id permanent when it finds it (step 2); ResolveExternal
//     (a verified credential) makes its user permanent. A renewal never
//     gives a TTL to a key that has none (PEXPIRE ... XX), so nothing made
//     permanent ever expires again, whatever races with it.
//   - When a link moves an install away from its anonymous user, that user
//     is deleted in the same script (link_move.lua): nothing but the
//     install ever named it, and the user.merged event carries its id.
//
// An install made before expiry existed (or while it was off) that no link
// has touched (it still points to its anonymous user, which no link has
// reserved) takes the TTL at its next use.

// renewFraction: a key in use is renewed once 1/renewFraction of its TTL
// has passed since its last renewal.
const renewFraction = 10

// Expiry is a tenant's expiry of untouched installs and users.
type Expiry struct {
	// TTL is how long they live after their last renewal. 0: they never
	// expire, and one that had a TTL loses it at its next use.
	TTL time.Duration
}

// RenewDue reports whether a key that expires in left (0: never) is due
// for renewal at a use: a tenth of the TTL has passed since it was set,
// or expiry is off (it then becomes permanent).
func (e Expiry) RenewDue(left time.Duration) bool {
	switch {
	case left <= 0:
		return false
	case e.TTL <= 0:
		return true
	}
	return left <= e.TTL-e.TTL/renewFraction
}

// RenewIn is how long a key that expires in left has until it is due for
// renewal (0 or less: now).
func (e Expiry) RenewIn(left time.Duration) time.Duration {
	if e.TTL <= 0 || left <= 0 {
		return 0
	}
	return left - (e.TTL - e.TTL/renewFraction)
}

// ttlArg is a TTL as a script argument: milliseconds, "0" for none.
func ttlArg(d time.Duration) string {
	if d <= 0 {
		return "0"
	}
	return strconv.FormatInt(max(d.Milliseconds(), 1), 10)
}

// leftOf reads a PTTL reply: 0 for a key without TTL (-1), a millisecond
// for one that is gone (-2: look again soon).
func leftOf(ms int64) time.Duration {
	switch {
	case ms == -1:
		return 0
	case ms <= 0:
		return time.Millisecond
	}
	return time.Duration(ms) * time.Millisecond
}

// setInstallExpiry renews (ttl > 0) or ends (ttl 0) the expiry of an
// install and, while the install points to it, of its user if the user
// lives in the install's shard (an anonymous user always does): one
// script in the install's shard. Only keys that expire are changed, except
// for an install no link ever touched, which takes the TTL (adopt). It
// returns how long the install has left (0: never).
//
// An install of an earlier release also has a global tenant entry
// (InstallTenant); it is no longer read on this path nor renewed: it
// expires with the TTL it had, and it only ever told 403 from 404.
func (s *Store) setInstallExpiry(ctx context.Context, k *Keys, installID, userID string, ttl time.Duration, adopt bool) (time.Duration, error) {
	shard, err := ParseID(KindInstall, installID)
	if err != nil {
		return 0, ErrInstallNotFound
	}
	keys := []string{k.Install(shard, installID)}
	if su, err := ParseID(KindUser, userID); err == nil && su == shard {
		keys = append(keys, k.User(shard, userID), k.UserInstalls(shard, userID))
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	ms, err := s.runWrite(ctx, installExpiryScript, keys, userID, ttlArg(ttl), boolArg(adopt), AnonymousUserOf(installID)).Int64()
	if err != nil {
		return 0, wrap(err)
	}
	return leftOf(ms), nil
}

// setUserExpiry renews (ttl > 0) or ends (ttl 0) the expiry of the user
// made for an external id, while the external id names it: its ext key,
// its hash and its sessions set, all in the external id's shard. Only
// keys that expire are changed. It returns how long the user has left
// (0: never).
func (s *Store) setUserExpiry(ctx context.Context, k *Keys, externalID, userID string, ttl time.Duration) (time.Duration, error) {
	shard := ExternalShard(externalID)
	if su, err := ParseID(KindUser, userID); err != nil || su != shard {
		// Not made for an unverified id (those live in their external id's
		// shard): it never expired.
		return 0, nil
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	ms, err := s.runWrite(ctx, userExpiryScript,
		[]string{k.External(externalID), k.User(shard, userID), k.UserSessions(shard, userID), k.ExternalBucket(externalID)},
		userID, ttlArg(ttl), externalID, boolArg(Bucketed(externalID)),
	).Int64()
	if err != nil {
		return 0, wrap(err)
	}
	return leftOf(ms), nil
}

// ResolveUnverified returns the user of an external id that did not
// verify (report or off mode), as ResolveExternal does, except that a user
// it makes expires after e.TTL, and that it renews one that is due for
// renewal. It also returns how long the user has left (0: never). It never
// makes a user permanent (with expiry off, it makes none that expires).
func (s *Store) ResolveUnverified(ctx context.Context, k *Keys, externalID string, now time.Time, e Expiry) (userID string, created bool, left time.Duration, err error) {
	userID, created, left, err = s.resolve(ctx, k, externalID, now, e.TTL)
	if err == nil && e.RenewDue(left) {
		left, err = s.setUserExpiry(ctx, k, externalID, userID, e.TTL)
	}
	return userID, created, left, err
}

// RenewUser renews the expiry of the user of an external id (a request
// on one of its sessions used it) and returns how long it has left (0:
// never). A user that does not expire is left alone.
func (s *Store) RenewUser(ctx context.Context, k *Keys, externalID, userID string, e Expiry) (time.Duration, error) {
	return s.setUserExpiry(ctx, k, externalID, userID, e.TTL)
}
