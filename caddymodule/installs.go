package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// Error codes of installs.
const (
	codeUnknownInstall     = "unknown_install"
	codeInstallNotFound    = "install_not_found"
	codeInstallWrongTenant = "install_wrong_tenant"
)

// invalidateInstall is the invalidation kind of an install's user: a link
// that moves an install publishes "<tenant> install <install id>".
const invalidateInstall = "install"

// installCache holds install id → user id in process. A link can move an
// install to another user, so entries are dropped on every instance when
// the link script publishes, and all of them when the subscription
// restarts; a lookup that started before a drop does not store what it
// read, which may predate the move (cache.Loader). An install that expires
// is kept only until it is due for renewal (expiry.go), so that a request
// after that renews it.
type installCache struct {
	users *cache.Loader[string, string]
	// fetch is the store's lookup: the user and how long the install has
	// left (0: it never expires), renewed if due. Tests wrap it.
	fetch func(ctx context.Context, installID string) (string, time.Duration, error)
}

func (t *Tenant) provisionInstalls() {
	t.installs.users = cache.NewLoader[string, string](t.CacheSize, time.Duration(t.CacheTTL), t.now,
		func(id string) string { return id })
	t.installs.fetch = func(ctx context.Context, installID string) (string, time.Duration, error) {
		return t.app.store.InstallUser(ctx, t.keys, installID, t.expiry.policy)
	}
	t.onInvalidate(invalidateInstall, t.dropInstall, t.installs.users.Flush)
}

// dropInstall forgets the cached user of an install.
func (t *Tenant) dropInstall(installID string) {
	t.installs.users.Forget(installID)
}

// installUser returns the user an install points to: from the cache when
// warm, else from Redis in one round trip (concurrent cold lookups of one
// install share it), and a second one when the install is due for renewal.
// store.ErrInstallNotFound for malformed or unknown ids.
func (t *Tenant) installUser(ctx context.Context, installID string) (string, error) {
	if _, err := store.ParseID(store.KindInstall, installID); err != nil {
		return "", store.ErrInstallNotFound
	}
	if u, ok := t.installs.users.Get(installID); ok {
		return u, nil // before the loader's closure is made: no allocation when warm
	}
	return t.installs.users.Load(ctx, installID, func(ctx context.Context) (string, time.Duration, error) {
		u, left, err := t.installs.fetch(ctx, installID)
		return u, t.expiry.cacheFor(left), err
	})
}

// checkInstall identifies a request by X-Install-Id: the install's user,
// unverified (an install id is a device's bearer id, not a proof of who
// uses it). With a stronger credential it only has to agree with it.
func (t *Tenant) checkInstall(ctx context.Context, c *credentials) (*identity, error) {
	if c.installID == "" {
		return nil, nil
	}
	u, err := t.installUser(ctx, c.installID)
	if errors.Is(err, store.ErrInstallNotFound) {
		t.debug("unknown install id refused")
		return nil, newError(http.StatusUnauthorized, codeUnknownInstall, "the install id is not known")
	}
	if err != nil {
		return nil, err
	}
	return &identity{source: SourceInstall, userID: u, installID: c.installID}, nil
}

// createInstall is POST /installs: the SDK's first call on a device. It
// issues an install id with a new anonymous user, both expiring after the
// tenant's install_ttl unless used or linked, and answers 201
// {install_id, user_id}. The body, if any, is ignored.
func (a *API) createInstall(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	installID, userID, err := t.app.store.CreateInstall(context.WithoutCancel(r.Context()), t.keys, t.now(), t.expiry.policy)
	if err != nil {
		a.fail(w, err)
		return
	}
	t.debug("install created", zap.String("user_id", userID))
	writeJSON(w, http.StatusCreated, struct {
		InstallID string `json:"install_id"`
		UserID    string `json:"user_id"`
	}{installID, userID})
}
