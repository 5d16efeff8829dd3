package caddymodule

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
