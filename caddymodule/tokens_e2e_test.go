package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/idlink/idlink/testenv"
)

// TestTokensE2E runs contact tokens and SSO tokens through a real Caddy
// (Caddyfile → JSON → provisioning → handler → reverse_proxy), real Redis
// (when available), a real local JWKS server and a real token-info server.
func TestTokensE2E(t *testing.T) {
	redisLine := ""
	if r := testenv.StartRedis(t); r != nil {
		redisLine = "redis " + r.URL()
	}
	ext := newTestKey(t, "ext-1", "ES256")
	jwks := startJWKSServer(t, ext.jwk(t, true))
	own := newTestKey(t, "own-1", "EdDSA")
	t.Setenv("IDLINK_E2E_SIGN_KEY", own.writePEM(t, true))
	t.Setenv("IDLINK_E2E_TOKENS_SECRET", testSecret)
	info := startTokenInfoServer(t)
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		%s
		tenant acme {
			platform ios {
				secret {env.IDLINK_E2E_TOKENS_SECRET}
			}
			default_platform ios
			contact_token {
				jwks_url %s
				issuer %s
				audience %s
				max_lifetime 1h
				claim_header contact_id X-Contact-Id
				sign_key own-1 {env.IDLINK_E2E_SIGN_KEY}
				jwks_refresh 50ms
				jwks_refetch_min 1h
			}
			sso {
				token_info_url %s/tokeninfo
				audience sdk
				timeout 500ms
			}
		}
	}
}

http://127.0.0.1:%d {
	idlink acme {
		api /idlink
	}
	reverse_proxy %s {
		header_up X-Placeholder-Source "{idlink.source}"
	}
}
`, redisLine, jwks.URL, testIssuer, testAudience, info.URL, port, up.Addr()))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	do := func(path string, headers ...string) (int, http.Header, string, http.Header) {
		t.Helper()
		up.Reset()
		method := "GET"
		if m, p, ok := strings.Cut(path, " "); ok {
			method, path = m, p
		}
		req, _ := http.NewRequest(method, base+path, nil)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header[headers[i]] = append(req.Header[headers[i]], headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if last, ok := up.Last(); ok {
			return resp.StatusCode, resp.Header, string(body), last.Header
		}
		return resp.StatusCode, resp.Header, string(body), nil
	}
	now := time.Now()

	// idlink publishes its signing key.
	status, _, body, _ := do("/idlink/jwks.json")
	var set jwkset.JWKSMarshal
	if status != 200 || json.Unmarshal([]byte(body), &set) != nil || len(set.Keys) != 1 || set.Keys[0].KID != "own-1" {
		t.Fatalf("jwks.json: %d %s", status, body)
	}

	// An external token by Authorization: Bearer, with spoofed claim headers.
	tok := ext.sign(t, goodClaims("alice", now), nil)
	status, _, body, got := do("/app", "Authorization", "Bearer "+tok, "X-Contact-Id", "spoofed", "X_Contact_Id", "spoofed")
	if status != 200 || got == nil {
		t.Fatalf("external token: %d %s", status, body)
	}
	alice := got.Get("X-Platform-User-Id")
	if !strings.HasPrefix(alice, "u_") || got.Get("X-Identity-Source") != "contact_token" || got.Get("X-External-Id") != "alice" ||
		got.Get("X-Contact-Id") != "c-alice" || len(got["X-Contact-Id"]) != 1 || got.Get("X_Contact_Id") != "" ||
		got.Get("Authorization") != "" || got.Get("X-Placeholder-Source") != "contact_token" {
		t.Fatalf("upstream: %v", got)
	}
	// The same external id by HMAC-less SSO: same user.
	info.answer("sso-alice", jsonAnswer(200, map[string]any{"sub": "alice", "aud": "sdk", "exp": now.Add(time.Hour).Unix(), "email": "alice@example.com", "email_verified": true}))
	if status, _, body, got := do("/app", "X-Sso-Token", "sso-alice"); status != 200 || got.Get("X-Platform-User-Id") != alice ||
		got.Get("X-Identity-Source") != "sso" || got.Get("X-Verified-Email") != "alice@example.com" || got.Get("X-Sso-Token") != "" {
		t.Fatalf("sso: %d %s %v", status, body, got)
	}
	// A token signed with idlink's own key names the platform user.
	ownTok := own.sign(t, jwt.MapClaims{"iss": "idlink/acme", "aud": testAudience, "sub": alice, "exp": now.Add(time.Minute).Unix()}, nil)
	if status, _, body, got := do("/app", "X-Contact-Token", ownTok); status != 200 || got.Get("X-Platform-User-Id") != alice {
		t.Fatalf("own token: %d %s", status, body)
	}
	// Login → token alone → refresh → logout → refused.
	status, _, body, _ = do("POST /idlink/sessions", "X-External-Id", "dave", "X-External-Id-Signature", sign(testSecret, "dave"))
	var login startSessionResponse
	if err := json.Unmarshal([]byte(body), &login); status != 201 || err != nil || login.ContactToken == "" {
		t.Fatalf("login: %d %s", status, body)
	}
	if status, _, body, got := do("/app", "Authorization", "Bearer "+login.ContactToken); status != 200 ||
		got.Get("X-Identity-Source") != "contact_token" || got.Get("X-External-Id") != "dave" || got.Get("X-Session-Id") == "" {
		t.Fatalf("issued token: %d %s %v", status, body, got)
	}
	status, _, body, _ = do("POST /idlink/contact-token", "Authorization", "Bearer "+login.ContactToken)
	var refreshed refreshAnswer
	if err := json.Unmarshal([]byte(body), &refreshed); status != 200 || err != nil || refreshed.ContactToken == "" {
		t.Fatalf("refresh: %d %s", status, body)
	}
	if status, _, body, _ := do("DELETE /idlink/sessions/current", "X-Session-Id", refreshed.SessionID); status != 200 {
		t.Fatalf("logout: %d %s", status, body)
	}
	for _, tok := range []string{login.ContactToken, refreshed.ContactToken} {
		if status, _, body, got := do("/app", "Authorization", "Bearer "+tok); status != 401 || got != nil || !strings.Contains(body, `"error":"session_ended"`) {
			t.Fatalf("after logout: %d %s", status, body)
		}
	}

	// Refusals: exact code, challenge, nothing upstream.
	for name, bad := range map[string]string{
		"alg none":  unsigned(`{"alg":"none","kid":"ext-1"}`, `{"sub":"alice","exp":9999999999}`, []byte("x")),
		"expired":   ext.sign(t, with(goodClaims("alice", now), "iat", now.Add(-2*time.Hour).Unix(), "exp", now.Add(-time.Hour).Unix()), nil),
		"other key": newTestKey(t, "ext-1", "ES256").sign(t, goodClaims("alice", now), nil),
	} {
		status, hdrs, body, got := do("/app", "Authorization", "Bearer "+bad)
		if status != 401 || got != nil || !strings.Contains(body, `"error":"invalid_token"`) || hdrs.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Fatalf("%s: %d %s %v", name, status, body, hdrs)
		}
	}
	// The JWKS server goes down: known keys keep working, a kid that cannot
	// be fetched is 503.
	jwks.failing.Store(true)
	fails := jwks.fetches.Load()
	waitFor(t, "a failed JWKS refresh", func() bool { return jwks.fetches.Load() > fails+1 })
	if status, _, body, _ := do("/app", "X-Contact-Token", ext.sign(t, goodClaims("bob", now), nil)); status != 200 {
		t.Fatalf("JWKS down, known kid: %d %s", status, body)
	}
	status, hdrs, body, _ := do("/app", "X-Contact-Token", newTestKey(t, "ext-2", "ES256").sign(t, goodClaims("carol", now), nil))
	if status != 503 || !strings.Contains(body, `"error":"key_source_unavailable"`) || hdrs.Get("Retry-After") == "" {
		t.Fatalf("JWKS down, new kid: %d %s", status, body)
	}
}
