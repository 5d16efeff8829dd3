package verify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestPeekHeaderLikeGolangJWT: the kid/alg peek reads a header exactly as
// golang-jwt does (keys match case by case), so that a header cannot name
// one algorithm to the key check and another to the verifier.
func TestPeekHeaderLikeGolangJWT(t *testing.T) {
	enc := base64.RawURLEncoding
	for _, header := range []string{
		`{"alg":"PS256","ALG":"RS256","kid":"rs-1"}`,
		`{"alg":"PS256","Alg":"RS256","kid":"rs-1"}`,
		`{"alg":"PS256","kid":"rs-1","KID":"other"}`,
		`{"ALG":"RS256","alg":"PS256","Kid":"x","kid":"rs-1"}`,
	} {
		raw := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(`{"sub":"a"}`)) + ".c2ln"
		got, err := peekHeader(raw)
		tok, _, perr := jwt.NewParser().ParseUnverified(raw, jwt.MapClaims{})
		if err != nil || perr != nil || got.Alg != tok.Header["alg"] || got.KID == nil || *got.KID != tok.Header["kid"] {
			t.Fatalf("%s: peek %+v (%v), golang-jwt %v (%v)", header, got, err, tok.Header, perr)
		}
	}
}

func TestCompactJWS(t *testing.T) {
	for s, want := range map[string]bool{
		"a.b.c": true, "aB-_.0.9": true, "a.b.": false, ".b.c": false, "a..c": false,
		"a.b.c.d": false, "a.b": false, "a.b.c=": false, "a.b.c ": false, "": false, "a.b.c\n": false,
	} {
		if got := compactJWS(s); got != want {
			t.Errorf("compactJWS(%q) = %v", s, got)
		}
	}
}

// testSigner is a key of one algorithm that signs test tokens.
type testSigner struct {
	kid, alg string
	priv     crypto.Signer
}

func newSigner(tb testing.TB, kid, alg string) testSigner {
	tb.Helper()
	var k crypto.Signer
	var err error
	switch alg {
	case "ES256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "RS256":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "EdDSA":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return testSigner{kid: kid, alg: alg, priv: k}
}

func (s testSigner) sign(tb testing.TB, claims jwt.MapClaims, kid string) string {
	tb.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(s.alg), claims)
	tok.Header["kid"] = kid
	out, err := tok.SignedString(s.priv)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func always(string) bool { return true }

// newTestTokens is a verifier of another issuer's tokens signed by keys
// (static keys by kid), with source as its JWKS (may be nil).
func newTestTokens(tb testing.TB, now func() time.Time, source *JWKSSource, keys ...testSigner) *Tokens {
	tb.Helper()
	static := map[string]Key{}
	for _, k := range keys {
		static[k.kid] = Key{KID: k.kid, Alg: k.alg, Pub: k.priv.Public()}
	}
	v, err := NewTokens(TokensConfig{
		Static: static, Source: source, Algorithms: DefaultAlgorithms, Issuer: "https://issuer.example", Audience: []string{"app"},
		OwnIssuer: "idlink/acme", OwnAudience: []string{"acme"}, Leeway: time.Second, MaxLifetime: 24 * time.Hour,
		UnknownKIDTTL: time.Hour, UserClaim: "sub", UserID: always, SessionID: always,
		CacheSize: 4, CacheTTL: time.Hour, Now: now,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func claimsAt(sub string, now time.Time) jwt.MapClaims {
	return jwt.MapClaims{"iss": "https://issuer.example", "aud": "app", "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
}

// TestTokensCache: a hit skips verification, time claims are checked
// again on every hit, and the cache is bounded.
func TestTokensCache(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	ec := newSigner(t, "ec", "ES256")
	v := newTestTokens(t, c.now, nil, ec)
	ctx := context.Background()
	tok := ec.sign(t, claimsAt("alice", c.now()), "ec")
	if vt, err := v.Verify(ctx, tok); err != nil || vt.ExternalID != "alice" || vt.Own {
		t.Fatalf("Verify = %+v, %v", vt, err)
	}
	// A hit does not verify again: it works even with the key gone.
	saved := v.static
	v.static = map[string]Key{}
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("cache hit: %v", err)
	}
	v.static = saved
	// Time claims are re-checked on a hit, whatever the entry's lifetime.
	digest := sha256.Sum256([]byte(tok))
	vt, _ := v.cache.Get(digest)
	stale := *vt
	stale.Exp = c.now().Add(-time.Minute).Unix()
	v.cache.AddFor(digest, &stale, time.Hour)
	if _, err := v.Verify(ctx, tok); !isRefusal(err) {
		t.Fatalf("expired entry served: %v", err)
	}
	early := *vt
	early.Nbf = c.now().Add(time.Hour).Unix()
	v.cache.AddFor(digest, &early, time.Hour)
	if _, err := v.Verify(ctx, tok); !isRefusal(err) {
		t.Fatal("not-yet-valid entry served")
	}
	// The entry expires with the token.
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	c.add(2 * time.Minute)
	if _, err := v.Verify(ctx, tok); !isRefusal(err) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("after exp: %v", err)
	}
	// Bounded.
	for i := range 20 {
		if _, err := v.Verify(ctx, ec.sign(t, claimsAt("u"+strconv.Itoa(i), c.now()), "ec")); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.cache.Len(); n > 4 {
		t.Fatalf("cache holds %d entries, bound is 4", n)
	}
}

// TestUnknownKIDRemembered: a kid no key has is remembered (no fetch for
// it until UnknownKIDTTL), but never while the JWKS cannot be had: that
// is ErrKeySourceUnavailable, and the kid is asked again next time.
func TestUnknownKIDRemembered(t *testing.T) {
	src := NewJWKSSource(JWKSConfig{URL: "http://127.0.0.1:1/", Timeout: time.Second, Now: time.Now})
	close(src.ready) // started, with no set fetched
	v := newTestTokens(t, time.Now, src)
	tok := newSigner(t, "nope", "ES256").sign(t, claimsAt("a", time.Now()), "nope")
	ctx := context.Background()

	src.failSeq.Store(src.seq.Add(1)) // the last fetch failed
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrKeySourceUnavailable) {
		t.Fatalf("kid while the source is down: %v", err)
	}
	if _, remembered := v.unknownKID.Get("nope"); remembered {
		t.Fatal("a kid was remembered as unknown while the source was down")
	}
	src.okSeq.Store(src.seq.Add(1)) // then one succeeded
	if _, err := v.Verify(ctx, tok); !isRefusal(err) {
		t.Fatalf("unknown kid, source up: %v", err)
	}
	if _, remembered := v.unknownKID.Get("nope"); !remembered {
		t.Fatal("an unknown kid was not remembered")
	}
}

func BenchmarkVerifyFresh(b *testing.B) {
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			k := newSigner(b, "k", alg)
			v := newTestTokens(b, time.Now, nil, k)
			now := time.Now()
			tok := k.sign(b, jwt.MapClaims{"iss": "https://issuer.example", "aud": "app", "sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}, "k")
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := v.verifyFresh(ctx, tok, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
