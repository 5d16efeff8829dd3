package identity

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// users resolves external ids to platform users, and keeps alive what no
// link or verified login ever touched: a user made for an external id
// that did not verify (report or off mode) lives for the tenant's
// install_ttl after its last renewal, like an install and its anonymous
// user (installs.go). A request that uses one renews it once a tenth of
// install_ttl has passed since the last renewal, so that the hot path
// stays free of Redis round trips; a link, or a verified credential naming
// the user, makes it permanent. The scripts are in store/expiry.go.
type users struct {
	d      *Domain
	expiry store.Expiry
	// verified maps a verified external id to its user: the mapping never
	// changes once made, so the ttl only bounds memory turnover.
	verified *cache.Loader[string, string]
	// unverified maps an external id whose user expires to that user, for
	// unverified requests only: each entry lives until its user is due for
	// renewal at the latest, so that it never outlives the user.
	unverified *cache.Loader[string, string]
}

func (u *users) init(d *Domain) {
	u.d, u.expiry = d, d.cfg.Expiry
	u.verified = cache.NewLoader[string, string](d.cfg.CacheSize, d.cfg.CacheTTL, d.cfg.Now, keyOf)
	u.unverified = cache.NewLoader[string, string](d.cfg.CacheSize, d.cfg.CacheTTL, d.cfg.Now, keyOf)
}

func keyOf(id string) string { return id }

// resolve returns the platform user id of a verified external id: from the
// in-process cache when warm (no Redis round trip), else from Redis in one
// round trip, creating the user on first sight (one made earlier for the
// id unverified becomes permanent: a second round trip, once). Concurrent
// cold lookups of one external id in this process share one call.
func (u *users) resolve(ctx context.Context, externalID string) (string, error) {
	if id, ok := u.verified.Get(externalID); ok {
		return id, nil // before the loader's closure is made: no allocation when warm
	}
	d := u.d
	return u.verified.Load(ctx, externalID, func(ctx context.Context) (string, time.Duration, error) {
		id, created, err := d.cfg.Store.ResolveExternal(ctx, d.keys, externalID, d.cfg.Now())
		if err == nil && created {
			d.logger.Debug("user created", zap.String("user_id", id))
		}
		return id, 0, err
	})
}

// resolveUnverified returns the platform user id of an external id that
// did not verify (report or off mode): from the in-process caches when
// warm, else from Redis, creating a user that expires on first sight and
// renewing one that is due. It never makes a user permanent: only a
// verified credential (resolve) or a link does.
func (u *users) resolveUnverified(ctx context.Context, externalID string) (string, error) {
	if id, ok := u.verified.Get(externalID); ok {
		return id, nil // permanent
	}
	if id, ok := u.unverified.Get(externalID); ok {
		return id, nil // before the loader's closure is made: no allocation when warm
	}
	d := u.d
	return u.unverified.Load(ctx, externalID, func(ctx context.Context) (string, time.Duration, error) {
		id, created, left, err := d.cfg.Store.ResolveUnverified(ctx, d.keys, externalID, d.cfg.Now(), u.expiry)
		if err != nil {
			return "", 0, err
		}
		if created {
			d.logger.Debug("user created for an unverified external id", zap.String("user_id", id))
		}
		if left <= 0 {
			u.verified.Add(externalID, id) // permanent
			return id, -1, nil
		}
		return id, u.cacheFor(left), nil
	})
}

// renewSessionUser renews the user of a live session when it is due (a
// request on the session is a use of its user), and returns how long the
// session may stay in the in-process cache (0: the cache's ttl). A failed
// renewal refuses nothing: the user is still there, and the next request
// past the cache entry tries again.
func (u *users) renewSessionUser(ctx context.Context, st store.SessionState) time.Duration {
	left := st.UserTTL
	if left <= 0 || st.ExternalID == "" {
		return 0
	}
	if u.expiry.RenewDue(left) {
		renewed, err := u.d.cfg.Store.RenewUser(context.WithoutCancel(ctx), u.d.keys, st.ExternalID, st.UserID, u.expiry)
		if err != nil {
			u.d.LogStoreError(err)
			return time.Millisecond
		}
		left = renewed
	}
	return u.cacheFor(left)
}

// cacheFor is how long an in-process cache may keep what a lookup found
// about a key that expires in left (0: never): until the key is due for
// renewal, and no longer than the cache's own ttl (the cache caps it).
func (u *users) cacheFor(left time.Duration) time.Duration {
	if left <= 0 {
		return 0 // the cache's ttl
	}
	d := u.expiry.RenewIn(left)
	if d <= 0 {
		return time.Millisecond
	}
	return d
}
