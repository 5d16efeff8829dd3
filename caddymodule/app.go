// Package caddymodule is idlink's Caddy module: the "idlink" app that holds
// the store and the tenants, the "idlink" HTTP handler that verifies what an
// SDK client sends and injects the resolved identity for the upstream, and
// their Caddyfile syntax.
package caddymodule

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/store"

	"github.com/idlink/idlink/caddymodule/internal/events"
)

func init() {
	caddy.RegisterModule(App{})
}

// Store-outage policies.
const (
	FailClosed = "fail_closed"
	FailOpen   = "fail_open"
)

// App is the "idlink" Caddy app: the Redis store shared by every idlink
// handler, and the tenants they serve.
type App struct {
	// Redis is the URL of the Redis deployment in go-redis's forms:
	// redis://[user:pass@]host:port[/db] (rediss:// for TLS) for one node,
	// redis://h1:p1?addr=h2:p2&addr=h3:p3 for a Redis Cluster, and
	// redis://s1:p1?addr=s2:p2&master_name=NAME for a Sentinel-managed
	// primary. Placeholders such as {env.REDIS_URL} are replaced at
	// provision time. Default: empty, which starts an embedded in-process
	// store (not durable, not shared between instances).
	Redis string `json:"redis,omitempty"`

	// RedisTimeout bounds each Redis call. Default: 250ms.
	RedisTimeout caddy.Duration `json:"redis_timeout,omitempty"`

	// OnStoreError is what a request gets when the store fails or times
	// out: "fail_closed" (default) answers 503 store_unavailable with
	// Retry-After; "fail_open" passes the request on as anonymous (unless
	// the tenant denies anonymous requests).
	OnStoreError string `json:"on_store_error,omitempty"`

	// Durability makes every write that changes state wait until that
	// many replicas have it (Redis WAIT), within a timeout; see
	// Durability. Default: off (a failover can lose the last writes).
	Durability *Durability `json:"durability,omitempty"`

	// Tenants by name.
	Tenants map[string]*Tenant `json:"tenants,omitempty"`

	store   *store.Store
	poolKey string
	logger  *zap.Logger
	now     func() time.Time
	stop    context.CancelFunc
	done    chan struct{}
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "idlink",
		New: func() caddy.Module { return new(App) },
	}
}

// stores holds the store clients, keyed by their full connection identity,
// so that they survive config reloads and are closed when the last config
// that uses one is cleaned up.
var stores = caddy.NewUsagePool()

type pooledStore struct{ *store.Store }

func (p pooledStore) Destruct() error { return p.Close() }

// Provision sets defaults, connects (lazily) to the store and provisions
// the tenants.
func (a *App) Provision(ctx caddy.Context) error {
	if a.logger == nil { // tests may inject one
		a.logger = ctx.Logger()
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.OnStoreError == "" {
		a.OnStoreError = FailClosed
	}
	if a.RedisTimeout <= 0 {
		a.RedisTimeout = caddy.Duration(store.DefaultTimeout)
	}
	timeout := time.Duration(a.RedisTimeout)
	if a.Durability != nil {
		a.Durability.provision(timeout)
		if err := a.Durability.validate(timeout); err != nil {
			return err
		}
	}

	url, err := caddy.NewReplacer().ReplaceOrErr(a.Redis, true, true)
	if a.Redis != "" && err != nil {
		return fmt.Errorf("redis: %v", err)
	}
	if url == "" {
		a.poolKey = "embedded"
	} else {
		a.poolKey = url + "|" + strconv.FormatInt(int64(timeout), 10) + a.Durability.poolKey()
	}
	val, loaded, err := stores.LoadOrNew(a.poolKey, func() (caddy.Destructor, error) {
		var s *store.Store
		var err error
		if url == "" {
			s, err = store.OpenEmbedded(timeout)
		} else {
			s, err = store.Open(url, timeout)
		}
		if err == nil {
			if err = a.applyDurability(s); err != nil {
				s.Close()
			}
		}
		return pooledStore{s}, err
	})
	if err != nil {
		return err
	}
	a.store = val.(pooledStore).Store
	if !loaded {
		if a.store.Kind() == "embedded" {
			a.logger.Warn("no redis configured: using the embedded in-process store; "+
				"its state is lost when Caddy stops and is not shared with other instances",
				zap.String("addr", a.store.EmbeddedAddr())) // for redis-cli, on loopback
		} else {
			a.logger.Info("identity store", zap.String("kind", a.store.Kind()), zap.Duration("timeout", timeout))
		}
	}

	for _, name := range slices.Sorted(maps.Keys(a.Tenants)) {
		t := a.Tenants[name]
		if t == nil {
			t = new(Tenant)
			a.Tenants[name] = t
		}
		if err := t.provision(ctx, a, name); err != nil {
			return fmt.Errorf("tenant %q: %w", name, err)
		}
	}
	// Last: the admin endpoint may already serve this config's registry,
	// and the gauges read the provisioned tenants.
	if err := a.registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	return nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if err := oneOf("on_store_error", a.OnStoreError, FailClosed, FailOpen); err != nil {
		return err
	}
	if a.Durability != nil {
		if err := a.Durability.validate(time.Duration(a.RedisTimeout)); err != nil {
			return err
		}
	}
	for _, t := range a.Tenants {
		if err := t.validate(); err != nil {
			return err
		}
	}
	return nil
}

// Start starts the app's background work: the invalidation listener, the
// tenants' session-activity writes and JWKS refresh, and the events work
// of every tenant (outbox upkeep, webhook delivery). Everything started here stops in Stop, so
// nothing outlives a reload.
func (a *App) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	a.stop, a.done = cancel, make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { a.listen(ctx) })
	for _, t := range a.Tenants {
		t.start(ctx, &wg)
	}
	outboxes := make([]*events.Outbox, 0, len(a.Tenants))
	for _, t := range a.Tenants {
		outboxes = append(outboxes, t.outbox)
	}
	events.Run(ctx, &wg, outboxes)
	go func() {
		defer close(a.done)
		wg.Wait()
	}()
	return nil
}

// Stop stops the background work and waits for it.
func (a *App) Stop() error {
	if a.stop != nil {
		a.stop()
		<-a.done
	}
	return nil
}

// Cleanup releases the store (closed when no config uses it any more).
func (a *App) Cleanup() error {
	if a.poolKey != "" {
		_, err := stores.Delete(a.poolKey)
		return err
	}
	return nil
}

// tenant returns the named tenant.
func (a *App) tenant(name string) (*Tenant, error) {
	t := a.Tenants[name]
	if t == nil {
		return nil, fmt.Errorf("tenant %q is not defined in the idlink app (global option idlink { tenant %s { ... } })", name, name)
	}
	return t, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// listen runs until ctx is done: it hears invalidation messages and
// dispatches them to the tenants. Whenever the subscription is
// (re)established, every tenant flushes its invalidatable caches, since
// messages sent while it was down are lost.
func (a *App) listen(ctx context.Context) {
	a.store.Listen(ctx,
		func() {
			for _, t := range a.Tenants {
				t.id.Flush()
			}
		},
		func(tenant, kind, key string) {
			if t := a.Tenants[tenant]; t != nil {
				t.id.Invalidate(kind, key)
			}
		},
		func(err error) { a.logger.Debug("invalidation subscription interrupted", zap.Error(err)) })
}
