package caddymodule

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// This file is the expiry of what no link or verified login ever touched:
// an install made by POST /installs and its anonymous user, and a user
// made for an external id that did not verify (report or off mode). They
// live for the tenant's install_ttl after their last renewal; a request
// that uses one renews it once a tenth of install_ttl has passed since the
// last renewal, so that the hot path stays free of Redis round trips; a
// link, or a verified credential naming the user, makes it permanent. The
// scripts are in store/expiry.go.

// Expiry defaults and bounds.
const (
	defaultInstallTTL = 30 * 24 * time.Hour
	minInstallTTL     = time.Second
)

// expiryRuntime is a tenant's expiry state built at provision time.
type expiryRuntime struct {
	policy store.Expiry
	// unverified maps an external id whose user expires to that user, for
	// unverified requests only: each entry lives until its user is due for
	// renewal at the latest, so that it never outlives the user.
	unverified *cache.Loader[string, string]
}

// provisionExpiry fills install_ttl's default and builds the cache of
// expiring users. It runs in the tenant's provision.
func (t *Tenant) provisionExpiry() {
	if t.InstallTTL == 0 {
		t.InstallTTL = caddy.Duration(defaultInstallTTL)
	}
	t.expiry.policy = store.Expiry{}
	if t.InstallTTL > 0 {
		t.expiry.policy.TTL = time.Duration(t.InstallTTL)
	}
	t.expiry.unverified = cache.NewLoader[string, string](t.CacheSize, time.Duration(t.CacheTTL), t.now, func(id string) string { return id })
}

func (t *Tenant) validateExpiry() error {
	if t.InstallTTL > 0 && time.Duration(t.InstallTTL) < minInstallTTL {
		return fmt.Errorf("tenant %q: install_ttl must be at least %v (or off)", t.name, minInstallTTL)
	}
	return nil
}

// cacheFor is how long an in-process cache may keep what a lookup found
// about a key that expires in left (0: never): until the key is due for
// renewal, and no longer than the cache's own ttl (the cache caps it).
func (r *expiryRuntime) cacheFor(left time.Duration) time.Duration {
	if left <= 0 {
		return 0 // the cache's ttl
	}
	d := r.policy.RenewIn(left)
	if d <= 0 {
		return time.Millisecond
	}
	return d
}

// resolveUnverified returns the platform user id of an external id that
// did not verify (report or off mode): from the in-process caches when
// warm, else from Redis, creating a user that expires on first sight and
// renewing one that is due. It never makes a user permanent: only a
// verified credential (resolveExternal) or a link does.
func (t *Tenant) resolveUnverified(ctx context.Context, externalID string) (string, error) {
	if u, ok := t.users.Get(externalID); ok {
		return u, nil // permanent
	}
	if u, ok := t.expiry.unverified.Get(externalID); ok {
		return u, nil // before the loader's closure is made: no allocation when warm
	}
	return t.expiry.unverified.Load(ctx, externalID, func(ctx context.Context) (string, time.Duration, error) {
		u, created, left, err := t.app.store.ResolveUnverified(ctx, t.keys, externalID, t.now(), t.expiry.policy)
		if err != nil {
			return "", 0, err
		}
		if created {
			t.logger.Debug("user created for an unverified external id", zap.String("user_id", u))
		}
		if left <= 0 {
			t.users.Add(externalID, u) // permanent
			return u, -1, nil
		}
		return u, t.expiry.cacheFor(left), nil
	})
}

// renewSessionUser renews the user of a live session when it is due (a
// request on the session is a use of its user), and returns how long the
// session may stay in the in-process cache (0: the cache's ttl). A failed
// renewal refuses nothing: the user is still there, and the next request
// past the cache entry tries again.
func (t *Tenant) renewSessionUser(ctx context.Context, st store.SessionState) time.Duration {
	left := st.UserTTL
	if left <= 0 || st.ExternalID == "" {
		return 0
	}
	if t.expiry.policy.RenewDue(left) {
		renewed, err := t.app.store.RenewUser(context.WithoutCancel(ctx), t.keys, st.ExternalID, st.UserID, t.expiry.policy)
		if err != nil {
			t.logStoreError(err)
			return time.Millisecond
		}
		left = renewed
	}
	return t.expiry.cacheFor(left)
}
