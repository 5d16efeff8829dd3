package caddymodule

import (
	"net/http"
	"testing"
	"time"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/testenv"
)

func TestStoreOutage(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a real redis-server to stop and start")
	}
	for _, policy := range []string{FailClosed, FailOpen} {
		t.Run(policy, func(t *testing.T) {
			app := newTestApp(t, r.URL(), func(a *App) { a.OnStoreError = policy })
			h := newTestHandler(t, app, nil)
			_, next, _ := serve(h, signedRequest("known-"+policy, "ios", testSecret))
			known := next.header.Get(hdrPlatformUserID)

			r.Stop()
			// A cold external id needs Redis.
			w, next, _ := serve(h, signedRequest("cold-"+policy, "ios", testSecret))
			switch policy {
			case FailClosed:
				if w.Code != http.StatusServiceUnavailable || next.called {
					t.Fatalf("fail_closed: %d, upstream %v", w.Code, next.called)
				}
				if code, _ := errorBody(t, w); code != apierr.CodeStoreUnavailable {
					t.Fatalf("code %q", code)
				}
				if w.Header().Get("Retry-After") == "" {
					t.Fatal("no Retry-After")
				}
			case FailOpen:
				if w.Code != 200 || !next.called {
					t.Fatalf("fail_open: %d", w.Code)
				}
				if next.header.Get(hdrIdentitySource) != SourceAnonymous || next.header.Get(hdrPlatformUserID) != "" {
					t.Fatalf("fail_open injected an identity: %v", next.header)
				}
			}
			// A warm one costs no Redis round trip and still passes.
			_, next, _ = serve(h, signedRequest("known-"+policy, "ios", testSecret))
			if next.header.Get(hdrPlatformUserID) != known {
				t.Fatal("the warm mapping did not serve during the outage")
			}

			r.Start()
			deadline := time.Now().Add(5 * time.Second)
			for {
				w, next, _ := serve(h, signedRequest("cold-"+policy, "ios", testSecret))
				if w.Code == 200 && next.header.Get(hdrPlatformUserID) != "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no recovery after Redis came back: %d %s", w.Code, w.Body)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

func TestStoreHungAnswersWithinDeadline(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a real redis-server to pause")
	}
	app := newTestApp(t, r.URL(), func(a *App) { a.RedisTimeout = 0 }) // the default deadline
	h := newTestHandler(t, app, nil)
	serve(h, signedRequest("warmup", "ios", testSecret)) // open a pooled connection
	r.Pause()
	defer r.Resume()
	start := time.Now()
	w, _, _ := serve(h, signedRequest("hung-cold", "ios", testSecret))
	took := time.Since(start)
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d", w.Code)
	}
	// The deadline is 250ms; a request must not hang for the client's
	// default timeouts (seconds). Allow scheduling slack, not a retry storm.
	if took > 2*time.Second {
		t.Fatalf("a hung Redis held the request for %v", took)
	}
	t.Logf("hung Redis answered 503 after %v", took)
	r.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if w, _, _ := serve(h, signedRequest("hung-cold", "ios", testSecret)); w.Code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no recovery after resume")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFailOpenWithAnonymousDenyIsClosed(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a real redis-server to stop")
	}
	app := newTestApp(t, r.URL(), func(a *App) {
		a.OnStoreError = FailOpen
		a.Tenants["acme"].Anonymous = AnonymousDeny
	})
	h := newTestHandler(t, app, nil)
	r.Stop()
	w, next, _ := serve(h, signedRequest("cold", "ios", testSecret))
	if w.Code != http.StatusServiceUnavailable || next.called {
		t.Fatalf("fail_open with anonymous deny must refuse: %d", w.Code)
	}
}
