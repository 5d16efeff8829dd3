package identity

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// installs holds install id → user id in process, and links installs.
//
// A link can move an install to another user, so entries are dropped on
// every instance when the link script publishes, and all of them when the
// subscription restarts; a lookup that started before a drop does not
// store what it read, which may predate the move (cache.Loader). An
// install that expires (made by POST /installs and never linked) is kept
// only until it is due for renewal, so that a request after that renews it.
type installs struct {
	d     *Domain
	users *cache.Loader[string, string]
}

func (in *installs) init(d *Domain) {
	in.d = d
	in.users = cache.NewLoader[string, string](d.cfg.CacheSize, d.cfg.CacheTTL, d.cfg.Now, keyOf)
}

// drop forgets the cached user of an install.
func (in *installs) drop(installID string) { in.users.Forget(installID) }

func (in *installs) flush() { in.users.Flush() }

// user returns the user an install points to: from the cache when warm,
// else from Redis in one round trip (concurrent cold lookups of one install
// share it), and a second one when the install is due for renewal.
// store.ErrInstallNotFound for malformed or unknown ids.
func (in *installs) user(ctx context.Context, installID string) (string, error) {
	if _, err := store.ParseID(store.KindInstall, installID); err != nil {
		return "", store.ErrInstallNotFound
	}
	if u, ok := in.users.Get(installID); ok {
		return u, nil // before the loader's closure is made: no allocation when warm
	}
	d := in.d
	return in.users.Load(ctx, installID, func(ctx context.Context) (string, time.Duration, error) {
		u, left, err := d.cfg.Store.InstallUser(ctx, d.keys, installID, d.users.expiry)
		return u, d.users.cacheFor(left), err
	})
}

// link links an install to an external id. The call is detached from the
// client's cancellation (each Redis call still has its deadline), so a
// client that hangs up does not leave a link half done more often than a
// crash would.
func (in *installs) link(ctx context.Context, installID, externalID string) (store.LinkResult, error) {
	d := in.d
	res, err := d.cfg.Store.Link(context.WithoutCancel(ctx), d.keys, store.LinkRequest{
		InstallID:  installID,
		ExternalID: externalID,
		Now:        d.cfg.Now(),
		Channel:    store.InvalidationChannel,
		Message:    store.InvalidationMessage(d.cfg.Tenant, InvalidateInstall, installID),
	}, store.LinkOptions{})
	d.observeLink(res, err)
	if res.Moved {
		// Every instance drops it when the script's message arrives; this
		// one need not wait for the round trip.
		in.drop(installID)
	}
	if err == nil && !res.Repeat {
		d.debug("install linked", zap.String("user_id", res.UserID), zap.Bool("created", res.Created),
			zap.Bool("merged", res.MergedFrom != ""))
	}
	return res, err
}
