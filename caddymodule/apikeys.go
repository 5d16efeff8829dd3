package caddymodule

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// API key scopes.
const (
	ScopeUserLink    = "user.link"
	ScopeUserRead    = "user.read"
	ScopeUserWrite   = "user.write"
	ScopeEventsAdmin = "events.admin"
	// ScopeSessionAdmin lists and ends any user's sessions
	// (/users/{user_id}/sessions).
	ScopeSessionAdmin = "session.admin"
)

// knownScopes are the scopes an api_key may name.
var knownScopes = map[string]bool{
	ScopeUserLink: true, ScopeUserRead: true, ScopeUserWrite: true, ScopeEventsAdmin: true, ScopeSessionAdmin: true,
}

// scopeList names the known scopes, sorted, for messages.
func scopeList() string {
	names := make([]string, 0, len(knownScopes))
	for s := range knownScopes {
		names = append(names, s)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// maxAPIKeyLen bounds a presented key before it is hashed.
const maxAPIKeyLen = 512

// hdrAPIKey is the header that may carry a server API key.
const hdrAPIKey = "X-Api-Key"

// APIKey is a server-to-server key of a tenant, stored as the SHA-256 of
// the key so that the config never holds the key itself.
type APIKey struct {
	// SHA256 is the hex SHA-256 digest of the key (64 digits), or a
	// placeholder such as {env.API_KEY_SHA256} replaced at provision time.
	// A placeholder that is empty disables the key (with a warning). `caddy idlink api-key` makes a key and
	// prints its digest.
	SHA256 string `json:"sha256"`

	// Scopes the key grants, e.g. "user.link", "user.read".
	Scopes []string `json:"scopes"`

	digest   [sha256.Size]byte
	disabled bool // the digest's placeholder was empty
}

func (k *APIKey) provision() error {
	digest, err := caddy.NewReplacer().ReplaceOrErr(k.SHA256, false, true)
	if err != nil {
		return fmt.Errorf("api_key %s: %v", redactDigest(k.SHA256), err)
	}
	k.disabled = strings.TrimSpace(digest) == ""
	if k.disabled {
		// An unset {env.*}: the key matches nothing (the API answers 401
		// invalid_api_key) and provisioning logs a warning.
		return k.checkScopes()
	}
	b, err := hex.DecodeString(strings.ToLower(strings.TrimSpace(digest)))
	if err != nil || len(b) != sha256.Size {
		return fmt.Errorf("api_key: %q is not the 64-digit hex SHA-256 of a key", redactDigest(k.SHA256))
	}
	copy(k.digest[:], b)
	return k.checkScopes()
}

func (k *APIKey) checkScopes() error {
	if len(k.Scopes) == 0 {
		return fmt.Errorf("api_key %s: at least one scope is required", redactDigest(k.SHA256))
	}
	for _, s := range k.Scopes {
		if !knownScopes[s] {
			return fmt.Errorf("api_key %s: unknown scope %q", redactDigest(k.SHA256), s)
		}
	}
	return nil
}

// redactDigest shows enough of a digest to tell keys apart in errors.
func redactDigest(d string) string {
	if len(d) > 8 {
		return d[:8] + "…"
	}
	return d
}

// presentedAPIKey reads the key from Authorization: Bearer or X-Api-Key.
func presentedAPIKey(r *http.Request) string {
	if v := r.Header.Get(hdrAPIKey); v != "" {
		return v
	}
	auth := r.Header.Get("Authorization")
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		return strings.TrimSpace(auth[7:])
	}
	return ""
}

// requireScope authenticates the API key of a request and checks that it
// grants scope. Every configured digest is compared in constant time; a
// user token or any other string is simply not a key (401).
func (t *Tenant) requireScope(r *http.Request, scope string) *apiError {
	key := presentedAPIKey(r)
	if key == "" || len(key) > maxAPIKeyLen {
		return newError(http.StatusUnauthorized, "invalid_api_key",
			"send a server API key as Authorization: Bearer <key> or X-Api-Key")
	}
	sum := sha256.Sum256([]byte(key))
	var match *APIKey
	for i := range t.APIKeys {
		if subtle.ConstantTimeCompare(sum[:], t.APIKeys[i].digest[:]) == 1 && !t.APIKeys[i].disabled {
			match = &t.APIKeys[i]
		}
	}
	if match == nil {
		t.logger.Debug("api key refused")
		return newError(http.StatusUnauthorized, "invalid_api_key", "the API key is not valid for this tenant")
	}
	for _, s := range match.Scopes {
		if s == scope {
			return nil
		}
	}
	t.logger.Debug("api key lacks scope", zap.String("scope", scope), zap.String("key", redactDigest(match.SHA256)))
	return newError(http.StatusForbidden, "insufficient_scope", "the API key does not grant "+scope)
}
