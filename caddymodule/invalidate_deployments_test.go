package caddymodule

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// busProbe listens on one instance's invalidation bus for messages of
// kind "bus-probe", and counts the flushes that run whenever the
// subscription is (re)established.
type busProbe struct {
	keys    chan string
	flushes atomic.Int64
}

func listenBus(t *Tenant) *busProbe {
	p := &busProbe{keys: make(chan string, 1000)}
	t.id.OnInvalidate("bus-probe", func(key string) {
		select {
		case p.keys <- key:
		default:
		}
	}, func() { p.flushes.Add(1) })
	return p
}

// busInstances returns two instances on url with separate store clients
// (their timeouts differ, so the pool does not share one), and a probe on
// the second.
func busInstances(t *testing.T, url string) (from, to *Tenant, probe *busProbe) {
	a := newTestApp(t, url, nil)
	b := newTestApp(t, url, func(a *App) { a.RedisTimeout = caddy.Duration(faultTimeout + time.Millisecond) })
	if a.store == b.store {
		t.Fatal("the two instances share a store client")
	}
	from, to = a.Tenants["acme"], b.Tenants["acme"]
	return from, to, listenBus(to)
}

// awaitBus publishes from one instance until the other hears it (a
// message published before the other is subscribed is lost by design:
// the flush on subscription covers it), and returns how long it took.
func awaitBus(t *testing.T, from *Tenant, probe *busProbe, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for i := 0; ; i++ {
		key := "k-" + strconv.Itoa(i)
		_ = from.app.store.Publish(context.Background(), from.name, "bus-probe", key)
		select {
		case got := <-probe.keys:
			for got != key { // earlier keys that arrived late
				select {
				case got = <-probe.keys:
				case <-time.After(within):
					t.Fatalf("the bus delivered %q but not %q", got, key)
				}
			}
			return time.Since(start)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(start) > within {
			t.Fatalf("no invalidation message crossed from one instance to the other within %v", within)
		}
	}
}

// TestInvalidationAcrossInstances: a message one instance publishes
// reaches another instance with its own client, on every deployment
// (classic pub/sub is broadcast to every node of a Cluster).
func TestInvalidationAcrossInstances(t *testing.T) {
	forEachStore(t, func(t *testing.T, url string) {
		if url == "" {
			t.Skip("the embedded store is one instance's")
		}
		from, _, probe := busInstances(t, url)
		took := awaitBus(t, from, probe, 5*time.Second)
		// The flush on (re)subscription is asserted by the failover tests,
		// where the probe exists before the subscription is re-established;
		// here the app subscribed before the probe registered, so whether
		// the first flush is counted is a race.
		t.Logf("first message across after %v", took.Round(time.Millisecond))
	})
}
