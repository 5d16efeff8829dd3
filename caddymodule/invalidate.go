package caddymodule

import (
	"context"
	"sync"

	"go.uber.org/zap"
)

// Invalidation: every instance drops a cached mapping when the store
// says it changed (store.InvalidationChannel).

// invalidators is what one tenant drops when told: a function per kind,
// and the flushes to run when messages may have been missed.
type invalidators struct {
	mu     sync.RWMutex
	byKind map[string]func(key string)
	flush  []func()
}

// onInvalidate registers what to drop when a message of kind arrives, and
// flush, run when the subscription (re)starts and messages may have been
// missed while it was down.
func (t *Tenant) onInvalidate(kind string, drop func(key string), flush func()) {
	t.inval.mu.Lock()
	defer t.inval.mu.Unlock()
	if t.inval.byKind == nil {
		t.inval.byKind = map[string]func(string){}
	}
	t.inval.byKind[kind] = drop
	if flush != nil {
		t.inval.flush = append(t.inval.flush, flush)
	}
}

func (t *Tenant) invalidate(kind, key string) {
	t.inval.mu.RLock()
	drop := t.inval.byKind[kind]
	t.inval.mu.RUnlock()
	if drop != nil {
		drop(key)
	}
}

func (t *Tenant) flushInvalidatable() {
	t.inval.mu.RLock()
	defer t.inval.mu.RUnlock()
	for _, f := range t.inval.flush {
		f()
	}
}

// publish tells every instance (this one included) that key of kind
// changed. Used where the change was not made by a Lua script that
// publishes itself.
func (t *Tenant) publish(ctx context.Context, kind, key string) error {
	return t.app.store.Publish(ctx, t.name, kind, key)
}

// listen runs until ctx is done: it hears invalidation messages and
// dispatches them to the tenants. Whenever the subscription is
// (re)established, every tenant flushes its invalidatable caches, since
// messages sent while it was down are lost.
func (a *App) listen(ctx context.Context) {
	a.store.Listen(ctx,
		func() {
			for _, t := range a.Tenants {
				t.flushInvalidatable()
			}
		},
		func(tenant, kind, key string) {
			if t := a.Tenants[tenant]; t != nil {
				t.invalidate(kind, key)
			}
		},
		func(err error) { a.logger.Debug("invalidation subscription interrupted", zap.Error(err)) })
}
