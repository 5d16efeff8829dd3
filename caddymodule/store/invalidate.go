package store

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// InvalidationChannel is the Redis pub/sub channel on which every instance
// hears that a cached mapping changed (a link moved an install, a session
// ended). Messages are "<tenant> <kind> <key>". Lua scripts publish them in
// the same atomic step as the change; PUBLISH names no key, so this is
// Cluster-safe (Cluster broadcasts classic pub/sub to every node).
const InvalidationChannel = "idl:invalidate"

// InvalidationMessage formats a message for InvalidationChannel.
func InvalidationMessage(tenant, kind, key string) string {
	return tenant + " " + kind + " " + key
}

// Publish tells every instance (this one included) that key of kind
// changed in tenant. For changes no Lua script publishes itself.
func (s *Store) Publish(ctx context.Context, tenant, kind, key string) error {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	return wrap(s.rdb.Publish(ctx, InvalidationChannel, InvalidationMessage(tenant, kind, key)).Err())
}

// Listen hears invalidation messages until ctx is done, calling message
// for each well-formed one. Whenever the subscription is (re)established
// it calls subscribed first: messages sent while it was down are lost, so
// whoever caches must flush. interrupted hears why the subscription broke
// before it is retried (at most 500ms later).
func (s *Store) Listen(ctx context.Context, subscribed func(), message func(tenant, kind, key string), interrupted func(error)) {
	ps := s.rdb.Subscribe(ctx, InvalidationChannel)
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
			interrupted(err)
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
			subscribed()
		case *redis.Message:
			tenant, rest, ok1 := strings.Cut(m.Payload, " ")
			kind, key, ok2 := strings.Cut(rest, " ")
			if ok1 && ok2 {
				message(tenant, kind, key)
			}
		}
	}
}
