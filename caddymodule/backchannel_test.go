package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// TestBackchannelLogoutSSO: a back-channel logout drops the cached SSO
// answers naming its user (the token-info URL is asked again about them),
// and only those.
func TestBackchannelLogoutSSO(t *testing.T) {
	es := newTestKey(t, "es-1", "ES256")
	jwks := startJWKSServer(t, es.jwk(t, true))
	info := startTokenInfoServer(t)
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{
			Issuer: testIssuer, Audience: []string{testAudience}, JWKSURL: jwks.URL,
			BackchannelLogout: &BackchannelLogout{},
		},
		SSO: &SSO{TokenInfoURL: info.URL + "/tokeninfo", Audience: []string{"sdk"}, Timeout: caddy.Duration(time.Second)},
	}})
	waitSubscribed(t, a) // the flush of the subscription's start is behind us
	h := newTokenHandler(a, "acme", false)
	exp := time.Now().Add(time.Hour).Unix()
	for _, u := range []string{"alice", "bob"} {
		info.answer("sso-"+u, jsonAnswer(200, map[string]any{"sub": u, "aud": "sdk", "exp": exp}))
	}
	calls := func(tok string) int { info.mu.Lock(); defer info.mu.Unlock(); return info.calls[tok] }
	use := func(tok string) {
		t.Helper()
		if w := h.do(t, hdr(hdrSSOToken, tok)); w.Code != 200 {
			t.Fatalf("%s: %d %s", tok, w.Code, w.Body)
		}
	}
	for range 2 {
		use("sso-alice")
		use("sso-bob")
	}
	if calls("sso-alice") != 1 || calls("sso-bob") != 1 {
		t.Fatalf("calls before: %d %d, want 1 1 (cached)", calls("sso-alice"), calls("sso-bob"))
	}
	api := &API{Tenant: "acme", app: a, tenant: a.Tenants["acme"], logger: zap.NewNop(), mux: http.NewServeMux()}
	for pattern, route := range apiRoutes {
		api.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { route(api, w, r) })
	}
	form := url.Values{"logout_token": {es.sign(t, logoutClaims("alice", "jti-sso-1", time.Now()), nil)}}.Encode()
	r := httptest.NewRequest(http.MethodPost, "/backchannel-logout", strings.NewReader(form))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	if err := api.ServeHTTP(w, r, nil); err != nil || w.Code != 200 {
		t.Fatalf("logout: %d %s %v", w.Code, w.Body, err)
	}
	use("sso-alice")
	use("sso-bob")
	if calls("sso-alice") != 2 || calls("sso-bob") != 1 {
		t.Fatalf("calls after: %d %d, want 2 1 (alice's answer dropped, bob's kept)", calls("sso-alice"), calls("sso-bob"))
	}
}

// TestBackchannelLogoutConfig: the Caddyfile block, its defaults, and the
// configurations that cannot work.
func TestBackchannelLogoutConfig(t *testing.T) {
	var c ContactToken
	d := caddyfileDispenser(`contact_token {
		jwks_url https://idp.test/jwks
		issuer https://idp.test
		audience app
		backchannel_logout {
			audience app-backchannel
			max_age 90s
		}
	}`)
	d.Next()
	if err := c.unmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	b := c.BackchannelLogout
	if b == nil || b.Issuer != "" || len(b.Audience) != 1 || b.Audience[0] != "app-backchannel" || time.Duration(b.MaxAge) != 90*time.Second {
		t.Fatalf("parsed %+v", b)
	}
	for _, bad := range []string{
		`contact_token { jwks_url https://idp.test/jwks
			issuer x
			audience y
			backchannel_logout { nonsense 1 } }`,
		`contact_token { jwks_url https://idp.test/jwks
			issuer x
			audience y
			backchannel_logout { max_age 1m
				max_age 2m } }`,
		`contact_token { jwks_url https://idp.test/jwks
			issuer x
			audience y
			backchannel_logout
			backchannel_logout }`,
	} {
		var c ContactToken
		d := caddyfileDispenser(bad)
		d.Next()
		if err := c.unmarshalCaddyfile(d); err == nil {
			t.Errorf("accepted: %s", bad)
		}
	}
	own := newTestKey(t, "own-1", "ES256")
	for _, c := range []struct {
		tok  ContactToken
		want string
	}{
		{ContactToken{SignKeys: []TokenKey{{KID: "own-1", File: own.writePEM(t, true)}}, BackchannelLogout: &BackchannelLogout{}}, "jwks_url or key"},
		{ContactToken{JWKSURL: "https://idp.test/jwks", Issuer: "x", Audience: []string{"y"}, UserClaim: "email", BackchannelLogout: &BackchannelLogout{}}, "user_claim"},
	} {
		if err := c.tok.validate("acme"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("validate %+v: %v, want %q", c.tok, err, c.want)
		}
	}
	// Defaults from the contact token.
	es := newTestKey(t, "es-1", "ES256")
	jwks := startJWKSServer(t, es.jwk(t, true))
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {ContactToken: &ContactToken{
		Issuer: testIssuer, Audience: []string{testAudience}, JWKSURL: jwks.URL, BackchannelLogout: &BackchannelLogout{},
	}}})
	got := a.Tenants["acme"].ContactToken.BackchannelLogout
	if got.Issuer != testIssuer || len(got.Audience) != 1 || got.Audience[0] != testAudience || time.Duration(got.MaxAge) != defaultLogoutMaxAge {
		t.Fatalf("defaults: %+v", got)
	}
}
