package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/golang-jwt/jwt/v5"
)

// Attack tests of contact-token verification (issue 10, item 5).

// TestAttackExternalTokensNeedIssuerAndAudience: a contact_token with a
// jwks_url or a static key but no issuer or audience would accept any
// token those keys sign (a shared JWKS signs for every customer): Caddy
// refuses to start such a config, naming the missing option. idlink's own
// issuance alone needs neither (it sets and checks its own).
func TestAttackExternalTokensNeedIssuerAndAudience(t *testing.T) {
	pem := newTestKey(t, "ext-1", "ES256").writePEM(t, false)
	jwks := startJWKSServer(t)
	sign := newTestKey(t, "own-1", "ES256").writePEM(t, true)
	for _, c := range []struct {
		name, block, missing string
	}{
		{"jwks_url alone", "jwks_url " + jwks.URL, "issuer"},
		{"key alone", "key ext-1 " + pem, "issuer"},
		{"jwks_url without audience", "jwks_url " + jwks.URL + "\n\t\t\t\tissuer " + testIssuer, "audience"},
		{"key without issuer", "key ext-1 " + pem + "\n\t\t\t\taudience " + testAudience, "issuer"},
		{"key and sign_key without audience", "key ext-1 " + pem + "\n\t\t\t\tsign_key own-1 " + sign + "\n\t\t\t\tissuer " + testIssuer, "audience"},
		{"both", "key ext-1 " + pem + "\n\t\t\t\tissuer " + testIssuer + "\n\t\t\t\taudience " + testAudience, ""},
		{"own issuance only", "sign_key own-1 " + sign, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf(`{
	admin off
	idlink {
		tenant acme {
			contact_token {
				%s
			}
		}
	}
}
`, c.block)), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			err = caddy.Load(cfg, true)
			t.Cleanup(func() { _ = caddy.Stop() })
			if c.missing == "" {
				if err != nil {
					t.Fatalf("a complete config was refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "needs "+c.missing) {
				t.Fatalf("Caddy started a contact_token that lacks %s (err %v)", c.missing, err)
			}
		})
	}
}

// TestAttackJOSEHeaderReadLikeGolangJWT: the kid/alg peek reads the header
// exactly as golang-jwt does (keys match case by case), so a header with
// both "alg" and "ALG" cannot name the key's algorithm to idlink's key
// check and another one to the verifier (issue 10, item 8). Here an RSA
// key published for RS256 must not verify a PS256 signature.
func TestAttackJOSEHeaderReadLikeGolangJWT(t *testing.T) {
	rs := newTestKey(t, "rs-1", "RS256")
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			Issuer:     testIssuer,
			Audience:   []string{testAudience},
			Keys:       []TokenKey{{KID: "rs-1", File: rs.writePEM(t, false), Alg: "RS256"}},
			Algorithms: []string{"RS256", "PS256"},
		},
	}})
	h := newTokenHandler(a, "acme", false)
	claims, _ := json.Marshal(goodClaims("mallory", time.Now()))
	forge := func(header string, method jwt.SigningMethod) string {
		enc := base64.RawURLEncoding
		input := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(claims)
		sig, err := method.Sign(input, rs.priv)
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + enc.EncodeToString(sig)
	}
	for _, header := range []string{
		`{"alg":"PS256","ALG":"RS256","kid":"rs-1"}`,
		`{"alg":"PS256","Alg":"RS256","kid":"rs-1"}`,
		`{"alg":"PS256","kid":"rs-1","KID":"other"}`,
	} {
		if w := h.do(t, hdr(hdrContactToken, forge(header, jwt.SigningMethodPS256))); w.Code != http.StatusUnauthorized || h.seen != nil {
			t.Fatalf("header %s, signed PS256 with an RS256 key: %d %s (upstream reached: %v)", header, w.Code, w.Body, h.seen != nil)
		}
	}
	// The same key with its own algorithm passes, whatever other-case keys
	// the header carries.
	if w := h.do(t, hdr(hdrContactToken, forge(`{"alg":"RS256","ALG":"PS256","kid":"rs-1"}`, jwt.SigningMethodRS256))); w.Code != http.StatusOK {
		t.Fatalf("RS256 with its own key: %d %s", w.Code, w.Body)
	}
	// (That the peek agrees with golang-jwt's parse: verify's TestPeekHeaderLikeGolangJWT.)
}
