package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the user of
// an external id and the logout tokens already used. All of a user's
// sessions end with EndUserSessions (revoke.go).

// ExternalUser returns the user of an external id, "" if it has none. It
// creates nothing (unlike ResolveExternal).
func (s *Store) ExternalUser(ctx context.Context, k *Keys, externalID string) (string, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	u, err := ExternalUser(ctx, s.rdb, k, externalID)
	return u, wrap(err)
}

// ClaimLogoutJTI records that the logout token of issuer with jti was used,
// until ttl passes (at least a millisecond), with one SET NX PX: fresh is
// false when it was recorded before, a replay.
func (s *Store) ClaimLogoutJTI(ctx context.Context, k *Keys, issuer, jti string, ttl time.Duration) (fresh bool, err error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	fresh, err = s.rdb.SetNX(ctx, k.LogoutJTI(issuer, jti), "1", max(ttl, time.Millisecond)).Result()
	return fresh, wrap(err)
}

// ReleaseLogoutJTI forgets a claimed jti: its logout could not be carried
// out, and the provider's retry must be accepted.
func (s *Store) ReleaseLogoutJTI(ctx context.Context, k *Keys, issuer, jti string) error {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	return wrap(s.rdb.Del(ctx, k.LogoutJTI(issuer, jti)).Err())
}

// LogoutJTI is the key recording a used logout token: the SHA-256 of its
// issuer and jti (which the provider chooses: hashed, they make a key of
// fixed length and alphabet), in the shard its first byte names.
func (k *Keys) LogoutJTI(issuer, jti string) string {
	sum := sha256.Sum256([]byte(issuer + "\n" + jti))
	return k.tags[int(sum[0])%Shards] + "bcl:jti:" + hex.EncodeToString(sum[:])
}
