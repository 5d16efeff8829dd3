package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/idlink/idlink/testenv"
)

// TestHandlerWarmAllocations: the whole idlink handler, for each warm path
// (a signed external id whose user is cached, an idlink-issued contact
// token already verified, a session id whose liveness is cached),
// allocates at most what it does today, counted exactly with
// testing.AllocsPerRun: instruction counts (testenv/load TestInstructions)
// need valgrind, and on a shared machine a wall-clock ratio is too noisy to
// catch an added allocation, which costs on every request.
func TestHandlerWarmAllocations(t *testing.T) {
	if testenv.RaceEnabled {
		t.Skip("the race detector allocates: the ceilings are for normal builds (the README test command runs them)")
	}
	ec := newTestKey(t, "ec", "ES256")
	app := newTestApp(t, "", func(a *App) {
		a.Tenants["acme"].ContactToken = &ContactToken{SignKeys: []TokenKey{{KID: "ec", File: ec.writePEM(t, true)}}}
	})
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
	s := login(t, api, "alloc-user")
	if s.ContactToken == "" {
		t.Fatal("the login issued no contact token")
	}
	for _, c := range []struct {
		name    string
		max     float64
		source  string
		headers map[string]string
	}{
		{"hmac", 4, "hmac", map[string]string{hdrExternalID: "alloc-user", hdrExternalIDSig: sign(testSecret, "alloc-user"), hdrPlatform: "ios"}},
		{"contact token", 5, "contact_token", map[string]string{hdrAuthorization: "Bearer " + s.ContactToken}},
		{"session id", 5, "session", map[string]string{hdrSessionID: s.SessionID}},
	} {
		r := httptest.NewRequest(http.MethodGet, "/profile", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		w := httptest.NewRecorder()
		var source string
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			source = r.Header.Get(hdrIdentitySource) // no copy: counted with the handler
			return nil
		})
		// The request's own header value slices, which net/http allocates
		// for every request whoever handles it, are built once here: the
		// count is the handler's own. Each round puts the same slices back
		// (the handler deletes and replaces request headers) and copies the
		// values into them in place, so that every round presents the same
		// request whatever a handler did to an element.
		type header struct {
			name string
			v    string
			vs   []string
		}
		var hs []header
		for k, v := range c.headers {
			hs = append(hs, header{k, v, make([]string, 1)})
		}
		var code int
		run := func() {
			clear(r.Header) // what the previous round set for the upstream
			for i := range hs {
				hs[i].vs[0] = hs[i].v
				r.Header[hs[i].name] = hs[i].vs
			}
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			code = w.Code
		}
		run() // warm it
		if code != http.StatusOK || source != c.source {
			t.Fatalf("%s: %d, the upstream saw source %q", c.name, code, source)
		}
		n := testing.AllocsPerRun(200, run)
		t.Logf("%s: %.0f allocations per request", c.name, n)
		if n > c.max {
			t.Errorf("%s allocates %.0f times per warm request, at most %.0f expected", c.name, n, c.max)
		}
	}
}
