package verify

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// introspector is a real RFC 7662 introspection endpoint: it demands the
// client authentication it is set up with, exactly as RFC 7662 §2.1 and
// RFC 6749 §2.3.1 describe, and answers 401 invalid_client otherwise.
// A token it knows is active; any other is {"active": false}.
type introspector struct {
	*httptest.Server
	mu       sync.Mutex
	method   string // AuthBasic, AuthPost or AuthBearer
	id, pass string // the client's id and secret, or the bearer token
	active   map[string]string
	calls    int
	hints    []string
	bad      []string // malformed requests, as the server saw them
	hold     chan struct{}
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func startIntrospector(t testing.TB, method, id, pass string) *introspector {
	s := &introspector{method: method, id: id, pass: pass, active: map[string]string{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *introspector) serve(w http.ResponseWriter, r *http.Request) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for m := s.maxSeen.Load(); n > m && !s.maxSeen.CompareAndSwap(m, n); m = s.maxSeen.Load() {
	}
	s.mu.Lock()
	s.calls++
	hold, method, id, pass := s.hold, s.method, s.id, s.pass
	s.mu.Unlock()
	if hold != nil {
		<-hold
	}
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" ||
		r.URL.RawQuery != "" || r.ParseForm() != nil || len(r.PostForm["token"]) != 1 {
		s.note(fmt.Sprintf("%s %s %s", r.Method, r.URL, r.Header.Get("Content-Type")))
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_request"}`))
		return
	}
	if !clientAuthenticated(r, method, id, pass) {
		w.Header().Set("WWW-Authenticate", `Basic realm="introspection"`)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client","error_description":"client authentication failed"}`))
		return
	}
	s.mu.Lock()
	s.hints = append(s.hints, r.PostForm.Get("token_type_hint"))
	sub, ok := s.active[r.PostForm.Get("token")]
	s.mu.Unlock()
	if !ok {
		_, _ = w.Write([]byte(`{"active":false}`))
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "sub": sub, "aud": "sdk",
		"exp": time.Now().Add(time.Hour).Unix(), "client_id": "the-sdk"})
}

// clientAuthenticated checks the request's client authentication: one
// method only (RFC 6749 §2.3), Basic with the id and the secret
// form-urlencoded before base64 (§2.3.1), or both in the body, or a bearer
// token.
func clientAuthenticated(r *http.Request, method, id, pass string) bool {
	authz := r.Header.Get("Authorization")
	_, inBody := r.PostForm["client_secret"]
	switch method {
	case AuthBasic:
		b64, ok := strings.CutPrefix(authz, "Basic ")
		raw, err := base64.StdEncoding.DecodeString(b64)
		if !ok || err != nil || inBody {
			return false
		}
		eid, esecret, ok := strings.Cut(string(raw), ":")
		gotID, err1 := url.QueryUnescape(eid)
		gotSecret, err2 := url.QueryUnescape(esecret)
		return ok && err1 == nil && err2 == nil && gotID == id && gotSecret == pass
	case AuthPost:
		return authz == "" && r.PostForm.Get("client_id") == id && r.PostForm.Get("client_secret") == pass &&
			len(r.PostForm["client_secret"]) == 1
	case AuthBearer:
		return authz == "Bearer "+pass && !inBody
	}
	return false
}

func (s *introspector) note(bad string) { s.mu.Lock(); s.bad = append(s.bad, bad); s.mu.Unlock() }

func (s *introspector) know(token, sub string) { s.mu.Lock(); s.active[token] = sub; s.mu.Unlock() }

func (s *introspector) callCount() int { s.mu.Lock(); defer s.mu.Unlock(); return s.calls }

func (s *introspector) accept(pass string) { s.mu.Lock(); s.pass = pass; s.mu.Unlock() }

// newIntrospection is a checker of s's URL with auth.
func newIntrospection(t testing.TB, url string, auth ClientAuth, mutate func(*TokenInfoConfig)) *TokenInfo {
	t.Helper()
	cfg := TokenInfoConfig{
		URL: url, TokenParam: "token", Audience: []string{"sdk"}, Timeout: 2 * time.Second, Leeway: 30 * time.Second,
		Client: &http.Client{Timeout: 2 * time.Second}, CacheSize: 1000, CacheTTL: time.Hour, Now: time.Now, Auth: auth,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	v, err := NewTokenInfo(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The secret has a colon, a slash and a plus: sent without the RFC 6749
// §2.3.1 encoding, the server reads another secret.
const (
	testClientID     = "idlink gateway"
	testClientSecret = "a:b/c+d"
)

// TestIntrospectionClientAuth: with each method, the right credentials
// verify an active token, an inactive token stays the user's refusal,
// and wrong credentials are the provider refusing idlink
// (ErrClientRefused), never a verdict on the token.
func TestIntrospectionClientAuth(t *testing.T) {
	for _, c := range []struct {
		method        string
		right, wrong  ClientAuth
		serverID, key string
	}{
		{AuthBasic, ClientAuth{Method: AuthBasic, ClientID: testClientID, ClientSecret: testClientSecret},
			ClientAuth{Method: AuthBasic, ClientID: testClientID, ClientSecret: "a:b/c d"}, testClientID, testClientSecret},
		{AuthPost, ClientAuth{Method: AuthPost, ClientID: testClientID, ClientSecret: testClientSecret},
			ClientAuth{Method: AuthBasic, ClientID: testClientID, ClientSecret: testClientSecret}, testClientID, testClientSecret},
		{AuthBearer, ClientAuth{Method: AuthBearer, BearerToken: "rs-token.0123"},
			ClientAuth{Method: AuthBearer, BearerToken: "rs-token.9999"}, "", "rs-token.0123"},
	} {
		t.Run(c.method, func(t *testing.T) {
			srv := startIntrospector(t, c.method, c.serverID, c.key)
			srv.know("tok-alice", "alice")
			var reported []error
			v := newIntrospection(t, srv.URL, c.right, func(cfg *TokenInfoConfig) { cfg.TokenTypeHint = "access_token" })
			if u, err := v.Check(context.Background(), "tok-alice"); err != nil || u.ExternalID != "alice" {
				t.Fatalf("right credentials: %+v %v", u, err)
			}
			if _, err := v.Check(context.Background(), "tok-unknown"); !isRefusal(err) {
				t.Fatalf("inactive token: %v, want a refusal", err)
			}
			wrong := newIntrospection(t, srv.URL, c.wrong, func(cfg *TokenInfoConfig) {
				cfg.Unavailable = func(err error) { reported = append(reported, err) }
			})
			_, err := wrong.Check(context.Background(), "tok-alice")
			if isRefusal(err) || !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrClientRefused) {
				t.Fatalf("wrong credentials: %v, want ErrClientRefused", err)
			}
			if len(reported) != 1 || !strings.Contains(reported[0].Error(), "401 invalid_client") {
				t.Fatalf("reported %v", reported)
			}
			for _, e := range append(reported, err) {
				for _, secret := range []string{testClientSecret, "rs-token", "tok-alice", url.QueryEscape(testClientSecret)} {
					if strings.Contains(e.Error(), secret) {
						t.Fatalf("the error holds a credential or the token: %v", e)
					}
				}
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if len(srv.bad) != 0 || len(srv.hints) != 2 || srv.hints[0] != "access_token" {
				t.Fatalf("malformed %v, hints %q", srv.bad, srv.hints)
			}
		})
	}
}

// TestIntrospectionServerIsStrict: the test server refuses the Basic
// header of a client that skips the form-urlencoding (Go's SetBasicAuth),
// so TestIntrospectionClientAuth's pass proves the encoding.
func TestIntrospectionServerIsStrict(t *testing.T) {
	srv := startIntrospector(t, AuthBasic, testClientID, testClientSecret)
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("token=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(testClientID, testClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a Basic header without the encoding: %d, want 401", resp.StatusCode)
	}
}

// TestIntrospectionClientRefusalNotCached: a refusal of idlink's
// credentials is asked again at every check, and the first check after
// the provider accepts them again verifies.
func TestIntrospectionClientRefusalNotCached(t *testing.T) {
	srv := startIntrospector(t, AuthBasic, testClientID, "rotated-secret")
	srv.know("tok-alice", "alice")
	v := newIntrospection(t, srv.URL, ClientAuth{Method: AuthBasic, ClientID: testClientID, ClientSecret: testClientSecret}, nil)
	for i := range 3 {
		if _, err := v.Check(context.Background(), "tok-alice"); !errors.Is(err, ErrClientRefused) {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if n := srv.callCount(); n != 3 {
		t.Fatalf("%d calls for 3 checks: the refusal of idlink's credentials was cached", n)
	}
	srv.accept(testClientSecret)
	if u, err := v.Check(context.Background(), "tok-alice"); err != nil || u.ExternalID != "alice" {
		t.Fatalf("after the provider accepts the credentials: %+v %v", u, err)
	}
}

// TestTokenInfoAsksForClientAuth: without client authentication, a
// token-info URL's 4xx is the user's refusal, unless the answer asks for
// client authentication.
func TestTokenInfoAsksForClientAuth(t *testing.T) {
	srv := startInfoServer(t)
	v := newChecker(t, srv.URL, time.Now, time.Second)
	basic := func(w http.ResponseWriter) {
		w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
		w.WriteHeader(401)
	}
	oauth := func(status int, code string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.WriteHeader(status)
			_, _ = fmt.Fprintf(w, `{"error":%q}`, code)
		}
	}
	for _, c := range []struct {
		name   string
		answer func(w http.ResponseWriter)
		client bool // ErrClientRefused, else a refusal
	}{
		{"401 invalid_client", oauth(401, "invalid_client"), true},
		{"400 unauthorized_client", oauth(400, "unauthorized_client"), true},
		{"401 request_unauthorized", oauth(401, "request_unauthorized"), true},
		{"401 Basic challenge", basic, true},
		{"401 invalid_token", oauth(401, "invalid_token"), false},
		{"400 invalid_token (Google)", oauth(400, "invalid_token"), false},
		{"403 empty", func(w http.ResponseWriter) { w.WriteHeader(403) }, false},
	} {
		token := "t-" + strings.ReplaceAll(c.name, " ", "-")
		srv.set(token, c.answer)
		_, err := v.Check(context.Background(), token)
		if got := errors.Is(err, ErrClientRefused); got != c.client || got == isRefusal(err) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// TestIntrospectionNon200IsNotAVerdict: with client authentication, no
// non-200 answer refuses the token (RFC 7662 §2.2: an invalid token is a
// 200 with active false), so none is cached as a refusal.
func TestIntrospectionNon200IsNotAVerdict(t *testing.T) {
	srv := startInfoServer(t)
	v := newIntrospection(t, srv.URL, ClientAuth{Method: AuthBearer, BearerToken: "b"}, nil)
	for _, status := range []int{302, 400, 403, 404, 405} {
		token := fmt.Sprint("t-", status)
		srv.answer(token, status, `{}`)
		for range 2 {
			if _, err := v.Check(context.Background(), token); isRefusal(err) || !errors.Is(err, ErrUnavailable) {
				t.Fatalf("%d: %v", status, err)
			}
		}
		if n := srv.callsFor(token); n != 2 {
			t.Fatalf("%d: %d calls for 2 checks", status, n)
		}
	}
}

// TestTokenInfoMaxConcurrent: with max_concurrent calls held by the
// provider, every further check of another token fails at once with
// ErrBusy and the provider never sees more than max_concurrent calls.
func TestTokenInfoMaxConcurrent(t *testing.T) {
	const limit, extra = 4, 40
	srv := startIntrospector(t, AuthBearer, "", "b")
	srv.hold = make(chan struct{})
	var busy atomic.Int32
	v := newIntrospection(t, srv.URL, ClientAuth{Method: AuthBearer, BearerToken: "b"}, func(cfg *TokenInfoConfig) {
		cfg.MaxConcurrent = limit
		cfg.Observe = func(r string) {
			if r == "busy" {
				busy.Add(1)
			}
		}
	})
	var held sync.WaitGroup
	for i := range limit {
		srv.know(fmt.Sprint("held-", i), "u")
		held.Add(1)
		go func() {
			defer held.Done()
			if _, err := v.Check(context.Background(), fmt.Sprint("held-", i)); err != nil {
				t.Errorf("held check: %v", err)
			}
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.inFlight.Load() != limit && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if n := srv.inFlight.Load(); n != limit {
		t.Fatalf("%d calls in flight, want %d", n, limit)
	}
	var flood sync.WaitGroup
	for i := range extra {
		flood.Add(1)
		go func() {
			defer flood.Done()
			start := time.Now()
			_, err := v.Check(context.Background(), fmt.Sprint("random-", i))
			if d := time.Since(start); d > 2*time.Second { // the held calls never end by themselves: any wait would be for ever
				t.Errorf("a check beyond the bound waited %v", d)
			}
			if !errors.Is(err, ErrBusy) || !errors.Is(err, ErrUnavailable) {
				t.Errorf("check beyond the bound: %v, want ErrBusy", err)
			}
		}()
	}
	flood.Wait()
	close(srv.hold)
	held.Wait()
	if m := srv.maxSeen.Load(); m > limit {
		t.Fatalf("the provider saw %d concurrent calls, bound %d", m, limit)
	}
	if b := busy.Load(); b != extra {
		t.Fatalf("%d busy results, want %d", b, extra)
	}
	// The slots came back, and busy was not cached.
	srv.know("random-0", "u0")
	if u, err := v.Check(context.Background(), "random-0"); err != nil || u.ExternalID != "u0" {
		t.Fatalf("after the calls ended: %+v %v", u, err)
	}
}

// TestClientAuthCheck: the combinations a config may hold.
func TestClientAuthCheck(t *testing.T) {
	for _, c := range []struct {
		auth ClientAuth
		want string // "" valid, else part of the error
	}{
		{ClientAuth{Method: AuthNone}, ""},
		{ClientAuth{Method: AuthBasic, ClientID: "i", ClientSecret: "s"}, ""},
		{ClientAuth{Method: AuthPost, ClientID: "i", ClientSecret: "s"}, ""},
		{ClientAuth{Method: AuthBearer, BearerToken: "t"}, ""},
		{ClientAuth{Method: AuthBasic, ClientSecret: "s"}, "needs client_id"},
		{ClientAuth{Method: AuthPost, ClientID: "i"}, "needs client_secret"},
		{ClientAuth{Method: AuthBasic, ClientID: "i", ClientSecret: "s", BearerToken: "t"}, "bearer_token is sent only"},
		{ClientAuth{Method: AuthBearer}, "needs bearer_token"},
		{ClientAuth{Method: AuthBearer, BearerToken: "t", ClientID: "i"}, "remove client_id"},
		{ClientAuth{Method: AuthBearer, BearerToken: "t\r\nX: y"}, "printable ASCII"},
		{ClientAuth{Method: AuthNone, ClientSecret: "s"}, "sends no credential"},
		{ClientAuth{Method: "private_key_jwt"}, "want client_secret_basic"},
	} {
		err := c.auth.Check()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.auth, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), `"s"`) || strings.Contains(err.Error(), "t\r")) {
			t.Errorf("the error holds a value: %v", err)
		}
	}
}

// TestIntrospectionAnswerShapes: what an RFC 7662 answer must say for its
// token to verify. active is required (a tokeninfo endpoint without
// client authentication may leave it out, as Google's does); aud, when
// present, must hold an audience; an answer without aud (optional in RFC
// 7662; Hydra sends it empty) is judged by its client_id instead, and a
// client_id never makes up for a wrong aud.
func TestIntrospectionAnswerShapes(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	var answer string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(answer))
	}))
	t.Cleanup(srv.Close)
	auth := ClientAuth{Method: AuthBasic, ClientID: testClientID, ClientSecret: testClientSecret}
	for _, c := range []struct {
		answer        string
		introspection bool // with client authentication
		valid         bool
	}{
		{`{"active":true,"sub":"a","aud":"sdk","exp":%d}`, true, true},
		{`{"active":true,"sub":"a","exp":%d,"client_id":"sdk"}`, true, true},
		{`{"active":true,"sub":"a","aud":[],"exp":%d,"client_id":"sdk"}`, true, true},
		{`{"active":true,"sub":"a","exp":%d,"client_id":"another-app"}`, true, false},
		{`{"active":true,"sub":"a","exp":%d}`, true, false},
		{`{"active":true,"sub":"a","aud":"other","exp":%d,"client_id":"sdk"}`, true, false},
		{`{"sub":"a","aud":"sdk","exp":%d}`, true, false},
		{`{"sub":"a","aud":"sdk","exp":%d}`, false, true},                      // tokeninfo style
		{`{"active":true,"sub":"a","exp":%d,"client_id":"sdk"}`, false, false}, // tokeninfo: aud required
	} {
		answer = fmt.Sprintf(c.answer, exp)
		a := ClientAuth{}
		if c.introspection {
			a = auth
		}
		v := newIntrospection(t, srv.URL, a, func(cfg *TokenInfoConfig) { cfg.CacheTTL = 0; cfg.CacheSize = 1 })
		u, err := v.Check(context.Background(), fmt.Sprintf("tok-%d", time.Now().UnixNano()))
		if c.valid != (err == nil && u.ExternalID == "a") {
			t.Errorf("%s (introspection %v): %+v %v, want valid %v", answer, c.introspection, u, err, c.valid)
		}
		if !c.valid && !isRefusal(err) {
			t.Errorf("%s: %v, want a refusal (the user's token, not an outage)", answer, err)
		}
	}
}
