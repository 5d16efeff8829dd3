package caddymodule

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// InvalidationChannel is the Redis pub/sub channel on which every instance
// hears that a cached mapping changed (a link moved an install, a session
// ended). Messages are "<tenant> <kind> <key>". Lua scripts publish them in
// the same atomic step as the change; PUBLISH names no key, so this is
// Cluster-safe (Cluster broadcasts classic pub/sub to every node).
const InvalidationChannel = "idl:invalidate"

// invalidationMessage formats a message for InvalidationChannel.
func invalidationMessage(tenant, kind, key string) string {
	return tenant + " " + kind + " " + key
}

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
	ctx, cancel := context.WithTimeout(ctx, t.app.store.Timeout())
	defer cancel()
	return t.app.store.Client().Publish(ctx, InvalidationChannel, invalidationMessage(t.name, kind, key)).Err()
}

// listen runs until ctx is done: it hears invalidation messages and
// dispatches them to the tenants. Whenever the subscription is
// (re)established, every tenant flushes its invalidatable caches, since
// messages sent while it was down are lost.
func (a *App) listen(ctx context.Context) {
	ps := a.store.Client().Subscribe(ctx, InvalidationChannel)
	// Receive blocks on the connection; closing it is what ends it.
	stopped := context.AfterFunc(ctx, func() { ps.Close() })
	defer stopped()
	defer ps.Close()
	backoff := 50 * time.Millisecond
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.logger.Debug("invalidation subscription interrupted", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			// At most 500ms apart: messages are lost while unsubscribed,
			// so coming back soon after a failover bounds how long caches
			// can miss an invalidation (measured: 2.7s after the cluster
			// healed with a 2s cap).
			backoff = min(2*backoff, 500*time.Millisecond)
			continue
		}
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			for _, t := range a.Tenants {
				t.flushInvalidatable()
			}
		case *redis.Message:
			tenant, rest, ok1 := strings.Cut(m.Payload, " ")
			kind, key, ok2 := strings.Cut(rest, " ")
			if t := a.Tenants[tenant]; ok1 && ok2 && t != nil {
				t.invalidate(kind, key)
			}
		}
	}
}
