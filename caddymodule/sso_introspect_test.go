package caddymodule

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/testenv"
)

// SSO against an RFC 7662 introspection endpoint that authenticates its
// clients (issue 14, item 1).

// The client's credentials: the secret needs RFC 6749 §2.3.1's encoding
// to survive a Basic header.
const (
	ssoClientID     = "idlink-acme"
	ssoClientSecret = "a:b/c+d-0123456789"
)

// introspectionServer is a real introspection endpoint: it authenticates
// the client with client_secret_basic (id and secret form-urlencoded
// before base64) and answers 401 invalid_client otherwise; a token it
// knows is active, any other {"active": false}.
type introspectionServer struct {
	*httptest.Server
	mu     sync.Mutex
	secret string
	active map[string]string
	calls  int
	hold   chan struct{}
}

func startIntrospectionServer(t testing.TB) *introspectionServer {
	s := &introspectionServer{secret: ssoClientSecret, active: map[string]string{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.calls++
		secret, hold := s.secret, s.hold
		sub, known := s.active[r.PostFormValue("token")]
		s.mu.Unlock()
		if hold != nil {
			<-hold
		}
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_request"}`))
			return
		}
		if !basicClient(r, ssoClientID, secret) {
			w.Header().Set("WWW-Authenticate", `Basic realm="introspect"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return
		}
		if !known {
			_, _ = w.Write([]byte(`{"active":false}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "sub": sub, "aud": "sdk",
			"exp": time.Now().Add(time.Hour).Unix(), "email": sub + "@example.com", "email_verified": true})
	}))
	t.Cleanup(s.Close)
	return s
}

// basicClient checks an RFC 6749 §2.3.1 Basic header.
func basicClient(r *http.Request, id, secret string) bool {
	b64, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Basic ")
	raw, err := base64.StdEncoding.DecodeString(b64)
	if !ok || err != nil {
		return false
	}
	eid, esecret, _ := strings.Cut(string(raw), ":")
	gotID, err1 := url.QueryUnescape(eid)
	gotSecret, err2 := url.QueryUnescape(esecret)
	return err1 == nil && err2 == nil && gotID == id && gotSecret == secret
}

func (s *introspectionServer) know(token, sub string) {
	s.mu.Lock()
	s.active[token] = sub
	s.mu.Unlock()
}
func (s *introspectionServer) expect(secret string) { s.mu.Lock(); s.secret = secret; s.mu.Unlock() }
func (s *introspectionServer) callCount() int       { s.mu.Lock(); defer s.mu.Unlock(); return s.calls }

// TestSSOIntrospectionClientSecret: the secret comes from {env.*}; a
// user's active token is verified; when the provider refuses idlink's
// credentials every user gets 503 sso_unavailable (never invalid_token),
// logged at warn without the secret, and nothing of it is cached.
func TestSSOIntrospectionClientSecret(t *testing.T) {
	t.Setenv("IDLINK_TEST_SSO_SECRET", ssoClientSecret)
	srv := startIntrospectionServer(t)
	srv.know("tok-alice", "alice")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {SSO: &SSO{
		TokenInfoURL: srv.URL, Audience: []string{"sdk"}, Timeout: caddy.Duration(time.Second),
		ClientID: ssoClientID, ClientSecret: "{env.IDLINK_TEST_SSO_SECRET}", TokenTypeHint: "access_token",
	}}})
	core, logs := observer.New(zapcore.DebugLevel)
	a.Tenants["acme"].logger = zap.New(core)
	h := newTokenHandler(a, "acme", false)

	if w := h.do(t, hdr(hdrSSOToken, "tok-alice")); w.Code != 200 || h.seen.Get(hdrExternalID) != "alice" ||
		h.seen.Get(hdrIdentitySource) != SourceSSO || h.seen.Get(hdrVerifiedEmail) != "alice@example.com" {
		t.Fatalf("active token: %d %s %v", w.Code, w.Body, h.seen)
	}
	if w := h.do(t, hdr(hdrSSOToken, "tok-nobody")); w.Code != 401 {
		t.Fatalf("inactive token: %d %s", w.Code, w.Body)
	} else if code, _ := errorBody(t, w); code != apierr.CodeInvalidToken {
		t.Fatalf("inactive token: %s", code)
	}

	srv.expect("the-provider-has-another-secret")
	srv.know("tok-bob", "bob")
	before := srv.callCount()
	for range 3 {
		h.seen = nil
		w := h.do(t, hdr(hdrSSOToken, "tok-bob"))
		if code, _ := errorBody(t, w); w.Code != 503 || code != apierr.CodeSSOUnavailable || h.seen != nil {
			t.Fatalf("credentials refused: %d %s (upstream reached: %v)", w.Code, code, h.seen != nil)
		}
		if w.Header().Get("Retry-After") == "" {
			t.Fatal("no Retry-After")
		}
	}
	if n := srv.callCount() - before; n != 3 {
		t.Fatalf("%d calls for 3 checks: the refusal of idlink's credentials was cached", n)
	}
	warned := logs.FilterMessageSnippet("refuses idlink's client credentials").FilterLevelExact(zapcore.WarnLevel).Len()
	if warned != 1 {
		t.Fatalf("%d warnings for 3 refusals in one second, want 1 (rate-limited)", warned)
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		buf, _ := enc.EncodeEntry(e.Entry, e.Context)
		for _, secret := range []string{ssoClientSecret, url.QueryEscape(ssoClientSecret), "tok-bob",
			base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(ssoClientID) + ":" + url.QueryEscape(ssoClientSecret)))} {
			if strings.Contains(buf.String(), secret) {
				t.Errorf("log entry holds a credential or the token: %s", buf)
			}
		}
	}
	srv.expect(ssoClientSecret)
	if w := h.do(t, hdr(hdrSSOToken, "tok-bob")); w.Code != 200 || h.seen.Get(hdrExternalID) != "bob" {
		t.Fatalf("once the provider accepts the credentials again: %d %s", w.Code, w.Body)
	}
}

// TestSSOMaxConcurrent: beyond max_concurrent calls in flight a check is
// answered 503 sso_unavailable at once.
func TestSSOMaxConcurrent(t *testing.T) {
	srv := startIntrospectionServer(t)
	srv.hold = make(chan struct{})
	srv.know("tok-alice", "alice")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {SSO: &SSO{
		TokenInfoURL: srv.URL, Audience: []string{"sdk"}, Timeout: caddy.Duration(5 * time.Second),
		ClientID: ssoClientID, ClientSecret: ssoClientSecret, MaxConcurrent: 1,
	}}})
	held := make(chan int)
	go func() { held <- newTokenHandler(a, "acme", false).do(t, hdr(hdrSSOToken, "tok-alice")).Code }()
	deadline := time.Now().Add(5 * time.Second)
	for srv.callCount() == 0 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	start := time.Now()
	w := newTokenHandler(a, "acme", false).do(t, hdr(hdrSSOToken, "tok-random"))
	if code, _ := errorBody(t, w); w.Code != 503 || code != apierr.CodeSSOUnavailable || time.Since(start) > 2*time.Second {
		t.Fatalf("beyond max_concurrent: %d %s after %v", w.Code, code, time.Since(start))
	}
	close(srv.hold)
	if code := <-held; code != 200 {
		t.Fatalf("the held check: %d", code)
	}
	if n := srv.callCount(); n != 1 {
		t.Fatalf("the provider saw %d calls, want 1", n)
	}
}

// TestSSOProvisionRefuses: combinations that cannot authenticate, and a
// URL carrying credentials, stop the config, and no error shows a secret.
func TestSSOProvisionRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		sso  *SSO
		want string
	}{
		{"secret without id", &SSO{ClientSecret: "s3cret-value"}, "client_secret needs client_id"},
		{"id without secret", &SSO{ClientID: "idlink"}, "needs client_secret"},
		{"bearer without token", &SSO{AuthMethod: "bearer"}, "needs bearer_token"},
		{"bearer token with basic", &SSO{ClientID: "i", ClientSecret: "s3cret-value", BearerToken: "s3cret-value"}, "bearer_token is sent only with auth_method bearer"},
		{"unknown method", &SSO{AuthMethod: "private_key_jwt", ClientID: "i", ClientSecret: "s3cret-value"}, "want client_secret_basic"},
		{"none with a secret", &SSO{AuthMethod: "none", ClientID: "i", ClientSecret: "s3cret-value"}, "sends no credential"},
		{"negative max_concurrent", &SSO{MaxConcurrent: -1}, "max_concurrent must be positive"},
		{"unset env secret", &SSO{ClientID: "i", ClientSecret: "{env.IDLINK_TEST_UNSET_SECRET}"}, "sso client_secret"},
		{"userinfo in the URL", &SSO{TokenInfoURL: "https://idlink:s3cret-value@sso.example.com/introspect"}, "must not carry credentials"},
		{"userinfo in a broken URL", &SSO{TokenInfoURL: "https://idlink:s3cret-value@sso.example.com:x/introspect"}, "not a URL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := c.sso
			if s.TokenInfoURL == "" {
				s.TokenInfoURL = "https://sso.example.com/introspect"
			}
			s.Audience = []string{"sdk"}
			a := &App{Tenants: map[string]*Tenant{"acme": {SSO: s}}, logger: zap.NewNop()}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := a.Provision(ctx)
			_ = a.Cleanup()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("provision: %v, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}

// TestSSOIntrospectionThroughCaddy: a real Caddy with the secret in a
// {file.*} placeholder: an active token's identity reaches the upstream;
// when the provider refuses idlink's credentials the client gets 503
// sso_unavailable and the upstream nothing.
func TestSSOIntrospectionThroughCaddy(t *testing.T) {
	srv := startIntrospectionServer(t)
	srv.know("tok-alice", "alice")
	secretFile := filepath.Join(t.TempDir(), "sso-secret")
	if err := os.WriteFile(secretFile, []byte(ssoClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		redis %s
		tenant acme {
			sso {
				token_info_url %s/introspect
				audience sdk
				client_id %s
				client_secret {file.%s}
				token_type_hint access_token
				max_concurrent 8
			}
		}
	}
}
http://127.0.0.1:%d {
	idlink acme
	reverse_proxy %s
}
`, testRedisURL(t), srv.URL, ssoClientID, secretFile, port, up.Addr()))
	get := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/app", port), nil)
		req.Header.Set("X-Sso-Token", token)
		req.Header.Set("X-External-Id", "mallory")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Error
	}
	if status, _ := get("tok-alice"); status != 200 {
		t.Fatalf("active token: %d", status)
	}
	got, ok := up.Last()
	if !ok || got.Header.Get("X-External-Id") != "alice" || got.Header.Get("X-Identity-Source") != "sso" ||
		got.Header.Get("X-Identity-Verified") != "true" || got.Header.Get("X-Platform-User-Id") == "" ||
		got.Header.Get("X-Sso-Token") != "" {
		t.Fatalf("the upstream saw %v", got.Header)
	}
	srv.expect("rotated-at-the-provider")
	up.Reset()
	if status, code := get("tok-alice-2"); status != 503 || code != apierr.CodeSSOUnavailable {
		t.Fatalf("credentials refused: %d %s", status, code)
	}
	if _, reached := up.Last(); reached {
		t.Fatal("the upstream was reached")
	}
}

// TestSSOReadmeSnippet: the Caddyfile of the README's "SSO tokens" section
// adapts, and its idlink app provisions once the secret's variable is
// set (and refuses to, naming the option, while it is not).
func TestSSOReadmeSnippet(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "\n### SSO tokens\n")
	_, block, ok2 := strings.Cut(section, "```caddyfile\n")
	snippet, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("no caddyfile block in the README's SSO tokens section")
	}
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(snippet), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("the README's snippet does not adapt: %v", err)
	}
	var cfg struct {
		Apps struct {
			Idlink json.RawMessage `json:"idlink"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var app App
	if err := json.Unmarshal(cfg.Apps.Idlink, &app); err != nil {
		t.Fatal(err)
	}
	sso := app.Tenants["acme"].SSO
	if sso == nil || sso.ClientID == "" || !strings.HasPrefix(sso.ClientSecret, "{env.") || sso.TokenTypeHint == "" {
		t.Fatalf("the snippet's sso: %+v", sso)
	}
	load := func() error {
		err := caddy.Load([]byte(`{"admin":{"disabled":true,"config":{"persist":false}},"apps":{"idlink":`+
			string(cfg.Apps.Idlink)+`}}`), true)
		if err == nil {
			_ = caddy.Stop()
		}
		return err
	}
	t.Setenv("ACME_SSO_CLIENT_SECRET", "")
	if err := load(); err == nil || !strings.Contains(err.Error(), "sso client_secret") {
		t.Fatalf("without the secret: %v", err)
	}
	t.Setenv("ACME_SSO_CLIENT_SECRET", ssoClientSecret)
	if err := load(); err != nil {
		t.Fatalf("with the secret: %v", err)
	}
}

// TestSSOCaddyfileSecretNotQuoted: a Caddyfile argument error about a
// secret does not quote it (Caddy's own argument errors quote a token).
func TestSSOCaddyfileSecretNotQuoted(t *testing.T) {
	for _, line := range []string{"client_secret s3cret-one s3cret-two", "bearer_token s3cret-one s3cret-two"} {
		in := "{\n\tidlink {\n\t\ttenant acme {\n\t\t\tsso {\n\t\t\t\ttoken_info_url https://sso.example.com/i\n" +
			"\t\t\t\taudience sdk\n\t\t\t\tclient_id i\n\t\t\t\t" + line + "\n\t\t\t}\n\t\t}\n\t}\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), map[string]any{"filename": "Caddyfile"})
		if err == nil || !strings.Contains(err.Error(), "exactly one value") || strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("%s: %v", line, err)
		}
	}
}
