package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/testenv"
)

// e2eCaddyfile is a site with idlink in front of a recording upstream, and
// a /members/* block guarded by a tenant that denies anonymous requests.
func e2eCaddyfile(redisURL string, port int, upstream string) string {
	return e2eCaddyfileLayout(redisURL, port, upstream, "site")
}

// e2eLayouts are the forms of e2eCaddyfile's site, all with the same
// behaviour: "site", a site-level idlink acme with /members/* in a handle
// block that has its own idlink strict; "handle", idlink only inside
// handle blocks; "api", "site" with acme's API mounted by the handler.
// %[1]s is the upstream.
var e2eLayouts = map[string]string{
	"site": `
	handle /members/* {
		idlink strict
		reverse_proxy %[1]s
	}
	idlink acme
	reverse_proxy %[1]s {
		header_up X-Placeholder-User "{http.auth.user.id}"
		header_up X-Placeholder-Source "{idlink.source}"
	}`,
	"handle": `
	handle /members/* {
		idlink strict
		reverse_proxy %[1]s
	}
	handle {
		idlink acme
		reverse_proxy %[1]s {
			header_up X-Placeholder-User "{http.auth.user.id}"
			header_up X-Placeholder-Source "{idlink.source}"
		}
	}`,
	"api": `
	idlink acme {
		api /idlink
	}
	handle /members/* {
		idlink strict
		reverse_proxy %[1]s
	}
	reverse_proxy %[1]s {
		header_up X-Placeholder-User "{http.auth.user.id}"
		header_up X-Placeholder-Source "{idlink.source}"
	}`,
}

// e2eCaddyfileLayout is e2eCaddyfile with the site in one of e2eLayouts.
func e2eCaddyfileLayout(redisURL string, port int, upstream, layout string) string {
	redisLine := ""
	if redisURL != "" {
		redisLine = "redis " + redisURL
	}
	// The server keeps some underscore and dot spellings of identity
	// headers (Caddy drops them by default, and drops the hyphenated twin
	// of an allow-listed name): idlink must strip them itself.
	return fmt.Sprintf(`{
	servers {
		expected_underscore_headers X_Identity_Verified X_Verified_Email X_Custom_Underscore
		expected_dot_headers X.Verified.Phone
	}
	idlink {
		%s
		redis_timeout 200ms
		tenant acme {
			platform ios {
				secret {env.IDLINK_E2E_NEW} {env.IDLINK_E2E_OLD}
				mode enforce
			}
			platform web {
				secret {env.IDLINK_E2E_NEW}
				mode report
			}
			default_platform ios
		}
		tenant strict {
			platform ios {
				secret {env.IDLINK_E2E_NEW}
			}
			anonymous deny
		}
	}
}

http://127.0.0.1:%d {%s
}
`, redisLine, port, fmt.Sprintf(e2eLayouts[layout], upstream))
}

const (
	e2eNew = "e2e-new-secret-0123456789"
	e2eOld = "e2e-old-secret-0123456789"
)

type e2e struct {
	t        *testing.T
	base     string
	upstream *testenv.Upstream
}

func startE2E(t *testing.T, redisURL string) *e2e {
	return startE2ELayout(t, redisURL, "site")
}

func startE2ELayout(t *testing.T, redisURL, layout string) *e2e {
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	t.Setenv("IDLINK_E2E_OLD", e2eOld)
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, e2eCaddyfileLayout(redisURL, port, up.Addr(), layout))
	return &e2e{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), upstream: up}
}

// do sends a request with the given raw header keys (written as given, so
// non-canonical and underscore spellings reach the server) and returns the
// status, the body and what the upstream received (nil if nothing).
func (e *e2e) do(method, path string, headers [][2]string) (int, string, http.Header) {
	e.t.Helper()
	e.upstream.Reset()
	req, err := http.NewRequest(method, e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, kv := range headers {
		req.Header[kv[0]] = append(req.Header[kv[0]], kv[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	last, ok := e.upstream.Last()
	if !ok {
		return resp.StatusCode, string(body), nil
	}
	return resp.StatusCode, string(body), last.Header
}

func signed(ext, secret string, extra ...[2]string) [][2]string {
	return append([][2]string{{"X-External-Id", ext}, {"X-External-Id-Signature", sign(secret, ext)}}, extra...)
}

var spoofs = [][2]string{
	{"X-Platform-User-Id", "u_spoofed"}, {"x-platform-user-id", "u_spoofed2"}, {"X_Platform_User_Id", "u_spoofed3"},
	{"x_platform_user_id", "u_spoofed4"}, {"X-PLATFORM-USER-ID", "u_spoofed5"}, {"X-Identity-Verified", "spoofed"},
	{"X_Identity_Verified", "spoofed"}, {"X-Identity-Source", "spoofed"}, {"x-identity-source", "spoofed"}, {"X-Verified-Email", "spoofed@x"},
	{"X_Verified_Email", "spoofed@x"}, {"x_verified_email", "spoofed@y"}, {"X.Verified.Phone", "spoofed"},
	{"X_Custom_Underscore", "kept"}, // proves underscore headers do reach the upstream
}

func assertNoSpoof(t *testing.T, got http.Header) {
	t.Helper()
	for k, vs := range got {
		for _, v := range vs {
			if strings.Contains(v, "spoofed") {
				t.Fatalf("spoofed %s: %s reached the upstream", k, v)
			}
		}
	}
}

func TestE2E(t *testing.T) {
	r := testenv.StartRedis(t)
	url := ""
	if r != nil {
		url = r.URL()
	}
	e := startE2E(t, url)
	e2eSpoofChecks(t, e)
	if r == nil {
		return
	}
	e2eOutage(t, e, r)
}

// e2eSpoofChecks is the spoof and verification suite of TestE2E, run on
// every layout by TestPerimeterSpoofsEveryLayout. It returns alice's user.
func e2eSpoofChecks(t *testing.T, e *e2e) string {
	t.Helper()
	// A valid signature: the upstream gets the user, the same one every time.
	status, body, got := e.do("GET", "/app", signed("alice", e2eNew, spoofs...))
	if status != 200 || got == nil {
		t.Fatalf("valid: %d %s", status, body)
	}
	assertNoSpoof(t, got)
	if got.Get("X_Custom_Underscore") == "" {
		t.Fatalf("the proxy dropped underscore headers: the spoof check above proves nothing: %v", got)
	}
	user := got.Get("X-Platform-User-Id")
	if !strings.HasPrefix(user, "u_") || got.Get("X-Identity-Verified") != "true" || got.Get("X-Identity-Source") != "hmac" || got.Get("X-External-Id") != "alice" {
		t.Fatalf("identity headers: %v", got)
	}
	if got.Get("X-Placeholder-User") != user || got.Get("X-Placeholder-Source") != "hmac" {
		t.Fatalf("placeholders: %q %q", got.Get("X-Placeholder-User"), got.Get("X-Placeholder-Source"))
	}
	if got.Get("X-External-Id-Signature") != "" {
		t.Fatal("signature forwarded")
	}
	for i := 0; i < 3; i++ {
		if _, _, again := e.do("GET", "/app", signed("alice", e2eNew)); again.Get("X-Platform-User-Id") != user {
			t.Fatalf("alice changed user: %s then %s", user, again.Get("X-Platform-User-Id"))
		}
	}
	// Rotation: the old secret still verifies to the same user.
	if _, _, got := e.do("GET", "/app", signed("alice", e2eOld)); got.Get("X-Platform-User-Id") != user || got.Get("X-Identity-Verified") != "true" {
		t.Fatalf("old secret: %v", got)
	}
	// Wrong secret: refused, nothing reaches the upstream.
	status, body, got = e.do("GET", "/app", signed("alice", "wrong-secret-0123456789", spoofs...))
	if status != 401 || got != nil || !strings.Contains(body, `"error":"invalid_signature"`) {
		t.Fatalf("wrong secret: %d %s %v", status, body, got)
	}
	// Wrong platform: web's secret list does not hold the old secret.
	if status, _, _ := e.do("GET", "/app", signed("alice", e2eOld, [2]string{"X-Platform", "nope"})); status != 401 {
		t.Fatalf("unknown platform: %d", status)
	}
	// Report mode: a bad signature passes, unverified.
	status, _, got = e.do("GET", "/app", signed("alice", "wrong-secret-0123456789", append([][2]string{{"X-Platform", "web"}}, spoofs...)...))
	if status != 200 || got.Get("X-Identity-Verified") != "false" || got.Get("X-Platform-User-Id") != user {
		t.Fatalf("report mode: %d %v", status, got)
	}
	assertNoSpoof(t, got)
	// Anonymous allowed at the site, denied in /members/.
	status, _, got = e.do("GET", "/app", spoofs)
	if status != 200 || got.Get("X-Identity-Source") != "anonymous" || got.Get("X-Platform-User-Id") != "" {
		t.Fatalf("anonymous: %d %v", status, got)
	}
	assertNoSpoof(t, got)
	status, body, got = e.do("GET", "/members/x", spoofs)
	if status != 401 || got != nil || !strings.Contains(body, "authentication_required") {
		t.Fatalf("anonymous deny: %d %s", status, body)
	}
	// Tenants are separate: alice in "strict" is another user.
	if _, _, got := e.do("GET", "/members/x", signed("alice", e2eNew, [2]string{"X-Platform", "ios"})); got == nil || got.Get("X-Platform-User-Id") == user || got.Get("X-Platform-User-Id") == "" {
		t.Fatalf("tenant isolation: %v", got)
	}
	// Over-long id: 400 JSON.
	long := strings.Repeat("x", 300)
	status, body, _ = e.do("GET", "/app", signed(long, e2eNew))
	if status != 400 || !strings.Contains(body, "invalid_request") {
		t.Fatalf("over-long: %d %s", status, body)
	}
	// CORS preflight passes untouched even where anonymous is denied.
	status, _, got = e.do("OPTIONS", "/members/x", [][2]string{{"Origin", "https://app.example"}, {"Access-Control-Request-Method", "POST"}})
	if status != 200 || got == nil {
		t.Fatalf("preflight: %d", status)
	}
	return user
}

// e2eOutage stops Redis under e.
func e2eOutage(t *testing.T, e *e2e, r *testenv.Redis) {
	_, _, got := e.do("GET", "/app", signed("alice", e2eNew))
	user := got.Get("X-Platform-User-Id")
	// Redis stopped mid-test: a new user cannot be resolved → 503 with
	// Retry-After; alice is cached and keeps working; recovery when back.
	r.Stop()
	req, _ := http.NewRequest("GET", e.base+"/app", nil)
	for _, kv := range signed("newcomer", e2eNew) {
		req.Header.Set(kv[0], kv[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), `"error":"store_unavailable"`) {
		t.Fatalf("outage: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if strings.Contains(string(b), "127.0.0.1") || strings.Contains(string(b), "dial") {
		t.Fatalf("the Redis error leaked: %s", b)
	}
	if _, _, got := e.do("GET", "/app", signed("alice", e2eNew)); got.Get("X-Platform-User-Id") != user {
		t.Fatal("a cached user must pass during an outage")
	}
	r.Start()
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, _, got := e.do("GET", "/app", signed("newcomer", e2eNew))
		if status == 200 && got.Get("X-Platform-User-Id") != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %d", status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestE2EEmbeddedDefault runs Caddyfile.example as the README's first
// command does (no redis line: the embedded store) in the built binary.
func TestE2EEmbeddedDefault(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	raw, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	app, upstream := testenv.FreePort(t), testenv.FreePort(t)
	cfg := strings.ReplaceAll(string(raw), "localhost:{$IDLINK_EXAMPLE_PORT:8080}", fmt.Sprintf("127.0.0.1:%d", app))
	t.Setenv("IDLINK_ECHO_PORT", fmt.Sprint(upstream))
	t.Setenv("IDLINK_DEMO_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("IDLINK_DEMO_SECRET", "demo-secret-change-me")
	base := fmt.Sprintf("http://127.0.0.1:%d/", app)
	p := testenv.StartCaddyProcess(t, cfg, base)

	get := func(headers ...[2]string) (int, string) {
		req, _ := http.NewRequest("GET", base, nil)
		for _, kv := range headers {
			req.Header[kv[0]] = []string{kv[1]}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, body := get(append(signed("alice", "demo-secret-change-me"), [2]string{"X-Platform-User-Id", "u_spoofed"})...)
	if status != 200 || !strings.Contains(body, "X-Platform-User-Id: u_") || strings.Contains(body, "spoofed") || !strings.Contains(body, "X-Identity-Verified: true") {
		t.Fatalf("example: %d %s", status, body)
	}
	first := body
	if _, again := get(signed("alice", "demo-secret-change-me")...); again != first {
		t.Fatalf("not the same user on a later request:\n%s\n%s", first, again)
	}
	if status, body := get(signed("alice", "wrong")...); status != 401 || !strings.Contains(body, "invalid_signature") {
		t.Fatalf("example, wrong secret: %d %s", status, body)
	}
	if !strings.Contains(p.Logs(), "embedded in-process store") {
		t.Fatal("no warning that the embedded store is not durable")
	}
	// The warning gives the embedded store's address, for redis-cli: it
	// holds the user just resolved.
	m := regexp.MustCompile(`embedded in-process store[^\n]*"addr": ?"(127\.0\.0\.1:\d+)"`).FindStringSubmatch(p.Logs())
	if m == nil {
		t.Fatalf("the warning gives no address of the embedded store:\n%s", p.Logs())
	}
	rdb := redis.NewClient(&redis.Options{Addr: m[1]})
	defer rdb.Close()
	if keys, err := rdb.Keys(context.Background(), "idl:*").Result(); err != nil || len(keys) == 0 {
		t.Fatalf("the logged address %s: keys %v, %v", m[1], keys, err)
	}
	if strings.Contains(p.Logs(), "demo-secret-change-me") || strings.Contains(p.Logs(), sign("demo-secret-change-me", "alice")) {
		t.Fatal("a secret or signature reached the log")
	}
}

// TestE2EReloadKeepsStore reloads the config: the store client (here the
// embedded store, whose data lives in it) is shared through the usage
// pool, so users resolved before the reload are the same after it.
func TestE2EReloadKeepsStore(t *testing.T) {
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	t.Setenv("IDLINK_E2E_OLD", e2eOld)
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	cfg := e2eCaddyfile("", port, up.Addr())
	c := testenv.StartCaddy(t, cfg)
	e := &e2e{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), upstream: up}
	_, _, before := e.do("GET", "/app", signed("reload-user", e2eNew))
	c.Reload(t, strings.Replace(cfg, "redis_timeout 200ms", "redis_timeout 200ms\n\t\ton_store_error fail_closed", 1))
	_, _, after := e.do("GET", "/app", signed("reload-user", e2eNew))
	if before.Get("X-Platform-User-Id") == "" || before.Get("X-Platform-User-Id") != after.Get("X-Platform-User-Id") {
		t.Fatalf("user changed across a reload: %q then %q", before.Get("X-Platform-User-Id"), after.Get("X-Platform-User-Id"))
	}
}
