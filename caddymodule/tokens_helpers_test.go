package caddymodule

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"go.uber.org/zap"
)

// testKey is a key pair for tests, with its kid and algorithm.
type testKey struct {
	kid  string
	alg  string
	priv crypto.Signer
}

var (
	rsaOnce sync.Once
	rsaKeys [3]*rsa.PrivateKey
)

// newTestKey makes a key pair. RSA keys come from a small pool made once,
// since generating them is slow.
func newTestKey(t testing.TB, kid, alg string) testKey {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case "RS256", "PS256":
		rsaOnce.Do(func() {
			for i := range rsaKeys {
				rsaKeys[i], _ = rsa.GenerateKey(rand.Reader, 2048)
			}
		})
		priv = rsaKeys[int(rsaCounter.Add(1))%len(rsaKeys)]
	default:
		t.Fatalf("no test key for %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return testKey{kid: kid, alg: alg, priv: priv}
}

var rsaCounter atomic.Int32

// writePEM writes the key (private or public half) as PEM and returns the path.
func (k testKey) writePEM(t testing.TB, private bool) string {
	t.Helper()
	var block *pem.Block
	if private {
		der, err := x509.MarshalPKCS8PrivateKey(k.priv)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	} else {
		der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PUBLIC KEY", Bytes: der}
	}
	p := filepath.Join(t.TempDir(), k.kid+".pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// jwk is the public JWK of the key.
func (k testKey) jwk(t testing.TB, withAlg bool) jwkset.JWKMarshal {
	t.Helper()
	md := jwkset.JWKMetadataOptions{KID: k.kid, USE: jwkset.UseSig}
	if withAlg {
		md.ALG = jwkset.ALG(k.alg)
	}
	j, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	return j.Marshal()
}

// sign makes a token with the key: the kid header is set unless the claims
// say otherwise through hdr.
func (k testKey) sign(t testing.TB, claims jwt.MapClaims, hdr map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.alg), claims)
	tok.Header["kid"] = k.kid
	for h, v := range hdr {
		if v == nil {
			delete(tok.Header, h)
		} else {
			tok.Header[h] = v
		}
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksServer is a real local HTTP server publishing a JWKS that tests can
// rotate, break and stop.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []jwkset.JWKMarshal
	fetches atomic.Int64
	failing atomic.Bool
}

func startJWKSServer(t testing.TB, keys ...jwkset.JWKMarshal) *jwksServer {
	s := &jwksServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.failing.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		s.mu.Lock()
		body, _ := json.Marshal(jwkset.JWKSMarshal{Keys: s.keys})
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) setKeys(keys ...jwkset.JWKMarshal) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
}

// startTestApp provisions and starts an idlink app with the embedded store
// and the given tenants; now may be nil for the real clock.
func startTestApp(t testing.TB, now func() time.Time, tenants map[string]*Tenant) *App {
	t.Helper()
	a := &App{Tenants: tenants, now: now, logger: zap.NewNop()}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := a.Provision(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := a.Validate(); err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = a.Stop()
		_ = a.Cleanup()
		cancel()
	})
	return a
}

// testHandler is the idlink handler of a tenant in front of a recording
// next handler.
type testHandler struct {
	h    *Handler
	seen http.Header // what reached the next handler (nil if nothing did)
}

func newTokenHandler(a *App, tenant string, forward bool) *testHandler {
	t := a.Tenants[tenant]
	h := &Handler{Tenant: tenant, tenantName: tenant, ForwardCredentials: forward, tenant: t, app: a, logger: zap.NewNop()}
	h.strip = t.strip
	if forward {
		h.strip = t.identityStrip
	}
	return &testHandler{h: h}
}

type recordNext struct{ seen *http.Header }

func (n recordNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	*n.seen = r.Header.Clone()
	w.WriteHeader(http.StatusOK)
	return nil
}

// do serves a GET with the given headers and returns the response.
func (th *testHandler) do(t testing.TB, hdr http.Header) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	for k, v := range hdr {
		r.Header[k] = v
	}
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := httptest.NewRecorder()
	th.seen = nil
	if err := th.h.ServeHTTP(w, r, recordNext{&th.seen}); err != nil {
		t.Fatal(err)
	}
	return w
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = append(h[kv[i]], kv[i+1])
	}
	return h
}

// installUserOf is the user an install points to, as a request with the
// install id alone is identified ("" if refused).
func installUserOf(tn *Tenant, installID string) (string, error) {
	id, err := tn.id.Identify(context.Background(), &identity.Credentials{InstallID: installID})
	return id.UserID, err
}

// resolveExternal is the user of an external id, made on first sight, as a
// verified credential naming it resolves it.
func resolveExternal(tn *Tenant, externalID string) (string, error) {
	u, _, err := tn.app.store.ResolveExternal(context.Background(), tn.id.Keys(), externalID, time.Now())
	return u, err
}
