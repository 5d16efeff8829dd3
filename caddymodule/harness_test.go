package caddymodule

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/idlink/idlink/testenv"
)

// sign is the hex HMAC-SHA256 of msg, as a customer backend computes it
// (with the standard library, not idlink's code).
func sign(secret, msg string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// testSecret is the HMAC secret of the test platforms.
const testSecret = "test-secret-0123456789abcdef"

// newTestApp provisions an idlink app with one tenant "acme" (platforms
// ios=enforce, android=enforce with a rotated secret, web=report,
// tv=off; default platform ios) against redisURL ("" = embedded store),
// and starts it. mutate may change the config before provisioning.
func newTestApp(tb testing.TB, redisURL string, mutate func(a *App)) *App {
	tb.Helper()
	app := &App{
		Redis:        redisURL,
		RedisTimeout: caddy.Duration(200 * time.Millisecond),
		Tenants: map[string]*Tenant{"acme": {
			Platforms: map[string]*Platform{
				"ios":     {Secrets: []string{testSecret}, Mode: ModeEnforce},
				"android": {Secrets: []string{"new-" + testSecret, testSecret}, Mode: ModeEnforce},
				"web":     {Secrets: []string{testSecret}, Mode: ModeReport},
				"tv":      {Mode: ModeOff},
			},
			DefaultPlatform: "ios",
		}},
	}
	if mutate != nil {
		mutate(app)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	if err := app.Provision(ctx); err != nil {
		tb.Fatalf("provision: %v", err)
	}
	app.logger = zap.NewNop()
	for _, t := range app.Tenants {
		t.logger = app.logger
	}
	if err := app.Validate(); err != nil {
		tb.Fatalf("validate: %v", err)
	}
	if err := app.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = app.Stop(); _ = app.Cleanup() })
	return app
}

// testRedisURL starts a real redis-server for the test ("" when it is
// missing outside CI: the embedded store is used then). A test whose
// behaviour touches Redis runs on every deployment with forEachStore
// instead.
func testRedisURL(tb testing.TB) string {
	if r := testenv.StartRedis(tb); r != nil {
		return r.URL()
	}
	return ""
}

// newTestHandler returns an idlink handler for tenant acme of app.
func newTestHandler(tb testing.TB, app *App, mutate func(h *Handler)) *Handler {
	h := &Handler{Tenant: "acme"}
	if mutate != nil {
		mutate(h)
	}
	if err := h.provisionWith(app); err != nil {
		tb.Fatal(err)
	}
	h.logger = zap.NewNop()
	return h
}

// recordingNext is a next handler that records the request it received.
type recordingNext struct {
	called bool
	header http.Header
}

func (n *recordingNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called = true
	n.header = r.Header.Clone()
	w.WriteHeader(http.StatusOK)
	return nil
}

// serve runs one request through h with a Replacer in its context, as
// Caddy's server does.
func serve(h caddyhttp.MiddlewareHandler, r *http.Request) (*httptest.ResponseRecorder, *recordingNext, *caddy.Replacer) {
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := httptest.NewRecorder()
	next := &recordingNext{}
	_ = h.ServeHTTP(w, r, next)
	return w, next, repl
}

// errorBody decodes a JSON error answer.
func errorBody(tb testing.TB, w *httptest.ResponseRecorder) (code, message string) {
	tb.Helper()
	var e struct{ Error, Message string }
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		tb.Fatalf("error body %q is not JSON: %v", w.Body.String(), err)
	}
	return e.Error, e.Message
}

// startCaddyPair starts two Caddy processes of the built binary (two
// instances sharing whatever the Caddyfile names, e.g. one Redis), each
// with caddyfile(its port), waiting until waitPath answers, and returns
// their base URLs.
func startCaddyPair(t *testing.T, caddyfile func(port int) string, waitPath string) []string {
	t.Helper()
	bases := make([]string, 0, 2)
	for range 2 {
		port := testenv.FreePort(t)
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		testenv.StartCaddyProcess(t, caddyfile(port), base+waitPath)
		bases = append(bases, base)
	}
	return bases
}
