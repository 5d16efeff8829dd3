package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/idlink/idlink/testenv"
)

// The attack tests of "report and off modes observe, never bind" and of
// bound email/phone signatures. Each plays an attacker against a real
// Caddy with a recording upstream and real Redis: a report-mode platform
// (web) beside an enforced one (ios), both signing with their own secret.

const (
	bindIOSSecret = "bind-ios-secret-0123456789"
	bindWebSecret = "bind-web-secret-0123456789"
	bindAPIKey    = "bind-api-key-0123456789"
)

type bindEnv struct {
	t    *testing.T
	base string
	up   *testenv.Upstream
	own  testKey // the tenant's signing key
}

func startBindEnv(t *testing.T, tenantExtra string) *bindEnv {
	t.Helper()
	return startBindEnvWith(t, tenantExtra, "")
}

// startBindEnvWith is startBindEnv with lines added to the tenant's
// contact_token block too.
func startBindEnvWith(t *testing.T, tenantExtra, tokenExtra string) *bindEnv {
	t.Helper()
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("no redis-server")
	}
	own := newTestKey(t, "own-1", "EdDSA")
	t.Setenv("IDLINK_BIND_SIGN_KEY", own.writePEM(t, true))
	t.Setenv("IDLINK_BIND_IOS", bindIOSSecret)
	t.Setenv("IDLINK_BIND_WEB", bindWebSecret)
	digest := sha256.Sum256([]byte(bindAPIKey))
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		redis %s
		tenant acme {
			platform ios {
				secret {env.IDLINK_BIND_IOS}
				mode enforce
			}
			platform web {
				secret {env.IDLINK_BIND_WEB}
				mode report
			}
			platform legacy {
				mode off
			}
			default_platform ios
			contact_token {
				issuer %s
				audience %s
				sign_key own-1 {env.IDLINK_BIND_SIGN_KEY}
				%s
			}
			sessions {
				max 1
			}
			api_key %s user.read
			%s
		}
	}
}

http://127.0.0.1:%d {
	idlink acme {
		api /idlink
	}
	reverse_proxy %s
}
`, r.URL(), testIssuer, testAudience, tokenExtra, hex.EncodeToString(digest[:]), tenantExtra, port, up.Addr()))
	return &bindEnv{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), up: up, own: own}
}

// do sends a request and returns the status, the body and what the
// upstream received (nil if nothing reached it).
func (e *bindEnv) do(method, path, body string, headers ...string) (int, string, http.Header) {
	e.t.Helper()
	e.up.Reset()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if last, ok := e.up.Last(); ok {
		return resp.StatusCode, string(b), last.Header
	}
	return resp.StatusCode, string(b), nil
}

// login is POST /sessions; it returns the decoded answer.
func (e *bindEnv) login(wantStatus int, body string, headers ...string) map[string]any {
	e.t.Helper()
	status, b, _ := e.do("POST", "/idlink/sessions", body, headers...)
	if status != wantStatus {
		e.t.Fatalf("POST /sessions: %d %s, want %d", status, b, wantStatus)
	}
	var m map[string]any
	_ = json.Unmarshal([]byte(b), &m)
	return m
}

func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

// A report-mode login with an unsigned external id gets no contact token,
// and cannot refresh one from its session: a token never says more than
// its session knows.
func TestAttackReportLoginMintsNoVerifiedToken(t *testing.T) {
	e := startBindEnv(t, "")
	res := e.login(201, "", "X-Platform", "web", "X-External-Id", "victim")
	if tok := str(res, "contact_token"); tok != "" {
		_, _, got := e.do("GET", "/app", "", "Authorization", "Bearer "+tok)
		t.Fatalf("a report-mode login with an unsigned external id got a contact token; with it the upstream saw X-Identity-Verified=%q X-External-Id=%q",
			got.Get("X-Identity-Verified"), got.Get("X-External-Id"))
	}
	if v, ok := res["verified"].(bool); !ok || v {
		t.Fatalf("POST /sessions answer: verified = %v, want false: %v", res["verified"], res)
	}
	sid := str(res, "session_id")
	status, body, _ := e.do("POST", "/idlink/contact-token", "", "X-Session-Id", sid)
	if status != http.StatusForbidden || !strings.Contains(body, "session_unverified") {
		t.Fatalf("POST /contact-token for an unverified session: %d %s, want 403 session_unverified", status, body)
	}
	// The session itself passes, unverified.
	if status, body, got := e.do("GET", "/app", "", "X-Session-Id", sid); status != 200 ||
		got.Get("X-Identity-Verified") != "false" || got.Get("X-External-Id") != "victim" {
		t.Fatalf("unverified session: %d %s %v", status, body, got)
	}
	// An off-mode login is no different.
	if res := e.login(201, "", "X-Platform", "legacy", "X-External-Id", "victim"); str(res, "contact_token") != "" {
		t.Fatalf("an off-mode login got a contact token: %v", res)
	}
	// A verified login gets its token, which reads as verified.
	res = e.login(201, "", "X-Platform", "ios", "X-External-Id", "victim", "X-External-Id-Signature", sign(bindIOSSecret, "victim"))
	tok := str(res, "contact_token")
	if tok == "" || res["verified"] != true {
		t.Fatalf("verified login: %v", res)
	}
	if status, body, got := e.do("GET", "/app", "", "Authorization", "Bearer "+tok); status != 200 || got.Get("X-Identity-Verified") != "true" {
		t.Fatalf("verified token: %d %s %v", status, body, got)
	}
}

// A token bound to an unverified session (one an earlier version issued,
// signed with the tenant's own key) reads as its session does: unverified.
func TestAttackTokenOfUnverifiedSessionReadsUnverified(t *testing.T) {
	e := startBindEnv(t, "")
	res := e.login(201, "", "X-Platform", "web", "X-External-Id", "victim")
	now := time.Now()
	tok := e.own.sign(t, jwt.MapClaims{
		"iss": "idlink/acme", "aud": testAudience, "sub": str(res, "user_id"), "sid": str(res, "session_id"),
		"external_id": "victim", "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	}, nil)
	status, body, got := e.do("GET", "/app", "", "Authorization", "Bearer "+tok)
	if status != 200 || got.Get("X-Identity-Source") != "contact_token" {
		t.Fatalf("token of an unverified session: %d %s", status, body)
	}
	if v := got.Get("X-Identity-Verified"); v != "false" {
		t.Fatalf("a token bound to an unverified session reached the upstream with X-Identity-Verified=%q X-External-Id=%q", v, got.Get("X-External-Id"))
	}
}

// Pre-account-takeover: an attacker's install, logged in with an unsigned
// report-mode external id, is not linked to the victim, and the victim's
// real login does not adopt the attacker's anonymous user. Nor does the
// unverified login write the victim's attributes.
func TestAttackReportLoginNeverBinds(t *testing.T) {
	e := startBindEnv(t, "")
	status, body, _ := e.do("POST", "/idlink/installs", "")
	var inst map[string]any
	if status != 201 || json.Unmarshal([]byte(body), &inst) != nil {
		t.Fatalf("POST /installs: %d %s", status, body)
	}
	installID, anon := str(inst, "install_id"), str(inst, "user_id")
	for _, platform := range []string{"web", "legacy"} {
		res := e.login(201, `{"external_attributes":{"contact_id":"attacker","plan":"pwned"}}`,
			"X-Install-Id", installID, "X-Platform", platform, "X-External-Id", "victim")
		if str(res, "user_id") == anon {
			t.Fatalf("%s: the unverified login took the install's anonymous user %s", platform, anon)
		}
	}
	// The install still belongs to its anonymous user.
	if status, body, got := e.do("GET", "/app", "", "X-Install-Id", installID); status != 200 || got.Get("X-Platform-User-Id") != anon {
		t.Fatalf("install after the unverified login: %d %s %v (want user %s)", status, body, got, anon)
	}
	// The victim's real login: a user of its own, not the attacker's.
	res := e.login(201, "", "X-Platform", "ios", "X-External-Id", "victim", "X-External-Id-Signature", sign(bindIOSSecret, "victim"))
	victim := str(res, "user_id")
	if victim == "" || victim == anon {
		t.Fatalf("the victim's signed login answered the attacker's pre-made anonymous user %s: %v", anon, res)
	}
	// No attribute the attacker sent was stored.
	status, body, _ = e.do("GET", "/idlink/users/"+victim, "", "X-Api-Key", bindAPIKey)
	if status != 200 {
		t.Fatalf("GET /users: %d %s", status, body)
	}
	var user struct {
		Attributes map[string]any `json:"attributes"`
	}
	if err := json.Unmarshal([]byte(body), &user); err != nil || len(user.Attributes) != 0 {
		t.Fatalf("the unverified login wrote the victim's attributes: %s", body)
	}
}

// An unverified login never evicts a verified session: unverified
// sessions are kept apart from the verified ones under the limit.
func TestAttackReportLoginEvictsNoVerifiedSession(t *testing.T) {
	e := startBindEnv(t, "")
	res := e.login(201, "", "X-Platform", "ios", "X-External-Id", "victim", "X-External-Id-Signature", sign(bindIOSSecret, "victim"))
	victimSession := str(res, "session_id")
	for i := 0; i < 2; i++ {
		res := e.login(201, "", "X-Platform", "web", "X-External-Id", "victim")
		if ev, _ := res["evicted"].([]any); len(ev) > 0 && ev[0] == victimSession {
			t.Fatalf("an unsigned report-mode login evicted the victim's verified session: %v", res)
		}
	}
	if status, body, got := e.do("GET", "/app", "", "X-Session-Id", victimSession); status != 200 || got.Get("X-Identity-Verified") != "true" {
		t.Fatalf("the victim's verified session after unverified logins: %d %s", status, body)
	}
	// A second verified login does take its place (max 1).
	res = e.login(201, "", "X-Platform", "ios", "X-External-Id", "victim", "X-External-Id-Signature", sign(bindIOSSecret, "victim"))
	if ev, _ := res["evicted"].([]any); len(ev) != 1 || ev[0] != victimSession {
		t.Fatalf("verified login: evicted %v, want [%s]", res["evicted"], victimSession)
	}
}

// boundSig is the default email/phone signature: bound to the external id
// and to the field.
func boundSig(secret, field, externalID, value string) string {
	return sign(secret, field+"\n"+externalID+"\n"+value)
}

// Signed email and phone are accepted only beside a verified external id,
// and only as signed for that external id and that field.
func TestAttackSignedEmailAndPhoneAreBound(t *testing.T) {
	e := startBindEnv(t, "")
	mallory := []string{"X-Platform", "ios", "X-External-Id", "mallory", "X-External-Id-Signature", sign(bindIOSSecret, "mallory")}
	cases := []struct {
		name    string
		headers []string
	}{
		{"an external-id signature used as an email signature",
			append(append([]string{}, mallory...), "X-User-Email", "ceo@corp.com", "X-User-Email-Signature", sign(bindIOSSecret, "ceo@corp.com"))},
		{"another user's captured email signature",
			append(append([]string{}, mallory...), "X-User-Email", "ceo@corp.com", "X-User-Email-Signature", boundSig(bindIOSSecret, "email", "ceo", "ceo@corp.com"))},
		{"a phone signature used as an email signature",
			append(append([]string{}, mallory...), "X-User-Email", "+15550100", "X-User-Email-Signature", boundSig(bindIOSSecret, "phone", "mallory", "+15550100"))},
		{"an email signature beside an unsigned report-mode id",
			[]string{"X-Platform", "web", "X-External-Id", "ceo", "X-User-Email", "ceo@corp.com", "X-User-Email-Signature", sign(bindWebSecret, "ceo@corp.com")}},
		{"a bound email signature beside an unsigned report-mode id",
			[]string{"X-Platform", "web", "X-External-Id", "ceo", "X-User-Email", "ceo@corp.com", "X-User-Email-Signature", boundSig(bindWebSecret, "email", "ceo", "ceo@corp.com")}},
		{"an email signature alone",
			[]string{"X-User-Email", "ceo@corp.com", "X-User-Email-Signature", sign(bindIOSSecret, "ceo@corp.com")}},
		{"a phone signature beside an unsigned report-mode id",
			[]string{"X-Platform", "web", "X-External-Id", "ceo", "X-User-Phone", "+15550100", "X-User-Phone-Signature", sign(bindWebSecret, "+15550100")}},
	}
	for _, c := range cases {
		status, body, got := e.do("GET", "/app", "", c.headers...)
		if got != nil && (got.Get("X-Verified-Email") != "" || got.Get("X-Verified-Phone") != "") {
			t.Errorf("%s: the upstream saw X-Verified-Email=%q X-Verified-Phone=%q", c.name, got.Get("X-Verified-Email"), got.Get("X-Verified-Phone"))
		} else if got == nil && status != http.StatusUnauthorized {
			t.Errorf("%s: %d %s", c.name, status, body)
		}
	}
	// Mallory's own, bound signatures verify.
	h := append(append([]string{}, mallory...),
		"X-User-Email", "mallory@example.com", "X-User-Email-Signature", boundSig(bindIOSSecret, "email", "mallory", "mallory@example.com"),
		"X-User-Phone", "+15550199", "X-User-Phone-Signature", boundSig(bindIOSSecret, "phone", "mallory", "+15550199"))
	if status, body, got := e.do("GET", "/app", "", h...); status != 200 ||
		got.Get("X-Verified-Email") != "mallory@example.com" || got.Get("X-Verified-Phone") != "+15550199" {
		t.Fatalf("bound signatures: %d %s %v", status, body, got)
	}
	// A report-mode login stores no email: its session shows none.
	res := e.login(201, "", "X-Platform", "web", "X-External-Id", "ceo",
		"X-User-Email", "ceo@corp.com", "X-User-Email-Signature", sign(bindWebSecret, "ceo@corp.com"))
	if _, _, got := e.do("GET", "/app", "", "X-Session-Id", str(res, "session_id")); got == nil || got.Get("X-Verified-Email") != "" {
		t.Fatalf("unverified session: the upstream saw X-Verified-Email=%q", got.Get("X-Verified-Email"))
	}
}

// signed_attributes plain keeps the unbound HMAC(secret, value), still
// only beside a verified external id.
func TestAttackSignedAttributesPlain(t *testing.T) {
	e := startBindEnv(t, "signed_attributes plain")
	mallory := []string{"X-Platform", "ios", "X-External-Id", "mallory", "X-External-Id-Signature", sign(bindIOSSecret, "mallory")}
	h := append(append([]string{}, mallory...), "X-User-Email", "mallory@example.com", "X-User-Email-Signature", sign(bindIOSSecret, "mallory@example.com"))
	if status, body, got := e.do("GET", "/app", "", h...); status != 200 || got.Get("X-Verified-Email") != "mallory@example.com" {
		t.Fatalf("plain signature: %d %s %v", status, body, got)
	}
	h = []string{"X-Platform", "web", "X-External-Id", "ceo", "X-User-Email", "ceo@corp.com", "X-User-Email-Signature", sign(bindWebSecret, "ceo@corp.com")}
	if _, _, got := e.do("GET", "/app", "", h...); got == nil || got.Get("X-Verified-Email") != "" {
		t.Fatalf("plain signature beside an unverified id: X-Verified-Email=%q", got.Get("X-Verified-Email"))
	}
}

// TestAttackUnverifiedExternalIDBesideAnotherCredential: an external id
// that did not verify (report or off mode) names nobody when another
// credential is present: beside an install or a verified session of
// another user, the request is that credential's (report mode observes,
// it never refuses), the upstream never sees the unverified id, and the
// unverified id never takes the other credential's user either.
func TestAttackUnverifiedExternalIDBesideAnotherCredential(t *testing.T) {
	e := startBindEnv(t, "")
	status, body, _ := e.do("POST", "/idlink/installs", "")
	var inst struct {
		InstallID string `json:"install_id"`
		UserID    string `json:"user_id"`
	}
	if status != 201 || json.Unmarshal([]byte(body), &inst) != nil {
		t.Fatalf("install: %d %s", status, body)
	}
	sess := e.login(201, "", "X-External-Id", "bob", "X-External-Id-Signature", sign(bindIOSSecret, "bob"))
	for _, c := range []struct {
		name, platform string
		other          []string
		user, source   string
	}{
		{"report mode, install", "web", []string{"X-Install-Id", inst.InstallID}, inst.UserID, "install"},
		{"off mode, install", "legacy", []string{"X-Install-Id", inst.InstallID}, inst.UserID, "install"},
		{"report mode, session", "web", []string{"X-Session-Id", sess["session_id"].(string)}, sess["user_id"].(string), "session"},
	} {
		h := append([]string{"X-Platform", c.platform, "X-External-Id", "mallory-" + c.platform, "X-External-Id-Signature", strings.Repeat("0", 64)}, c.other...)
		status, body, got := e.do("GET", "/app", "", h...)
		if status != 200 || got == nil {
			t.Fatalf("%s: %d %s, want the request to pass as its other credential", c.name, status, body)
		}
		if got.Get("X-Platform-User-Id") != c.user || got.Get("X-Identity-Source") != c.source {
			t.Errorf("%s: upstream user %q source %q, want %q %q", c.name, got.Get("X-Platform-User-Id"), got.Get("X-Identity-Source"), c.user, c.source)
		}
		if strings.HasPrefix(got.Get("X-External-Id"), "mallory") {
			t.Errorf("%s: the unverified external id reached the upstream: %q", c.name, got.Get("X-External-Id"))
		}
	}
	// A signed external id and another user's install still disagree.
	if status, body, _ := e.do("GET", "/app", "", "X-External-Id", "carol", "X-External-Id-Signature", sign(bindIOSSecret, "carol"),
		"X-Install-Id", inst.InstallID); status != 401 || !strings.Contains(body, "identity_mismatch") {
		t.Fatalf("verified id beside another user's install: %d %s", status, body)
	}
}
