package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
)

// tokenInfoServer is a real local token-info endpoint: each token gets the
// answer its test gives it.
type tokenInfoServer struct {
	*httptest.Server
	mu      sync.Mutex
	answers map[string]func(w http.ResponseWriter)
	calls   map[string]int
	bad     atomic.Value // a description of a malformed request, if any
}

func startTokenInfoServer(t testing.TB) *tokenInfoServer {
	s := &tokenInfoServer{answers: map[string]func(http.ResponseWriter){}, calls: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.RawQuery != "" ||
			r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			s.bad.Store(fmt.Sprintf("%s %s %s", r.Method, r.URL, r.Header.Get("Content-Type")))
		}
		tok := r.PostFormValue("token")
		s.mu.Lock()
		s.calls[tok]++
		answer := s.answers[tok]
		s.mu.Unlock()
		if answer == nil {
			http.Error(w, `{"error":"invalid_token"}`, http.StatusUnauthorized)
			return
		}
		answer(w)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *tokenInfoServer) answer(token string, f func(w http.ResponseWriter)) {
	s.mu.Lock()
	s.answers[token] = f
	s.mu.Unlock()
}

func jsonAnswer(status int, body any) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if s, ok := body.(string); ok {
			_, _ = w.Write([]byte(s))
			return
		}
		_ = json.NewEncoder(w).Encode(body)
	}
}

func newSSOEnv(t *testing.T, clock *testClock) (*App, *testHandler, *tokenInfoServer) {
	srv := startTokenInfoServer(t)
	var now func() time.Time
	if clock != nil {
		now = clock.Now
	}
	a := startTestApp(t, now, map[string]*Tenant{"acme": {
		Platforms: map[string]*Platform{"ios": {Secrets: []string{"secret-0123456789abcdef"}}},
		SSO: &SSO{
			TokenInfoURL: srv.URL + "/tokeninfo",
			Audience:     []string{"sdk"},
			Timeout:      caddy.Duration(300 * time.Millisecond),
		},
	}})
	return a, newTokenHandler(a, "acme", false), srv
}

func TestSSOOutcomes(t *testing.T) {
	_, h, srv := newSSOEnv(t, nil)
	now := time.Now()
	exp, iat := now.Add(10*time.Minute).Unix(), now.Unix()
	answers := []struct {
		name   string
		answer func(http.ResponseWriter)
		status int
		code   string
		check  func(t *testing.T, seen http.Header)
	}{
		{"valid", jsonAnswer(200, map[string]any{"sub": "sso-alice", "aud": "sdk", "exp": exp, "iat": iat, "email": "alice@example.com", "email_verified": true, "name": "Alice"}), 200, "",
			func(t *testing.T, seen http.Header) {
				if seen.Get(hdrIdentitySource) != SourceSSO || seen.Get(hdrIdentityVerified) != "true" ||
					seen.Get(hdrExternalID) != "sso-alice" || seen.Get(hdrVerifiedEmail) != "alice@example.com" ||
					seen.Get(hdrPlatformUserID) == "" || seen.Get(hdrSSOToken) != "" {
					t.Fatalf("upstream %v", seen)
				}
			}},
		{"google style strings", jsonAnswer(200, map[string]any{"sub": "g-1", "aud": "sdk", "exp": strconv.FormatInt(exp, 10), "iat": strconv.FormatInt(iat, 10), "email": "g@example.com", "email_verified": "false"}), 200, "",
			func(t *testing.T, seen http.Header) {
				if seen.Get(hdrExternalID) != "g-1" || seen.Get(hdrVerifiedEmail) != "" {
					t.Fatalf("upstream %v", seen)
				}
			}},
		{"aud array", jsonAnswer(200, map[string]any{"sub": "a", "aud": []string{"x", "sdk"}, "exp": exp}), 200, "", nil},
		{"active true", jsonAnswer(200, map[string]any{"sub": "a", "aud": "sdk", "exp": exp, "active": true}), 200, "", nil},
		{"endpoint 401", jsonAnswer(401, `{"error":"bad"}`), 401, apierr.CodeInvalidToken, nil},
		{"endpoint 403", jsonAnswer(403, `{}`), 401, apierr.CodeInvalidToken, nil},
		// The endpoint wants client authentication: idlink's request is
		// refused, not the user's token.
		{"endpoint 401 invalid_client", jsonAnswer(401, `{"error":"invalid_client"}`), 503, apierr.CodeSSOUnavailable, nil},
		{"endpoint 400 unauthorized_client", jsonAnswer(400, `{"error":"unauthorized_client"}`), 503, apierr.CodeSSOUnavailable, nil},
		{"endpoint 401 Basic challenge", func(w http.ResponseWriter) {
			w.Header().Set("WWW-Authenticate", `Basic realm="sso"`)
			w.WriteHeader(401)
		}, 503, apierr.CodeSSOUnavailable, nil},
		{"endpoint 404", jsonAnswer(404, `{}`), 401, apierr.CodeInvalidToken, nil},
		{"endpoint redirect", func(w http.ResponseWriter) { w.Header().Set("Location", "/elsewhere"); w.WriteHeader(302) }, 401, apierr.CodeInvalidToken, nil},
		{"endpoint 500", jsonAnswer(500, `{}`), 503, apierr.CodeSSOUnavailable, nil},
		{"endpoint 502", jsonAnswer(502, `{}`), 503, apierr.CodeSSOUnavailable, nil},
		{"endpoint 429", jsonAnswer(429, `{}`), 503, apierr.CodeSSOUnavailable, nil},
		{"endpoint too slow", func(w http.ResponseWriter) { time.Sleep(500 * time.Millisecond); jsonAnswer(200, `{}`)(w) }, 503, apierr.CodeSSOUnavailable, nil},
		{"200 not JSON", jsonAnswer(200, `<html>`), 503, apierr.CodeSSOUnavailable, nil},
		{"200 huge", jsonAnswer(200, `{"sub":"`+strings.Repeat("a", 70<<10)+`"}`), 503, apierr.CodeSSOUnavailable, nil},
		{"wrong aud", jsonAnswer(200, map[string]any{"sub": "a", "aud": "other-app", "exp": exp}), 401, apierr.CodeInvalidToken, nil},
		{"no aud", jsonAnswer(200, map[string]any{"sub": "a", "exp": exp}), 401, apierr.CodeInvalidToken, nil},
		{"exp past", jsonAnswer(200, map[string]any{"sub": "a", "aud": "sdk", "exp": now.Add(-time.Hour).Unix()}), 401, apierr.CodeInvalidToken, nil},
		{"no exp", jsonAnswer(200, map[string]any{"sub": "a", "aud": "sdk"}), 401, apierr.CodeInvalidToken, nil},
		{"iat future", jsonAnswer(200, map[string]any{"sub": "a", "aud": "sdk", "exp": exp, "iat": now.Add(time.Hour).Unix()}), 401, apierr.CodeInvalidToken, nil},
		{"no sub", jsonAnswer(200, map[string]any{"aud": "sdk", "exp": exp}), 401, apierr.CodeInvalidToken, nil},
		{"sub with CRLF", jsonAnswer(200, map[string]any{"sub": "a\r\nX-Platform-User-Id: u", "aud": "sdk", "exp": exp}), 401, apierr.CodeInvalidToken, nil},
		{"active false", jsonAnswer(200, map[string]any{"sub": "a", "aud": "sdk", "exp": exp, "active": false}), 401, apierr.CodeInvalidToken, nil},
	}
	for i, c := range answers {
		t.Run(c.name, func(t *testing.T) {
			token := "opaque-token-" + strconv.Itoa(i)
			srv.answer(token, c.answer)
			w := h.do(t, hdr(hdrSSOToken, token))
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			if c.status != 200 {
				code, _ := errorBody(t, w)
				if code != c.code || h.seen != nil {
					t.Fatalf("answer %s (upstream reached: %v)", code, h.seen != nil)
				}
				if strings.Contains(w.Body.String(), token) {
					t.Fatal("the answer echoes the token")
				}
				if c.code == apierr.CodeInvalidToken && w.Header().Get("WWW-Authenticate") == "" {
					t.Fatal("no WWW-Authenticate")
				}
				if c.code == apierr.CodeSSOUnavailable && w.Header().Get("Retry-After") == "" {
					t.Fatal("no Retry-After")
				}
			} else if c.check != nil {
				c.check(t, h.seen)
			}
		})
	}
	if bad := srv.bad.Load(); bad != nil {
		t.Fatalf("malformed token-info request: %v", bad)
	}
}

func TestSSOServerDown(t *testing.T) {
	a, h, srv := newSSOEnv(t, nil)
	_ = a
	srv.Close()
	w := h.do(t, hdr(hdrSSOToken, "any"))
	if code, _ := errorBody(t, w); w.Code != 503 || code != apierr.CodeSSOUnavailable {
		t.Fatalf("%d %s", w.Code, code)
	}
}

// TestSSOWithHMAC: an SSO token and a signed external id must name the same
// user; the SSO email is kept.
func TestSSOWithHMAC(t *testing.T) {
	_, h, srv := newSSOEnv(t, nil)
	exp := time.Now().Add(time.Hour).Unix()
	srv.answer("alice-token", jsonAnswer(200, map[string]any{"sub": "alice", "aud": "sdk", "exp": exp, "email": "a@example.com", "email_verified": true}))
	sig := func(v string) string { return sign("secret-0123456789abcdef", v) }
	w := h.do(t, hdr(hdrSSOToken, "alice-token", hdrPlatform, "ios", hdrExternalID, "alice", hdrExternalIDSig, sig("alice")))
	if w.Code != 200 || h.seen.Get(hdrIdentitySource) != SourceHMAC || h.seen.Get(hdrVerifiedEmail) != "a@example.com" {
		t.Fatalf("agreeing: %d %v", w.Code, h.seen)
	}
	w = h.do(t, hdr(hdrSSOToken, "alice-token", hdrPlatform, "ios", hdrExternalID, "bob", hdrExternalIDSig, sig("bob")))
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeIdentityMismatch {
		t.Fatalf("disagreeing: %d %s", w.Code, code)
	}
}

func TestSSORefusedWithoutConfig(t *testing.T) {
	a := startTestApp(t, nil, map[string]*Tenant{"plain": {}})
	h := newTokenHandler(a, "plain", false)
	w := h.do(t, hdr(hdrSSOToken, "x"))
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeInvalidToken {
		t.Fatalf("%d %s", w.Code, code)
	}
}

// BenchmarkSSOCacheHit: an SSO token already checked (no call).
func BenchmarkSSOCacheHit(b *testing.B) {
	srv := startTokenInfoServer(b)
	srv.answer("tok", jsonAnswer(200, map[string]any{"sub": "alice", "aud": "sdk", "exp": time.Now().Add(time.Hour).Unix()}))
	a := startTestApp(b, nil, map[string]*Tenant{"acme": {SSO: &SSO{TokenInfoURL: srv.URL, Audience: []string{"sdk"}}}})
	tn := a.Tenants["acme"]
	c := &identity.Credentials{SSOToken: "tok"}
	ctx := context.Background()
	if _, err := tn.id.Identify(ctx, c); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := tn.id.Identify(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}
