package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// stores are the identity stores the domain tests run against: every
// selected real deployment (standalone, Cluster, Sentinel) and the
// embedded store.
func forEachStore(t *testing.T, f func(t *testing.T, s *store.Store)) {
	t.Run("embedded", func(t *testing.T) { f(t, embeddedStore(t)) })
	if !testenv.RequireRedis(t) {
		return
	}
	for _, name := range testenv.DeploymentNames(t) {
		if name == testenv.DeployEmbedded {
			continue
		}
		t.Run(name, func(t *testing.T) {
			s, err := store.Open(testenv.UseDeployment(t, name).URL, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			f(t, s)
		})
	}
}

func embeddedStore(tb testing.TB) *store.Store {
	s, err := store.OpenEmbedded(time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

const testSecret = "a-test-secret-of-enough-length"

// newDomain is a tenant "acme" with one enforce platform "ios", sessions
// of max 1 and the embedded defaults, changed by mut.
func newDomain(tb testing.TB, st Store, mut func(*Config)) *Domain {
	cfg := Config{
		Tenant: "acme", Store: st, Now: time.Now,
		Platforms:        map[string]*Platform{"ios": {Mode: ModeEnforce, Keys: []*verify.HMACKey{verify.NewHMACKey([]byte(testSecret))}}},
		DefaultPlatform:  "ios",
		SignedAttributes: SignedAttributesBound,
		CacheSize:        1000, CacheTTL: time.Minute,
		Sessions: store.SessionPolicy{Max: 1, Idle: time.Hour, Channel: store.InvalidationChannel},
		Expiry:   store.Expiry{TTL: 24 * time.Hour},
	}
	if mut != nil {
		mut(&cfg)
	}
	return New(cfg)
}

func sign(msg string) string {
	var sum [32]byte
	verify.NewHMACKey([]byte(testSecret)).Sum(msg, &sum)
	return fmt.Sprintf("%x", sum[:])
}

// ownTokens is a verifier and issuer of the tenant's own tokens.
func ownTokens(tb testing.TB) *verify.Tokens {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	ok := func(kind byte) func(string) bool {
		return func(s string) bool { _, err := store.ParseID(kind, s); return err == nil }
	}
	v, err := verify.NewTokens(verify.TokensConfig{
		Static:    map[string]verify.Key{"own": {KID: "own", Alg: "ES256", Pub: k.Public(), Own: true}},
		Signers:   []verify.SignKey{{KID: "own", Alg: "ES256", Signer: k}},
		OwnIssuer: "idlink/acme", OwnAudience: []string{"acme"}, TTL: 15 * time.Minute,
		Leeway: time.Second, MaxLifetime: 24 * time.Hour, UnknownKIDTTL: time.Minute, UserClaim: "sub",
		UserID: ok(store.KindUser), SessionID: ok(store.KindSession),
		CacheSize: 100, CacheTTL: time.Minute, Now: time.Now,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// tokenInfo is an SSO checker against an httptest token-info endpoint
// that knows one token, "sso-tok", for "bob".
func tokenInfo(tb testing.TB) *verify.TokenInfo {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.FormValue("token") != "sso-tok" {
			_ = json.NewEncoder(w).Encode(map[string]any{"active": false})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "sub": "bob", "aud": "sdk", "exp": time.Now().Add(time.Hour).Unix()})
	}))
	tb.Cleanup(srv.Close)
	v, err := verify.NewTokenInfo(verify.TokenInfoConfig{
		URL: srv.URL, TokenParam: "token", Audience: []string{"sdk"}, Timeout: time.Second, Leeway: time.Second,
		Client: srv.Client(), CacheSize: 100, CacheTTL: time.Minute, Now: time.Now,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func refusal(err error) string {
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// TestWarmPathAllocations: the warm lookups of a request allocate no more
// than they do today, counted exactly (wall-clock ratios are too noisy on
// a shared machine to guard against such a regression). A closure or an
// errors.As target made before a cache hit is one more allocation on every
// request; so is a claim returned by pointer (credentialCheck returns
// values).
func TestWarmPathAllocations(t *testing.T) {
	if testenv.RaceEnabled {
		t.Skip("the race detector allocates: the ceilings are for normal builds (the README test command runs them)")
	}
	ctx := context.Background()
	d := newDomain(t, embeddedStore(t), func(c *Config) { c.Tokens, c.SSO = ownTokens(t), tokenInfo(t) })
	userID, err := d.users.resolve(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	installID, _, err := d.CreateInstall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := d.tokens.issue(userID, "", "alice", nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	tokCreds := &Credentials{ContactToken: tok}
	ssoCreds := &Credentials{SSOToken: "sso-tok"}
	hmacCreds := &Credentials{Platform: "ios", ExternalID: "alice", ExternalIDSig: sign("alice")}
	login, err := d.Login(ctx, Credentials{Platform: "ios", ExternalID: "bob", ExternalIDSig: sign("bob")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sessCreds := &Credentials{SessionID: login.SessionID}
	for _, c := range []struct {
		name string
		max  float64
		run  func() error
	}{
		{"resolve", 0, func() error { _, err := d.users.resolve(ctx, "alice"); return err }},
		{"install user", 0, func() error { _, err := d.installs.user(ctx, installID); return err }},
		{"checkContactToken", 0, func() error { _, err := d.checkContactToken(ctx, tokCreds); return err }},
		{"checkSSO", 1, func() error { _, err := d.checkSSO(ctx, ssoCreds); return err }},
		{"checkHMAC", 0, func() error { _, err := d.checkHMAC(ctx, hmacCreds); return err }}, // the MAC state and its buffers are pooled
		{"checkSession", 0, func() error { _, err := d.checkSession(ctx, sessCreds); return err }},
	} {
		if err := c.run(); err != nil { // warm it
			t.Fatalf("%s: %v", c.name, err)
		}
		var runErr error
		n := testing.AllocsPerRun(200, func() {
			if err := c.run(); err != nil {
				runErr = err
			}
		})
		if runErr != nil {
			t.Fatalf("%s: %v", c.name, runErr)
		}
		if n > c.max {
			t.Errorf("%s allocates %.0f times when warm, at most %.0f expected", c.name, n, c.max)
		}
	}
}

// slowInstalls holds InstallUser until told, to race a lookup with an
// invalidation.
type slowInstalls struct {
	Store
	reading, moved chan struct{}
}

func (s *slowInstalls) InstallUser(ctx context.Context, k *store.Keys, id string, e store.Expiry) (string, time.Duration, error) {
	u, left, err := s.Store.InstallUser(ctx, k, id, e)
	if s.reading != nil {
		close(s.reading)
		<-s.moved
	}
	return u, left, err
}

// TestInstallCacheInvalidation: an install's cached user is dropped by an
// invalidation message and by a flush, and a lookup that started before a
// drop does not store what it read.
func TestInstallCacheInvalidation(t *testing.T) {
	ctx := context.Background()
	st := &slowInstalls{Store: embeddedStore(t)}
	d := newDomain(t, st, nil)
	i, a, err := d.CreateInstall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := d.installs.user(ctx, i); err != nil || u != a {
		t.Fatalf("install user = %q, %v", u, err)
	}
	if u, ok := d.installs.users.Get(i); !ok || u != a {
		t.Fatal("not cached")
	}
	d.Invalidate(InvalidateInstall, i)
	if _, ok := d.installs.users.Get(i); ok {
		t.Fatal("invalidation did not drop the entry")
	}
	_, _ = d.installs.user(ctx, i)
	d.Flush()
	if d.installs.users.Len() != 0 {
		t.Fatal("flush did not purge")
	}
	// A drop while a lookup is in flight: the lookup answers what it
	// read, but does not cache it (it may predate the move).
	st.reading, st.moved = make(chan struct{}), make(chan struct{})
	done := make(chan string)
	go func() {
		u, _ := d.installs.user(ctx, i)
		done <- u
	}()
	<-st.reading
	d.Invalidate(InvalidateInstall, i) // as the link's invalidation message would
	close(st.moved)
	if u := <-done; u != a {
		t.Fatalf("in-flight lookup answered %q", u)
	}
	if _, ok := d.installs.users.Get(i); ok {
		t.Fatal("a lookup that raced an invalidation cached its answer")
	}
	st.reading = nil
	for _, bad := range []string{"", "x", a, "i_00" + strings.Repeat("A", 24)} {
		if _, err := d.installs.user(ctx, bad); !errors.Is(err, store.ErrInstallNotFound) {
			t.Errorf("install user of %q = %v", bad, err)
		}
	}
}

// crashingLinks makes the next link fail as a crash or a timeout would:
// "before" without reaching the store, "after" once the store finished it
// (the answer was lost). The crash points between the link's own steps
// are the store's tests (store/links_test.go).
type crashingLinks struct {
	Store
	mu    sync.Mutex
	crash string
}

func (s *crashingLinks) Link(ctx context.Context, k *store.Keys, req store.LinkRequest, o store.LinkOptions) (store.LinkResult, error) {
	s.mu.Lock()
	crash := s.crash
	s.crash = ""
	s.mu.Unlock()
	if crash == "before" {
		return store.LinkResult{}, fmt.Errorf("%w: injected before the link", store.ErrUnavailable)
	}
	res, err := s.Store.Link(ctx, k, req, o)
	if crash == "after" && err == nil {
		return store.LinkResult{}, fmt.Errorf("%w: injected after the link", store.ErrUnavailable)
	}
	return res, err
}

// TestLinkInterruptedAndRetried: a link whose call fails before it reached
// the store, or after the store finished it (the answer lost), fails as
// unavailable, and its retry answers the link: the install ends with the
// external id's user and its anonymous user is merged into it, on every
// deployment.
func TestLinkInterruptedAndRetried(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		st := &crashingLinks{Store: s}
		d := newDomain(t, st, nil)
		ext := "alice-" + store.NewID(store.KindUser, 0)
		owner, err := d.users.resolve(ctx, ext)
		if err != nil {
			t.Fatal(err)
		}
		for _, crash := range []string{"before", "after"} {
			i, anon, err := d.CreateInstall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.mu.Lock()
			st.crash = crash
			st.mu.Unlock()
			if _, err := d.Link(ctx, i, ext); !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("interrupted %s: %v", crash, err)
			}
			res, err := d.Link(ctx, i, ext)
			if err != nil || res.UserID != owner || res.MergedFrom != anon || res.Created {
				t.Fatalf("retry after a crash %s the link: %+v %v", crash, res, err)
			}
			id, err := d.Identify(ctx, &Credentials{InstallID: i})
			if err != nil || id.UserID != owner {
				t.Fatalf("after the retry the install names %q (%v), want %q", id.UserID, err, owner)
			}
		}
	})
}

// TestSessionTouchInterval: activity is written every tenth of the idle
// timeout, at most every maxTouchEvery, and every maxTouchEvery without
// an idle timeout.
func TestSessionTouchInterval(t *testing.T) {
	st := embeddedStore(t)
	for _, c := range []struct {
		idle time.Duration
		want time.Duration
	}{{30 * time.Minute, 3 * time.Minute}, {time.Hour, maxTouchEvery}, {72 * time.Hour, maxTouchEvery}, {0, maxTouchEvery}, {10 * time.Second, time.Second}} {
		d := newDomain(t, st, func(cfg *Config) { cfg.Sessions.Idle = c.idle })
		if d.sessions.touchEvery != c.want.Milliseconds() {
			t.Errorf("idle %v: touch every %dms, want %v", c.idle, d.sessions.touchEvery, c.want)
		}
	}
}

// TestVerifierRefusalsAreAnswers: a refused credential is an
// *apierr.Error with its code, an unknown platform is judged by the
// strictest mode, and credentials naming different users disagree.
func TestVerifierRefusalsAreAnswers(t *testing.T) {
	ctx := context.Background()
	d := newDomain(t, embeddedStore(t), func(c *Config) {
		c.Platforms["web"] = &Platform{Mode: ModeReport, Keys: c.Platforms["ios"].Keys}
		c.Tokens = ownTokens(t)
	})
	for _, c := range []struct {
		name  string
		creds Credentials
		code  string
	}{
		{"bad signature", Credentials{ExternalID: "alice", ExternalIDSig: sign("bob")}, apierr.CodeInvalidSignature},
		{"unknown platform is enforced", Credentials{Platform: "nope", ExternalID: "alice"}, apierr.CodeInvalidSignature},
		{"garbage token", Credentials{Bearer: "not.a.jwt"}, apierr.CodeInvalidToken},
		{"unknown session", Credentials{SessionID: "s_nope"}, apierr.CodeUnknownSession},
		{"unknown install", Credentials{InstallID: "i_nope"}, apierr.CodeUnknownInstall},
		{"two users", Credentials{ExternalID: "alice", ExternalIDSig: sign("alice"), SSOToken: ""}, ""},
	} {
		_, err := d.Identify(ctx, &c.creds)
		if got := refusal(err); got != c.code || c.code == "" && err != nil {
			t.Errorf("%s: %v, want %q", c.name, err, c.code)
		}
	}
	// Report mode passes an unsigned id unverified; with a verified id of
	// another user beside it, the two disagree.
	id, err := d.Identify(ctx, &Credentials{Platform: "web", ExternalID: "carol"})
	if err != nil || id.Verified || id.Source != SourceHMAC {
		t.Fatalf("report mode: %+v %v", id, err)
	}
	alice, _ := d.users.resolve(ctx, "alice")
	tok, _, err := d.tokens.issue(alice, "", "alice", nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Identify(ctx, &Credentials{Bearer: tok, ExternalID: "bob", ExternalIDSig: sign("bob")}); refusal(err) != apierr.CodeIdentityMismatch {
		t.Fatalf("token of alice with bob's signed id: %v", err)
	}
}
