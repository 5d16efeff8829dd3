package caddymodule

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/store"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "app"
)

// goodClaims are claims every check accepts, for subject sub.
func goodClaims(sub string, now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": testIssuer, "aud": testAudience, "sub": sub,
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"contact_id": "c-" + sub,
	}
}

func with(c jwt.MapClaims, kv ...any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// unsigned builds a token from raw header and claims JSON and a signature.
func unsigned(header, claims string, sig []byte) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims)) + "." + enc.EncodeToString(sig)
}

type catalogueEnv struct {
	app        *App
	h          *testHandler
	srv        *jwksServer
	es, rs, ed testKey
}

func newCatalogueEnv(t *testing.T, refetchMin time.Duration) *catalogueEnv {
	es := newTestKey(t, "es-1", "ES256")
	rs := newTestKey(t, "rs-1", "RS256")
	ed := newTestKey(t, "ed-1", "EdDSA")
	srv := startJWKSServer(t, es.jwk(t, true), rs.jwk(t, false), ed.jwk(t, true))
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			JWKSURL:        srv.URL,
			Issuer:         testIssuer,
			Audience:       []string{testAudience, "other-app"},
			MaxLifetime:    caddy.Duration(time.Hour),
			JWKSRefetchMin: caddy.Duration(refetchMin),
			ClaimHeaders:   []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}},
		},
	}})
	return &catalogueEnv{app: a, h: newTokenHandler(a, "acme", false), srv: srv, es: es, rs: rs, ed: ed}
}

// TestContactTokenAttackCatalogue: every case states the exact answer, and
// nothing reaches the upstream when a token is refused.
func TestContactTokenAttackCatalogue(t *testing.T) {
	env := newCatalogueEnv(t, time.Hour)
	now := time.Now()
	good := goodClaims("alice", now)
	other := newTestKey(t, "es-1", "ES256") // same kid, another key

	rsaPub, _ := x509.MarshalPKIXPublicKey(env.rs.priv.Public())
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	hsWithPub := jwt.NewWithClaims(jwt.SigningMethodHS256, good)
	hsWithPub.Header["kid"] = "rs-1"
	confused, err := hsWithPub.SignedString(rsaPubPEM)
	if err != nil {
		t.Fatal(err)
	}
	goodJSON, _ := json.Marshal(good)
	valid := env.es.sign(t, good, nil)
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(goodJSON), "alice", "admin", 1))) + "." + parts[2]

	cases := []struct {
		name   string
		token  string
		header string // default X-Contact-Token
		status int
		code   string
		reason string // a part of the message
	}{
		{"valid ES256", valid, "", 200, "", ""},
		{"valid RS256 (JWK without alg)", env.rs.sign(t, good, nil), "", 200, "", ""},
		{"valid EdDSA", env.ed.sign(t, good, nil), "", 200, "", ""},
		{"valid, Authorization Bearer", valid, "Authorization", 200, "", ""},
		{"valid, second audience", env.es.sign(t, with(good, "aud", []string{"x", "other-app"}), nil), "", 200, "", ""},
		{"alg none, empty signature", unsigned(`{"alg":"none","kid":"es-1"}`, string(goodJSON), nil), "", 401, apierr.CodeInvalidToken, "compact JWS"},
		{"alg none, some signature", unsigned(`{"alg":"none","kid":"es-1"}`, string(goodJSON), []byte("x")), "", 401, apierr.CodeInvalidToken, "algorithm is not accepted"},
		{"alg NONE", unsigned(`{"alg":"NONE","kid":"es-1"}`, string(goodJSON), []byte("x")), "", 401, apierr.CodeInvalidToken, "algorithm is not accepted"},
		{"HS256 signed with the RSA public key", confused, "", 401, apierr.CodeInvalidToken, "algorithm is not accepted"},
		{"RS256 token naming the EC key", env.rs.sign(t, good, map[string]any{"kid": "es-1"}), "", 401, apierr.CodeInvalidToken, "not the one of its key"},
		{"ES256 token naming the RSA key", env.es.sign(t, good, map[string]any{"kid": "rs-1"}), "", 401, apierr.CodeInvalidToken, "not the one of its key"},
		{"kid unknown", env.es.sign(t, good, map[string]any{"kid": "nope"}), "", 401, apierr.CodeInvalidToken, "no key has the token's kid"},
		{"kid empty", env.es.sign(t, good, map[string]any{"kid": ""}), "", 401, apierr.CodeInvalidToken, "no kid"},
		{"kid missing", env.es.sign(t, good, map[string]any{"kid": nil}), "", 401, apierr.CodeInvalidToken, "no kid"},
		{"kid a path", env.es.sign(t, good, map[string]any{"kid": "../../../../etc/passwd"}), "", 401, apierr.CodeInvalidToken, "no key has the token's kid"},
		{"kid a URL", env.es.sign(t, good, map[string]any{"kid": "http://127.0.0.1:1/evil.json"}), "", 401, apierr.CodeInvalidToken, "no key has the token's kid"},
		{"kid huge", env.es.sign(t, good, map[string]any{"kid": strings.Repeat("k", 4000)}), "", 401, apierr.CodeInvalidToken, "kid is too long"},
		{"kid not a string", env.es.sign(t, good, map[string]any{"kid": 7}), "", 401, apierr.CodeInvalidToken, "header is not a JSON object"},
		{"jku header ignored", env.es.sign(t, good, map[string]any{"jku": "http://127.0.0.1:1/keys", "kid": "evil"}), "", 401, apierr.CodeInvalidToken, "no key has the token's kid"},
		{"crit header", env.es.sign(t, good, map[string]any{"crit": []string{"exp"}}), "", 401, apierr.CodeInvalidToken, "critical"},
		{"expired", env.es.sign(t, with(good, "iat", now.Add(-2*time.Hour).Unix(), "exp", now.Add(-time.Hour).Unix()), nil), "", 401, apierr.CodeInvalidToken, "expired"},
		{"nbf in the future", env.es.sign(t, with(good, "nbf", now.Add(time.Hour).Unix()), nil), "", 401, apierr.CodeInvalidToken, "not valid yet"},
		{"iat in the future", env.es.sign(t, with(good, "iat", now.Add(time.Hour).Unix(), "exp", now.Add(time.Hour+time.Minute).Unix()), nil), "", 401, apierr.CodeInvalidToken, "issued in the future"},
		{"no exp", env.es.sign(t, with(good, "exp", nil), nil), "", 401, apierr.CodeInvalidToken, "no exp"},
		{"exp a string", env.es.sign(t, with(good, "exp", "tomorrow"), nil), "", 401, apierr.CodeInvalidToken, "wrong type"},
		{"wrong issuer", env.es.sign(t, with(good, "iss", "https://evil.test"), nil), "", 401, apierr.CodeInvalidToken, "issuer"},
		{"no issuer", env.es.sign(t, with(good, "iss", nil), nil), "", 401, apierr.CodeInvalidToken, "no iss claim"},
		{"wrong audience", env.es.sign(t, with(good, "aud", "someone-else"), nil), "", 401, apierr.CodeInvalidToken, "audience"},
		{"no audience", env.es.sign(t, with(good, "aud", nil), nil), "", 401, apierr.CodeInvalidToken, "no aud claim"},
		{"lifetime over max_lifetime", env.es.sign(t, with(good, "exp", now.Add(2*time.Hour).Unix()), nil), "", 401, apierr.CodeInvalidToken, "max_lifetime"},
		{"lifetime over max_lifetime, no iat", env.es.sign(t, with(good, "iat", nil, "exp", now.Add(2*time.Hour).Unix()), nil), "", 401, apierr.CodeInvalidToken, "max_lifetime"},
		{"100 KB token", env.es.sign(t, with(good, "pad", strings.Repeat("p", 100<<10)), nil), "", 401, apierr.CodeInvalidToken, "longer than 8192"},
		{"100 KB token as Bearer", env.es.sign(t, with(good, "pad", strings.Repeat("p", 100<<10)), nil), "Authorization", 401, apierr.CodeInvalidToken, "longer than 8192"},
		{"many dots", strings.Repeat(".", 5000), "", 401, apierr.CodeInvalidToken, "compact JWS"},
		{"four parts", valid + ".x", "", 401, apierr.CodeInvalidToken, "compact JWS"},
		{"padding", valid + "==", "", 401, apierr.CodeInvalidToken, "compact JWS"},
		{"spaces", " " + valid, "", 401, apierr.CodeInvalidToken, "compact JWS"},
		{"header not base64", "!!!." + parts[1] + "." + parts[2], "", 401, apierr.CodeInvalidToken, "compact JWS"},
		{"header not JSON", base64.RawURLEncoding.EncodeToString([]byte("nope")) + "." + parts[1] + "." + parts[2], "", 401, apierr.CodeInvalidToken, "not a JSON object"},
		{"signature of another key", other.sign(t, good, nil), "", 401, apierr.CodeInvalidToken, "signature does not verify"},
		{"tampered claims", tampered, "", 401, apierr.CodeInvalidToken, "signature does not verify"},
		{"truncated signature", valid[:len(valid)-4], "", 401, apierr.CodeInvalidToken, ""},
		{"no sub", env.es.sign(t, with(good, "sub", nil), nil), "", 401, apierr.CodeInvalidToken, "no sub claim"},
		{"sub with a newline", env.es.sign(t, with(good, "sub", "alice\nX-Platform-User-Id: u"), nil), "", 401, apierr.CodeInvalidToken, "not a valid external id"},
		{"sub a number", env.es.sign(t, with(good, "sub", 42), nil), "", 401, apierr.CodeInvalidToken, ""},
		{"claim header from an object", env.es.sign(t, with(good, "contact_id", map[string]any{"a": 1}), nil), "", 401, apierr.CodeInvalidToken, "contact_id"},
		{"claim header with CRLF", env.es.sign(t, with(good, "contact_id", "x\r\nEvil: 1"), nil), "", 401, apierr.CodeInvalidToken, "contact_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := c.header
			if name == "" {
				name = hdrContactToken
			}
			val := c.token
			if name == "Authorization" {
				val = "Bearer " + c.token
			}
			w := env.h.do(t, hdr(name, val))
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			if c.status == 200 {
				if env.h.seen.Get(hdrIdentitySource) != SourceContactToken || env.h.seen.Get(hdrIdentityVerified) != "true" {
					t.Fatalf("upstream identity = %v", env.h.seen)
				}
				if env.h.seen.Get(hdrExternalID) != "alice" || env.h.seen.Get("X-Contact-Id") != "c-alice" {
					t.Fatalf("upstream headers = %v", env.h.seen)
				}
				if _, err := store.ParseID(store.KindUser, env.h.seen.Get(hdrPlatformUserID)); err != nil {
					t.Fatalf("X-Platform-User-Id %q", env.h.seen.Get(hdrPlatformUserID))
				}
				if env.h.seen.Get("Authorization") != "" || env.h.seen.Get(hdrContactToken) != "" {
					t.Fatal("the token was forwarded")
				}
				return
			}
			code, msg := errorBody(t, w)
			if code != c.code || !strings.Contains(msg, c.reason) {
				t.Fatalf("answer %s %q, want %s containing %q", code, msg, c.code, c.reason)
			}
			if got := w.Header().Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
				t.Fatalf("WWW-Authenticate %q", got)
			}
			if len(c.token) > 20 && strings.Contains(w.Body.String(), c.token[len(c.token)-20:]) {
				t.Fatal("the answer echoes the token")
			}
			if env.h.seen != nil {
				t.Fatal("a refused request reached the upstream")
			}
		})
	}
	// All of the unknown kids together caused at most one refetch (the
	// rate limit), on top of the initial fetch.
	if n := env.srv.fetches.Load(); n > 2 {
		t.Fatalf("%d JWKS fetches; unknown kids must not cause a fetch each", n)
	}
}

// TestUnknownKIDNeverTriesEveryKey: a flood of unknown kids costs at most one
// fetch per refetch interval, and a repeated unknown kid is remembered.
func TestUnknownKIDFlood(t *testing.T) {
	env := newCatalogueEnv(t, time.Hour)
	now := time.Now()
	// First request: waits for the initial fetch.
	if w := env.h.do(t, hdr(hdrContactToken, env.es.sign(t, goodClaims("a", now), nil))); w.Code != 200 {
		t.Fatalf("warm-up %d %s", w.Code, w.Body)
	}
	base := env.srv.fetches.Load()
	for i := 0; i < 50; i++ {
		tok := env.es.sign(t, goodClaims("a", now), map[string]any{"kid": "unknown-" + itoa(i)})
		if w := env.h.do(t, hdr(hdrContactToken, tok)); w.Code != 401 {
			t.Fatalf("unknown kid %d: %d", i, w.Code)
		}
	}
	if n := env.srv.fetches.Load() - base; n > 1 {
		t.Fatalf("50 unknown kids caused %d fetches, want at most 1", n)
	}
	// (That an unknown kid is remembered, and never while the source is
	// down: verify's TestUnknownKIDRemembered.)
}

// TestJWKSRotation: a token with a new kid is accepted after exactly one
// refetch; a retired kid is refused without another.
func TestJWKSRotation(t *testing.T) {
	env := newCatalogueEnv(t, time.Hour)
	now := time.Now()
	if w := env.h.do(t, hdr(hdrContactToken, env.es.sign(t, goodClaims("a", now), nil))); w.Code != 200 {
		t.Fatalf("before rotation: %d", w.Code)
	}
	next := newTestKey(t, "es-2", "ES256")
	env.srv.setKeys(next.jwk(t, true), env.rs.jwk(t, true))
	base := env.srv.fetches.Load()
	for i := 0; i < 3; i++ {
		if w := env.h.do(t, hdr(hdrContactToken, next.sign(t, goodClaims("b"+itoa(i), now), nil))); w.Code != 200 {
			t.Fatalf("new kid: %d %s", w.Code, w.Body)
		}
	}
	if n := env.srv.fetches.Load() - base; n != 1 {
		t.Fatalf("new kid accepted after %d fetches, want exactly 1", n)
	}
	// The retired key is gone from the set: a fresh token naming it is
	// refused (the refetch budget is spent, the source is healthy).
	w := env.h.do(t, hdr(hdrContactToken, env.es.sign(t, goodClaims("c", now), nil)))
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeInvalidToken {
		t.Fatalf("retired kid: %d %s", w.Code, code)
	}
	if n := env.srv.fetches.Load() - base; n != 1 {
		t.Fatalf("a retired kid caused a fetch (%d)", n)
	}
}

// TestJWKSDown: when the JWKS URL fails, the last good keys keep working;
// a kid that cannot be had is 503 key_source_unavailable, not 401; and the
// source recovers by itself.
func TestJWKSDown(t *testing.T) {
	es := newTestKey(t, "es-1", "ES256")
	srv := startJWKSServer(t, es.jwk(t, true))
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			Issuer: testIssuer, Audience: []string{testAudience},
			JWKSURL:        srv.URL,
			JWKSRefresh:    caddy.Duration(20 * time.Millisecond),
			JWKSRefetchMin: caddy.Duration(time.Millisecond),
		},
	}})
	h := newTokenHandler(a, "acme", false)
	src := a.Tenants["acme"].ContactToken.v.Source()
	failures := func() float64 { return testutil.ToFloat64(jwksFetches.WithLabelValues("acme", "failure")) }
	successes := func() float64 { return testutil.ToFloat64(jwksFetches.WithLabelValues("acme", "success")) }
	ok0 := successes()
	now := time.Now()
	claims := jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	if w := h.do(t, hdr(hdrContactToken, es.sign(t, claims, nil))); w.Code != 200 {
		t.Fatalf("up: %d %s", w.Code, w.Body)
	}

	srv.failing.Store(true)
	fails := failures()
	waitFor(t, "a failed refresh", func() bool { return failures() > fails && !src.Healthy() })

	// A token never seen (not in the verified cache), known kid: accepted.
	fresh := es.sign(t, with(claims, "sub", "bob"), nil)
	if w := h.do(t, hdr(hdrContactToken, fresh)); w.Code != 200 {
		t.Fatalf("known kid while the JWKS is down: %d %s", w.Code, w.Body)
	}
	// Unknown kid while down: 503 with Retry-After, and not remembered.
	unknown := newTestKey(t, "es-new", "ES256").sign(t, claims, nil)
	w := h.do(t, hdr(hdrContactToken, unknown))
	if code, _ := errorBody(t, w); w.Code != 503 || code != apierr.CodeKeySourceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("unknown kid while down: %d %s %v", w.Code, code, w.Header())
	}

	srv.failing.Store(false)
	waitFor(t, "recovery", src.Healthy)
	w = h.do(t, hdr(hdrContactToken, unknown))
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeInvalidToken {
		t.Fatalf("unknown kid after recovery: %d %s", w.Code, code)
	}
	if successes()-ok0 < 1 || failures()-fails < 1 {
		t.Fatalf("idlink_jwks_fetches_total: %v more successes, %v more failures", successes()-ok0, failures()-fails)
	}
}

// TestJWKSUnreachableFromStart: no key has ever been fetched: 503.
func TestJWKSUnreachableFromStart(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{Issuer: testIssuer, Audience: []string{testAudience}, JWKSURL: url + "/jwks.json", JWKSTimeout: caddy.Duration(time.Second)},
	}})
	h := newTokenHandler(a, "acme", false)
	now := time.Now()
	tok := newTestKey(t, "k", "ES256").sign(t, jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "a", "exp": now.Add(time.Minute).Unix()}, nil)
	w := h.do(t, hdr(hdrContactToken, tok))
	if code, _ := errorBody(t, w); w.Code != 503 || code != apierr.CodeKeySourceUnavailable {
		t.Fatalf("%d %s", w.Code, code)
	}
}

// TestStaticKeys: PEM keys by kid, each used with its own algorithm only.
func TestStaticKeys(t *testing.T) {
	ec := newTestKey(t, "ec", "ES256")
	ps := newTestKey(t, "ps", "PS256")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			Issuer: testIssuer, Audience: []string{testAudience},
			Keys: []TokenKey{
				{KID: "ec", File: ec.writePEM(t, false)},
				{KID: "ps", File: ps.writePEM(t, true), Alg: "PS256"}, // a private key file: its public half is used
			},
			Algorithms: []string{"ES256", "PS256"},
		},
	}})
	h := newTokenHandler(a, "acme", false)
	now := time.Now()
	claims := jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	for _, c := range []struct {
		name  string
		token string
		want  int
	}{
		{"ES256", ec.sign(t, claims, nil), 200},
		{"PS256", ps.sign(t, claims, nil), 200},
		{"RS256 with the PS256 key", testKey{kid: "ps", alg: "RS256", priv: ps.priv}.sign(t, claims, nil), 401},
		{"unknown kid, no JWKS", ec.sign(t, claims, map[string]any{"kid": "zz"}), 401},
	} {
		if w := h.do(t, hdr(hdrContactToken, c.token)); w.Code != c.want {
			t.Errorf("%s: %d, want %d: %s", c.name, w.Code, c.want, w.Body)
		}
	}
}

// TestContactTokenConfigErrors: keys and algorithms that must not load.
func TestContactTokenConfigErrors(t *testing.T) {
	ec := newTestKey(t, "ec", "ES256")
	pub := ec.writePEM(t, false)
	cases := []struct {
		name string
		ct   *ContactToken
		want string
	}{
		{"HS256 allowed", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}}, Algorithms: []string{"HS256"}}, `algorithm "HS256" is not accepted`},
		{"none allowed", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}}, Algorithms: []string{"none"}}, `algorithm "none" is not accepted`},
		{"EC key declared RS256", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub, Alg: "RS256"}}}, "cannot be used with"},
		{"key alg not allowed", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}}, Algorithms: []string{"RS256"}}, "not in algorithms"},
		{"sign key is public", &ContactToken{SignKeys: []TokenKey{{KID: "ec", File: pub}}}, "holds no private key"},
		{"duplicate kid", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}, {KID: "ec", File: pub}}}, "used twice"},
		{"missing file", &ContactToken{Keys: []TokenKey{{KID: "ec", File: "/nonexistent.pem"}}}, "no such file"},
		{"reserved claim header", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}}, ClaimHeaders: []ClaimHeader{{Claim: "uid", Header: "X_Platform_User_Id"}}}, "reserved"},
		{"claim header Host", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}}, ClaimHeaders: []ClaimHeader{{Claim: "h", Header: "host"}}}, "reserved"},
		{"claim header bad name", &ContactToken{Keys: []TokenKey{{KID: "ec", File: pub}}, ClaimHeaders: []ClaimHeader{{Claim: "h", Header: "X Bad"}}}, "valid header name"},
		{"ttl over max_lifetime", &ContactToken{SignKeys: []TokenKey{{KID: "s", File: ec.writePEM(t, true)}}, TTL: caddy.Duration(2 * time.Hour), MaxLifetime: caddy.Duration(time.Hour)}, "longer than max_lifetime"},
		{"jwks_url not http(s)", &ContactToken{JWKSURL: "file:///etc/keys.json"}, "http(s) URL"},
		{"jwks_url relative", &ContactToken{JWKSURL: "/jwks.json"}, "http(s) URL"},
		{"kid with control chars", &ContactToken{Keys: []TokenKey{{KID: "a\nb", File: pub}}}, "control characters"},
		{"no key source", &ContactToken{Issuer: "x"}, "configure jwks_url, key or sign_key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tn := &Tenant{ContactToken: c.ct}
			a := &App{Tenants: map[string]*Tenant{"acme": tn}, logger: zap.NewNop()}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := a.Provision(ctx)
			if err == nil {
				err = a.Validate()
			}
			_ = a.Cleanup()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// TestClaimHeadersStripped: claim headers are identity headers: a client
// cannot send them, in any spelling, with or without a token.
func TestClaimHeadersStripped(t *testing.T) {
	env := newCatalogueEnv(t, time.Hour)
	spoof := hdr("X-Contact-Id", "spoof", "x_contact_id", "spoof", "X-CONTACT-ID", "spoof")
	if w := env.h.do(t, spoof); w.Code != 200 {
		t.Fatal(w.Code)
	}
	for k := range env.h.seen {
		if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), "x-contact-id") {
			t.Fatalf("spoofed %s reached the upstream", k)
		}
	}
	spoof.Set(hdrContactToken, env.es.sign(t, goodClaims("alice", time.Now()), nil))
	if w := env.h.do(t, spoof); w.Code != 200 || len(env.h.seen["X-Contact-Id"]) != 1 || env.h.seen.Get("X-Contact-Id") != "c-alice" {
		t.Fatalf("%d %v", w.Code, env.h.seen)
	}
}

// TestAuthorizationHandling: Authorization is a contact token only for a
// tenant that verifies them, only with the Bearer scheme.
func TestAuthorizationHandling(t *testing.T) {
	env := newCatalogueEnv(t, time.Hour)
	tok := env.es.sign(t, goodClaims("alice", time.Now()), nil)
	plain := startTestApp(t, nil, map[string]*Tenant{"plain": {}})
	ph := newTokenHandler(plain, "plain", false)

	// No contact_token: a bearer token is the upstream's business.
	if w := ph.do(t, hdr("Authorization", "Bearer "+tok)); w.Code != 200 || ph.seen.Get("Authorization") != "Bearer "+tok ||
		ph.seen.Get(hdrIdentitySource) != SourceAnonymous {
		t.Fatalf("plain tenant: %d %v", w.Code, ph.seen)
	}
	// Another scheme passes untouched.
	if w := env.h.do(t, hdr("Authorization", "Basic YTpi")); w.Code != 200 || env.h.seen.Get("Authorization") != "Basic YTpi" {
		t.Fatalf("basic: %d %v", w.Code, env.h.seen)
	}
	// Two different tokens: ambiguous.
	other := env.es.sign(t, goodClaims("bob", time.Now()), nil)
	w := env.h.do(t, hdr("Authorization", "Bearer "+tok, hdrContactToken, other))
	if code, _ := errorBody(t, w); w.Code != 400 || code != apierr.CodeInvalidRequest {
		t.Fatalf("two tokens: %d %s", w.Code, code)
	}
	// The same token twice is fine.
	if w := env.h.do(t, hdr("Authorization", "bearer "+tok, hdrContactToken, tok)); w.Code != 200 {
		t.Fatalf("same token twice: %d", w.Code)
	}
	// Authorization sent twice: ambiguous.
	w = env.h.do(t, hdr("Authorization", "Bearer "+tok, "Authorization", "Bearer "+other))
	if w.Code != 400 {
		t.Fatalf("two Authorization headers: %d", w.Code)
	}
	// forward_credentials keeps the token.
	fh := newTokenHandler(env.app, "acme", true)
	if w := fh.do(t, hdr("Authorization", "Bearer "+tok)); w.Code != 200 || fh.seen.Get("Authorization") == "" {
		t.Fatalf("forward: %d %v", w.Code, fh.seen)
	}
}

// TestContactTokenAndHMACMustAgree: a token and a signed external id for
// different users are a mismatch.
func TestContactTokenAndHMACMustAgree(t *testing.T) {
	es := newTestKey(t, "es", "ES256")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		Platforms:    map[string]*Platform{"ios": {Secrets: []string{"secret-0123456789abcdef"}}},
		ContactToken: &ContactToken{Issuer: testIssuer, Audience: []string{testAudience}, Keys: []TokenKey{{KID: "es", File: es.writePEM(t, false)}}},
	}})
	h := newTokenHandler(a, "acme", false)
	now := time.Now()
	tok := es.sign(t, jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "alice", "exp": now.Add(time.Minute).Unix()}, nil)
	same := hdr(hdrContactToken, tok, hdrPlatform, "ios", hdrExternalID, "alice", hdrExternalIDSig, sign("secret-0123456789abcdef", "alice"))
	if w := h.do(t, same); w.Code != 200 || h.seen.Get(hdrIdentitySource) != SourceContactToken {
		t.Fatalf("agreeing: %d %v", w.Code, h.seen)
	}
	diff := hdr(hdrContactToken, tok, hdrPlatform, "ios", hdrExternalID, "bob", hdrExternalIDSig, sign("secret-0123456789abcdef", "bob"))
	w := h.do(t, diff)
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeIdentityMismatch {
		t.Fatalf("disagreeing: %d %s", w.Code, code)
	}
}

// TestContactTokenRefusedWithoutConfig: a tenant without contact_token
// refuses X-Contact-Token rather than ignoring it.
func TestContactTokenRefusedWithoutConfig(t *testing.T) {
	a := startTestApp(t, nil, map[string]*Tenant{"plain": {}})
	h := newTokenHandler(a, "plain", false)
	w := h.do(t, hdr(hdrContactToken, "a.b.c"))
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeInvalidToken {
		t.Fatalf("%d %s", w.Code, code)
	}
}

// FuzzContactToken feeds arbitrary strings to the verifier: it never
// panics, never accepts a token it did not sign-check, and only ever
// answers 401 invalid_token (or 503 for a key source outage).
func FuzzContactToken(f *testing.F) {
	ec := newTestKey(f, "ec", "ES256")
	now := time.Now()
	valid := ec.sign(f, jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "alice", "exp": now.Add(time.Hour).Unix()}, nil)
	f.Add(valid)
	f.Add(valid + "x")
	f.Add("a.b.c")
	f.Add(strings.Repeat(".", 100))
	f.Add(unsigned(`{"alg":"none","kid":"ec"}`, `{"sub":"a","exp":9999999999}`, []byte("x")))
	f.Add(unsigned(`{"alg":"ES256","kid":"ec","crit":["b64"]}`, `{}`, []byte("x")))
	f.Add(unsigned(`{"alg":"ES256","kid":{"x":1}}`, `{}`, []byte("x")))
	a := startTestApp(f, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{Issuer: testIssuer, Audience: []string{testAudience}, Keys: []TokenKey{{KID: "ec", File: ec.writePEM(f, false)}}},
	}})
	d := a.Tenants["acme"].id
	f.Fuzz(func(t *testing.T, tok string) {
		if tok == "" {
			return // no token at all
		}
		vt, err := d.Identify(context.Background(), &identity.Credentials{ContactToken: tok})
		if err != nil {
			ae, ok := err.(*apiError)
			if !ok || ae.Status != 401 || ae.Code != apierr.CodeInvalidToken || strings.Contains(ae.Message, tok) && len(tok) > 8 {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if vt.ExternalID != "alice" || tok != valid {
			t.Fatalf("accepted a token that is not the valid one: %q", tok)
		}
	})
}

// FuzzBearerToken: the Authorization parser never yields a token with a
// control character and never panics.
func FuzzBearerToken(f *testing.F) {
	f.Add("Bearer abc.def.ghi", "")
	f.Add("bearer   x", "Basic y")
	f.Add("Bearer", "")
	f.Add("Bearer \r\n", "")
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		h := http.Header{"Authorization": {v1}}
		if v2 != "" {
			h["Authorization"] = append(h["Authorization"], v2)
		}
		var e *apiError
		b := bearerToken(h, &e)
		if e != nil && b != "" {
			t.Fatal("token returned with an error")
		}
		if b != "" && !strings.HasSuffix(v1, b) && !strings.HasSuffix(v2, b) {
			t.Fatalf("token %q not taken from the header", b)
		}
	})
}

func TestJWKSEndpointPublishesSigningKeys(t *testing.T) {
	cur := newTestKey(t, "k-2026", "ES256")
	old := newTestKey(t, "k-2025", "EdDSA")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{SignKeys: []TokenKey{
			{KID: cur.kid, File: cur.writePEM(t, true)},
			{KID: old.kid, File: old.writePEM(t, true)},
		}},
	}})
	api := &API{Tenant: "acme", tenant: a.Tenants["acme"], app: a}
	w := httptest.NewRecorder()
	apiRoutes["GET /jwks.json"](api, w, httptest.NewRequest("GET", "/jwks.json", nil))
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(w.Body.Bytes(), &set); err != nil || len(set.Keys) != 2 {
		t.Fatalf("%v %s", err, w.Body)
	}
	if set.Keys[0].KID != "k-2026" || set.Keys[0].ALG != "ES256" || set.Keys[1].ALG != "EdDSA" || set.Keys[0].USE != "sig" {
		t.Fatalf("keys %+v", set.Keys)
	}
	for _, k := range set.Keys {
		if k.D != "" || k.P != "" {
			t.Fatal("private key material published")
		}
	}
	// Empty set for a tenant that does not issue.
	plain := startTestApp(t, nil, map[string]*Tenant{"plain": {}})
	w = httptest.NewRecorder()
	apiRoutes["GET /jwks.json"](&API{tenant: plain.Tenants["plain"]}, w, httptest.NewRequest("GET", "/jwks.json", nil))
	if strings.TrimSpace(w.Body.String()) != `{"keys":[]}` {
		t.Fatalf("plain: %s", w.Body)
	}
}

// TestIssuedTokens: tokens idlink signs verify here (sub is the platform
// user), carry the extra identifiers, survive key rotation, and verify
// for a third party through /jwks.json.
func TestIssuedTokens(t *testing.T) {
	cur := newTestKey(t, "own-2", "ES256")
	old := newTestKey(t, "own-1", "EdDSA")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			SignKeys:     []TokenKey{{KID: cur.kid, File: cur.writePEM(t, true)}, {KID: old.kid, File: old.writePEM(t, true)}},
			ClaimHeaders: []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}, {Claim: "predict_external_id", Header: "X-Predict-Id"}},
			TTL:          caddy.Duration(5 * time.Minute),
		},
	}})
	tn := a.Tenants["acme"]
	h := newTokenHandler(a, "acme", false)
	userID, err := resolveExternal(tn, "alice")
	if err != nil {
		t.Fatal(err)
	}
	tok, exp, err := tn.ContactToken.v.Issue(userID, "", "alice", map[string]string{"contact_id": "c-1", "predict_external_id": "p-1", "sub": "evil"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(exp); d < 4*time.Minute || d > 5*time.Minute+time.Second {
		t.Fatalf("exp in %v", d)
	}
	w := h.do(t, hdr("Authorization", "Bearer "+tok))
	if w.Code != 200 || h.seen.Get(hdrPlatformUserID) != userID || h.seen.Get(hdrExternalID) != "alice" ||
		h.seen.Get("X-Contact-Id") != "c-1" || h.seen.Get("X-Predict-Id") != "p-1" {
		t.Fatalf("%d %v", w.Code, h.seen)
	}
	var claims jwt.MapClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &claims); err != nil {
		t.Fatal(err)
	}
	if claims["iss"] != "idlink/acme" || claims["aud"] != "acme" || claims["sub"] != userID {
		t.Fatalf("claims %v", claims)
	}

	// A token of the previous key is still accepted.
	oldTok := old.sign(t, jwt.MapClaims{"iss": "idlink/acme", "aud": "acme", "sub": userID, "exp": time.Now().Add(time.Minute).Unix()}, nil)
	if w := h.do(t, hdr(hdrContactToken, oldTok)); w.Code != 200 || h.seen.Get(hdrPlatformUserID) != userID {
		t.Fatalf("old key: %d %s", w.Code, w.Body)
	}
	// Own key, but sub is not a user id / wrong issuer: refused.
	for name, c := range map[string]jwt.MapClaims{
		"sub not a user id": {"iss": "idlink/acme", "aud": "acme", "sub": "alice", "exp": time.Now().Add(time.Minute).Unix()},
		"wrong issuer":      {"iss": "someone", "aud": "acme", "sub": userID, "exp": time.Now().Add(time.Minute).Unix()},
		"wrong audience":    {"iss": "idlink/acme", "aud": "x", "sub": userID, "exp": time.Now().Add(time.Minute).Unix()},
		"bad sid":           {"iss": "idlink/acme", "aud": "acme", "sub": userID, "sid": "nope", "exp": time.Now().Add(time.Minute).Unix()},
	} {
		w := h.do(t, hdr(hdrContactToken, cur.sign(t, c, nil)))
		if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeInvalidToken {
			t.Errorf("%s: %d %s", name, w.Code, code)
		}
	}

	// A third party verifies idlink's tokens through GET /jwks.json.
	api := &API{Tenant: "acme", tenant: tn, app: a}
	pub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiRoutes["GET /jwks.json"](api, w, r)
	}))
	defer pub.Close()
	b := startTestApp(t, nil, map[string]*Tenant{"partner": {
		ContactToken: &ContactToken{JWKSURL: pub.URL, Issuer: "idlink/acme", Audience: []string{"acme"}},
	}})
	bh := newTokenHandler(b, "partner", false)
	if w := bh.do(t, hdr(hdrContactToken, tok)); w.Code != 200 || bh.seen.Get(hdrExternalID) != userID {
		t.Fatalf("third party: %d %s", w.Code, w.Body)
	}
}

func BenchmarkContactTokenCacheHit(b *testing.B) {
	ec := newTestKey(b, "ec", "ES256")
	a := startTestApp(b, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			SignKeys:     []TokenKey{{KID: "ec", File: ec.writePEM(b, true)}},
			ClaimHeaders: []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}},
		},
	}})
	tn := a.Tenants["acme"]
	ctx := context.Background()
	userID, _ := resolveExternal(tn, "alice")
	tok, _, _ := tn.ContactToken.v.Issue(userID, "", "alice", map[string]string{"contact_id": "c-1"}, time.Time{})
	creds := &identity.Credentials{ContactToken: tok}
	if _, err := tn.id.Identify(ctx, creds); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := tn.id.Identify(ctx, creds); err != nil {
			b.Fatal(err)
		}
	}
}

// TestJWKSRefreshStopsWithApp: the refresh goroutine ends when the app
// stops (a config reload), so nothing keeps fetching for an old config.
func TestJWKSRefreshStopsWithApp(t *testing.T) {
	es := newTestKey(t, "es", "ES256")
	srv := startJWKSServer(t, es.jwk(t, true))
	a := &App{logger: zap.NewNop(), Tenants: map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{JWKSURL: srv.URL, JWKSRefresh: caddy.Duration(5 * time.Millisecond)},
	}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	refreshing := func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "jwkset.NewStorageFromHTTP")
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "periodic refreshes", func() bool { return srv.fetches.Load() >= 3 })
	if !refreshing() {
		t.Fatal("no refresh goroutine found: the check below proves nothing")
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refresh goroutine to end", func() bool { return !refreshing() })
}

// BenchmarkContactTokenCacheHitExternal: another issuer's token already
// verified; its external id's user is in the in-process cache.
func BenchmarkContactTokenCacheHitExternal(b *testing.B) {
	ec := newTestKey(b, "ec", "ES256")
	a := startTestApp(b, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			Issuer:       testIssuer,
			Audience:     []string{testAudience},
			Keys:         []TokenKey{{KID: "ec", File: ec.writePEM(b, false)}},
			ClaimHeaders: []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}},
		},
	}})
	tn := a.Tenants["acme"]
	now := time.Now()
	creds := &identity.Credentials{Bearer: ec.sign(b, jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "alice", "contact_id": "c-1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}, nil)}
	ctx := context.Background()
	if _, err := tn.id.Identify(ctx, creds); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := tn.id.Identify(ctx, creds); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandlerContactTokenWarm is the whole handler for a request
// carrying only an idlink-issued contact token (Authorization: Bearer),
// already verified: no signature check, no Redis round trip.
func BenchmarkHandlerContactTokenWarm(b *testing.B) {
	ec := newTestKey(b, "ec", "ES256")
	a := startTestApp(b, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			SignKeys:     []TokenKey{{KID: "ec", File: ec.writePEM(b, true)}},
			ClaimHeaders: []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}},
		},
	}})
	tn := a.Tenants["acme"]
	userID, _ := resolveExternal(tn, "alice")
	tok, _, _ := tn.ContactToken.v.Issue(userID, "", "alice", map[string]string{"contact_id": "c-1"}, time.Time{})
	h := newTokenHandler(a, "acme", false).h
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	bearer := "Bearer " + tok
	r.Header[hdrAuthorization] = []string{bearer}
	if err := h.ServeHTTP(w, r, nopNext); err != nil || w.Code != 200 {
		b.Fatal(err, w.Code)
	}
	authorization := []string{""} // the request's own, built once: what is measured is the handler's own
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(r.Header) // what the previous round set for the upstream
		authorization[0] = bearer
		r.Header[hdrAuthorization] = authorization
		if err := h.ServeHTTP(w, r, nopNext); err != nil {
			b.Fatal(err)
		}
	}
	if r.Header.Get(hdrPlatformUserID) != userID {
		b.Fatal("not authenticated")
	}
}
