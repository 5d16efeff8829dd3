package verify

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The token-info checker alone: a real HTTP server, a fake clock, no Caddy
// and no Redis.

// infoServer is a real token-info endpoint answering each token as its
// test says; a token without an answer is refused (401).
type infoServer struct {
	*httptest.Server
	mu      sync.Mutex
	answers map[string]func(w http.ResponseWriter)
	calls   map[string]int
}

func startInfoServer(t testing.TB) *infoServer {
	s := &infoServer{answers: map[string]func(http.ResponseWriter){}, calls: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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

func (s *infoServer) answer(token string, status int, body any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answers[token] = func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if b, ok := body.(string); ok {
			_, _ = w.Write([]byte(b))
			return
		}
		_ = json.NewEncoder(w).Encode(body)
	}
}

func (s *infoServer) set(token string, f func(w http.ResponseWriter)) {
	s.mu.Lock()
	s.answers[token] = f
	s.mu.Unlock()
}

func (s *infoServer) callsFor(token string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[token]
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newChecker(t testing.TB, url string, now func() time.Time, timeout time.Duration) *TokenInfo {
	t.Helper()
	v, err := NewTokenInfo(TokenInfoConfig{
		URL: url, TokenParam: "token", Audience: []string{"sdk"}, Timeout: timeout, Leeway: 30 * time.Second,
		Client:    &http.Client{Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		CacheSize: 100, CacheTTL: time.Hour, Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func isRefusal(err error) bool { var r *Refusal; return errors.As(err, &r) }

// TestTokenInfoOutcomes: what a token-info answer makes of a token.
func TestTokenInfoOutcomes(t *testing.T) {
	srv := startInfoServer(t)
	v := newChecker(t, srv.URL, time.Now, 300*time.Millisecond)
	now := time.Now()
	exp := now.Add(10 * time.Minute).Unix()
	for _, c := range []struct {
		name      string
		status    int
		body      any
		want      string // "valid", "refused", "unavailable"
		ext, mail string
	}{
		{"valid", 200, map[string]any{"sub": "alice", "aud": "sdk", "exp": exp, "email": "a@x.example", "email_verified": true}, "valid", "alice", "a@x.example"},
		{"email not verified", 200, map[string]any{"sub": "alice", "aud": "sdk", "exp": exp, "email": "a@x.example"}, "valid", "alice", ""},
		{"strings", 200, map[string]any{"sub": "g", "aud": []string{"x", "sdk"}, "exp": "99999999999", "email_verified": "true", "email": "g@x.example"}, "valid", "g", "g@x.example"},
		{"wrong aud", 200, map[string]any{"sub": "a", "aud": "other", "exp": exp}, "refused", "", ""},
		{"expired", 200, map[string]any{"sub": "a", "aud": "sdk", "exp": now.Add(-time.Hour).Unix()}, "refused", "", ""},
		{"iat future", 200, map[string]any{"sub": "a", "aud": "sdk", "exp": exp, "iat": now.Add(time.Hour).Unix()}, "refused", "", ""},
		{"sub with CRLF", 200, map[string]any{"sub": "a\r\nX: y", "aud": "sdk", "exp": exp}, "refused", "", ""},
		{"inactive", 200, map[string]any{"sub": "a", "aud": "sdk", "exp": exp, "active": false}, "refused", "", ""},
		{"403", 403, `{}`, "refused", "", ""},
		{"500", 500, `{}`, "unavailable", "", ""},
		{"429", 429, `{}`, "unavailable", "", ""},
		{"not json", 200, `<html>`, "unavailable", "", ""},
		{"huge", 200, `{"sub":"` + strings.Repeat("a", 70<<10) + `"}`, "unavailable", "", ""},
	} {
		token := "opaque-" + strings.ReplaceAll(c.name, " ", "-")
		srv.answer(token, c.status, c.body)
		u, err := v.Check(context.Background(), token)
		got := "valid"
		switch {
		case isRefusal(err):
			got = "refused"
		case errors.Is(err, ErrUnavailable):
			got = "unavailable"
		case err != nil:
			t.Fatalf("%s: unexpected error %v", c.name, err)
		}
		if got != c.want || u.ExternalID != c.ext || u.Email != c.mail {
			t.Errorf("%s: %s %+v (%v), want %s %q %q", c.name, got, u, err, c.want, c.ext, c.mail)
		}
		if err != nil && strings.Contains(err.Error(), token) {
			t.Errorf("%s: the error names the token: %v", c.name, err)
		}
	}
}

// TestTokenInfoCache: valid answers are cached until their exp, refusals
// for SSOFailureTTL, outages not at all.
func TestTokenInfoCache(t *testing.T) {
	srv := startInfoServer(t)
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	v := newChecker(t, srv.URL, c.now, time.Second)
	srv.answer("good", 200, map[string]any{"sub": "alice", "aud": "sdk", "exp": c.now().Add(2 * time.Minute).Unix()})
	srv.answer("down", 503, `{}`)
	ctx := context.Background()
	for range 3 {
		if _, err := v.Check(ctx, "good"); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Check(ctx, "refused"); !isRefusal(err) {
			t.Fatal(err)
		}
		if _, err := v.Check(ctx, "down"); !errors.Is(err, ErrUnavailable) {
			t.Fatal(err)
		}
	}
	if g, r, d := srv.callsFor("good"), srv.callsFor("refused"), srv.callsFor("down"); g != 1 || r != 1 || d != 3 {
		t.Fatalf("calls good=%d refused=%d down=%d; want 1, 1 (cached) and 3 (outages are not cached)", g, r, d)
	}
	c.add(SSOFailureTTL + time.Second)
	_, _ = v.Check(ctx, "refused")
	if r := srv.callsFor("refused"); r != 2 {
		t.Fatalf("refused asked %d times after the failure TTL", r)
	}
	// Past exp and the leeway: asked again, and the answer is expired.
	c.add(3 * time.Minute)
	if _, err := v.Check(ctx, "good"); !isRefusal(err) || srv.callsFor("good") != 2 {
		t.Fatalf("after exp: %v, %d calls", err, srv.callsFor("good"))
	}
}

// TestTokenInfoConcurrentLookupsCollapse: concurrent checks of one token
// make one call (the answer is an outage, which is not cached, so only
// collapsing can explain a single call).
func TestTokenInfoConcurrentLookupsCollapse(t *testing.T) {
	srv := startInfoServer(t)
	v := newChecker(t, srv.URL, time.Now, 5*time.Second)
	release := make(chan struct{})
	srv.set("slow", func(w http.ResponseWriter) {
		<-release
		w.WriteHeader(500)
	})
	const n = 20
	var done sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		done.Add(1)
		go func() {
			defer done.Done()
			_, err := v.Check(context.Background(), "slow")
			errs <- err
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.callsFor("slow") != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let every goroutine join the call in flight
	close(release)
	done.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("answer %v", err)
		}
	}
	if c := srv.callsFor("slow"); c != 1 {
		t.Fatalf("%d concurrent checks made %d calls, want 1", n, c)
	}
}

// FuzzTokenInfo: any token-info answer is either refused or yields a usable
// external id for the configured audience, never a panic.
func FuzzTokenInfo(f *testing.F) {
	f.Add(`{"sub":"a","aud":"sdk","exp":99999999999}`)
	f.Add(`{"sub":"a","aud":["sdk"],"exp":"99999999999","iat":"1","email_verified":"true","email":"a@b"}`)
	f.Add(`{"sub":"a\u0000","aud":"sdk","exp":1e300}`)
	f.Add(`{"aud":{"x":1}}`)
	f.Add(`[]`)
	v := newChecker(f, "http://127.0.0.1:1/", time.Now, time.Second)
	f.Fuzz(func(t *testing.T, body string) {
		var info tokenInfo
		if json.Unmarshal([]byte(body), &info) != nil {
			return
		}
		o := v.judge(&info)
		if o.refused != nil {
			if !isRefusal(o.refused) {
				t.Fatalf("refusal %v", o.refused)
			}
			return
		}
		if !HeaderValue(o.user.ExternalID, MaxExternalIDLen) || !info.Aud.hasAny([]string{"sdk"}) {
			t.Fatalf("accepted %q", body)
		}
		if o.user.Email != "" && !HeaderValue(o.user.Email, MaxEmailLen) {
			t.Fatalf("email %q", o.user.Email)
		}
	})
}
