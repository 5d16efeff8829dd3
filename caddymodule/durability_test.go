package caddymodule

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// TestDurability: the app's durability option reaches the store. First
// sights are answered on every deployment; where every master has a
// replica they are acknowledged, on a lone server each one is a shortfall
// (answered all the same), and the embedded store ignores the option.
func TestDurability(t *testing.T) {
	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) {
		// A realistic deadline: replicas acknowledge in milliseconds, but
		// a loaded CI machine (with -race) can take longer than the 50ms
		// the 200ms test default would leave for the WAIT.
		const redisTimeout = time.Second
		app := newTestApp(t, d.URL, func(a *App) {
			a.RedisTimeout = caddy.Duration(redisTimeout)
			a.Durability = &Durability{Replicas: 1}
		})
		wantTimeout := (redisTimeout - store.WaitTick) / 2
		if got := time.Duration(app.Durability.Timeout); got != wantTimeout {
			t.Fatalf("default timeout %v, want %v", got, wantTimeout)
		}
		h := newTestHandler(t, app, nil)
		// Every replica attached and caught up before the writes: a replica
		// still catching up (after an earlier test's traffic) acknowledges
		// late, which is a real shortfall but not the one this test is about.
		if d.Name == testenv.DeployCluster || d.Name == testenv.DeploySentinel {
			if err := d.ForEachMaster(context.Background(), replicasInSync); err != nil {
				t.Fatal(err)
			}
		}
		want := store.Durability{Replicas: 1, Timeout: wantTimeout}
		if d.Name == testenv.DeployEmbedded {
			want = store.Durability{}
		}
		if got := app.store.Durability(); got != want {
			t.Fatalf("store durability %+v, want %+v", got, want)
		}
		for _, ext := range []string{"durable-a", "durable-b"} {
			w, next, _ := serve(h, signedRequest(ext, "ios", testSecret))
			if w.Code != 200 || next.header.Get(hdrPlatformUserID) == "" {
				t.Fatalf("first sight with durability: %d %s", w.Code, w.Body)
			}
			if d.Client != nil {
				if u, _ := store.ExternalUser(context.Background(), d.Client, app.Tenants["acme"].id.Keys(), ext); u != next.header.Get(hdrPlatformUserID) {
					t.Fatalf("Redis holds %q for %s", u, ext)
				}
			}
		}
		wantShortfalls := int64(0)
		if d.Name == testenv.DeployStandalone {
			wantShortfalls = 2
		}
		if got := app.store.Shortfalls(); got != wantShortfalls {
			t.Fatalf("%d shortfalls, want %d", got, wantShortfalls)
		}
	})
}

func TestDurabilityValidation(t *testing.T) {
	cases := []struct {
		d       Durability
		wantErr string
	}{
		{Durability{Replicas: 0}, "replicas must be at least 1"},
		{Durability{Replicas: 1, Timeout: caddy.Duration(faultTimeout)}, "timer tick must be shorter than redis_timeout"},
		{Durability{Replicas: 1, Timeout: caddy.Duration(faultTimeout - store.WaitTick)}, "timer tick must be shorter than redis_timeout"},
		{Durability{Replicas: 1, Timeout: caddy.Duration(time.Second)}, "timer tick must be shorter than redis_timeout"},
	}
	for _, c := range cases {
		app := &App{
			Redis:        "redis://127.0.0.1:1/0",
			RedisTimeout: caddy.Duration(faultTimeout),
			Durability:   &c.d,
			Tenants:      map[string]*Tenant{},
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := app.Provision(ctx)
		if err == nil {
			err = app.Validate()
		}
		_ = app.Cleanup()
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%+v: %v, want %q", c.d, err, c.wantErr)
		}
	}
}

// TestDurabilityPoolKey: configs that differ in durability do not share a
// store client (the settings live in the client).
func TestDurabilityPoolKey(t *testing.T) {
	var none *Durability
	a, b := &Durability{Replicas: 1, Timeout: caddy.Duration(time.Millisecond)}, &Durability{Replicas: 2, Timeout: caddy.Duration(time.Millisecond)}
	if none.poolKey() != "" || a.poolKey() == b.poolKey() || a.poolKey() == none.poolKey() {
		t.Fatalf("pool keys: %q %q %q", none.poolKey(), a.poolKey(), b.poolKey())
	}
}
