package caddymodule

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/idlink/idlink/caddymodule/store"
)

// This file is the tenant's session policy, as configured; the session
// limit itself is the identity domain's (internal/identity/sessions.go),
// its atomic steps the Lua scripts of store/sessions.go. Login (POST
// /sessions), logout and the user's sessions view are in login.go.

// Session policy defaults and bounds.
const (
	defaultSessionMax  = 1
	defaultSessionIdle = 72 * time.Hour
	maxSessionMax      = 1000
	minSessionTimeout  = time.Second
	// maxAttributesBytes bounds a user's external attributes: the merged
	// object as compact JSON.
	maxAttributesBytes = 8 << 10
	// sessionIDPrefixLen is how much of a session id GET /users shows.
	sessionIDPrefixLen = 8
)

// Sessions is a tenant's session policy: how many live sessions a user may
// have, and when a session ends by itself.
type Sessions struct {
	// Max is how many live sessions one user may have at once. A login
	// beyond it ends the user's least recently active sessions (reason
	// "evicted"). Verified and unverified (report or off mode) sessions
	// are counted apart, each up to max, so that an unverified login
	// never evicts a verified session. Default: 1.
	Max int `json:"max,omitempty"`

	// Idle ends a session after this long without a request (reason
	// "idle"). Default: 72h. A negative value (Caddyfile: `idle off`)
	// disables the idle timeout.
	Idle caddy.Duration `json:"idle,omitempty"`

	// Lifetime ends a session this long after it started, however active
	// (reason "expired"); POST /sessions then answers its expires_at.
	// Default: none (0, Caddyfile: `lifetime off`).
	Lifetime caddy.Duration `json:"lifetime,omitempty"`
}

// Expiry defaults and bounds: what no link or verified login ever touched
// (an install made by POST /installs and its anonymous user, a user made
// for an external id that did not verify) lives for install_ttl after its
// last use.
const (
	defaultInstallTTL = 30 * 24 * time.Hour
	minInstallTTL     = time.Second
)

// provision fills the policy's defaults and answers it as the store's.
func (s *Sessions) provision() store.SessionPolicy {
	if s.Max == 0 {
		s.Max = defaultSessionMax
	}
	if s.Idle == 0 {
		s.Idle = caddy.Duration(defaultSessionIdle)
	}
	p := store.SessionPolicy{Max: s.Max, Channel: store.InvalidationChannel}
	if s.Idle > 0 {
		p.Idle = time.Duration(s.Idle)
	}
	if s.Lifetime > 0 {
		p.Lifetime = time.Duration(s.Lifetime)
	}
	return p
}

func (s *Sessions) validate(tenant string) error {
	if s == nil {
		return nil
	}
	if s.Max < 1 || s.Max > maxSessionMax {
		return fmt.Errorf("tenant %q: sessions max must be 1 to %d, not %d", tenant, maxSessionMax, s.Max)
	}
	if s.Idle > 0 && time.Duration(s.Idle) < minSessionTimeout {
		return fmt.Errorf("tenant %q: sessions idle must be at least %v (or off)", tenant, minSessionTimeout)
	}
	if s.Lifetime > 0 && time.Duration(s.Lifetime) < minSessionTimeout {
		return fmt.Errorf("tenant %q: sessions lifetime must be at least %v (or off)", tenant, minSessionTimeout)
	}
	return nil
}
