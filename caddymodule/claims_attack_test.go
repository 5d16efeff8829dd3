package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The attack tests of "claims come only from the customer backend": the
// claims of idlink's own tokens, and so their claim headers, are what the
// backend wrote (PUT /users/{user_id}/claims) or its resolver answered
// (claims_url), never what the client sent as external attributes. Each
// runs a real Caddy with a recording upstream and real Redis (bindEnv).

const claimsWriteKey = "claims-write-key-0123456789"

// claimsTenantExtra adds a user.write key to the bind tenant.
func claimsTenantExtra() string {
	d := sha256.Sum256([]byte(claimsWriteKey))
	return "api_key " + hex.EncodeToString(d[:]) + " user.write"
}

const claimsMapping = `claim_header contact_id X-Contact-Id
				claim_header predict_external_id X-Predict-Id`

// signedLogin logs in as a verified external id on the enforced platform.
func (e *bindEnv) signedLogin(ext, body string) map[string]any {
	e.t.Helper()
	return e.login(201, body, "X-Platform", "ios", "X-External-Id", ext, "X-External-Id-Signature", sign(bindIOSSecret, ext))
}

// upstreamWith sends a request with the token and returns what the
// upstream saw.
func (e *bindEnv) upstreamWith(token string) http.Header {
	e.t.Helper()
	status, body, got := e.do("GET", "/app", "", "Authorization", "Bearer "+token)
	if status != 200 || got == nil {
		e.t.Fatalf("GET /app with the token: %d %s", status, body)
	}
	return got
}

// refresh is POST /contact-token by session id; it returns the status and
// the decoded answer.
func (e *bindEnv) refresh(sid string) (int, map[string]any, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.base+"/idlink/contact-token", nil)
	req.Header.Set("X-Session-Id", sid)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, m, resp.Header
}

// External attributes are written by the client: a verified user who
// sends contact_id as an attribute does not get it into the token, nor
// into X-Contact-Id.
func TestAttackAttributesNeverBecomeClaims(t *testing.T) {
	e := startBindEnvWith(t, "", claimsMapping)
	res := e.signedLogin("alice", `{"external_attributes":{"contact_id":"someone-else","predict_external_id":"p-victim"}}`)
	tok := str(res, "contact_token")
	if tok == "" {
		t.Fatalf("no contact_token: %v", res)
	}
	got := e.upstreamWith(tok)
	if got.Get("X-Contact-Id") != "" || got.Get("X-Predict-Id") != "" {
		t.Fatalf("client-written attributes reached the upstream as claim headers: X-Contact-Id=%q X-Predict-Id=%q",
			got.Get("X-Contact-Id"), got.Get("X-Predict-Id"))
	}
	// Refreshing does not pick them up either.
	status, ans, _ := e.refresh(str(res, "session_id"))
	if status != 200 {
		t.Fatalf("refresh: %d %v", status, ans)
	}
	if got := e.upstreamWith(str(ans, "contact_token")); got.Get("X-Contact-Id") != "" {
		t.Fatalf("a refreshed token carries the attribute: X-Contact-Id=%q", got.Get("X-Contact-Id"))
	}
	// They are still stored and shown: data about the user, not identity.
	_, body, _ := e.do("GET", "/idlink/users/"+str(res, "user_id"), "", "X-Api-Key", bindAPIKey)
	var user struct {
		Attributes map[string]any `json:"attributes"`
		Claims     map[string]any `json:"claims"`
	}
	if err := json.Unmarshal([]byte(body), &user); err != nil || user.Attributes["contact_id"] != "someone-else" || len(user.Claims) != 0 {
		t.Fatalf("GET /users: %s", body)
	}
}

// PUT /users/{user_id}/claims: the backend's claims fill the user's next
// tokens; only a user.write key may write them, and they are checked.
func TestClaimsAPI(t *testing.T) {
	e := startBindEnvWith(t, claimsTenantExtra(), claimsMapping)
	res := e.signedLogin("alice", "")
	userID, sid := str(res, "user_id"), str(res, "session_id")
	put := func(key, user, body string) (int, string) {
		t.Helper()
		status, b, _ := e.do("PUT", "/idlink/users/"+user+"/claims", body, "X-Api-Key", key)
		return status, b
	}

	// Who may write: a user.write key, nobody else.
	for _, c := range []struct {
		key, code string
		status    int
	}{{"", "invalid_api_key", 401}, {"wrong-key", "invalid_api_key", 401}, {bindAPIKey, "insufficient_scope", 403}} {
		if status, b := put(c.key, userID, `{"claims":{"contact_id":"c-evil"}}`); status != c.status || !strings.Contains(b, c.code) {
			t.Fatalf("PUT claims with key %q: %d %s, want %d %s", c.key, status, b, c.status, c.code)
		}
	}
	// What may be written.
	for _, c := range []struct{ body, code string }{
		{`{"claims":{"contact_id":{"nested":1}}}`, "invalid_request"},
		{`{"claims":{"contact_id":"a\nb"}}`, "invalid_request"},
		{`{"claims":{"sub":"u_other"}}`, "invalid_request"},
		{`{"claims":{"external_id":"bob"}}`, "invalid_request"},
		{`{"claims":{"contact_id":"a","contact_id":"b"}}`, "invalid_request"},
		{`{"claims":[1]}`, "invalid_request"},
		{`{}`, "invalid_request"},
		{`{"claims":{"big":"` + strings.Repeat("x", 1000) + `","big2":"` + strings.Repeat("y", 1000) + `","a":"` + strings.Repeat("z", 1000) +
			`","b":"` + strings.Repeat("z", 1000) + `","c":"` + strings.Repeat("z", 1000) + `","d":"` + strings.Repeat("z", 1000) +
			`","e":"` + strings.Repeat("z", 1000) + `","f":"` + strings.Repeat("z", 1000) + `","g":"` + strings.Repeat("z", 1000) + `"}}`, "claims_too_large"},
	} {
		if status, b := put(claimsWriteKey, userID, c.body); status < 400 || !strings.Contains(b, c.code) {
			t.Fatalf("PUT %s: %d %s, want %s", c.body, status, b, c.code)
		}
	}
	if status, b := put(claimsWriteKey, "u_0aNoSuchUserAAAAAAAAAAAAAAAAAAAAA", `{"claims":{"contact_id":"c"}}`); status != 404 || !strings.Contains(b, "user_not_found") {
		t.Fatalf("PUT claims of an unknown user: %d %s", status, b)
	}
	// An install's anonymous user expires (install_ttl) until a link names
	// it: it takes no claims, which would outlive it.
	status, ib, _ := e.do("POST", "/idlink/installs", "")
	var created map[string]any
	if status != 201 || json.Unmarshal([]byte(ib), &created) != nil {
		t.Fatalf("POST /installs: %d %s", status, ib)
	}
	if status, b := put(claimsWriteKey, str(created, "user_id"), `{"claims":{"contact_id":"c-anon"}}`); status != 409 || !strings.Contains(b, "user_expires") {
		t.Fatalf("PUT claims of an expiring anonymous user: %d %s", status, b)
	}

	// Written: the answer shows them, the next token carries them.
	status, b := put(claimsWriteKey, userID, `{"claims":{"contact_id":"c-alice","predict_external_id":"p-alice","tier":3}}`)
	if status != 200 || !strings.Contains(b, `"claims":{"contact_id":"c-alice","predict_external_id":"p-alice","tier":3}`) {
		t.Fatalf("PUT claims: %d %s", status, b)
	}
	code, ans, _ := e.refresh(sid)
	if code != 200 {
		t.Fatalf("refresh: %d %v", code, ans)
	}
	got := e.upstreamWith(str(ans, "contact_token"))
	if got.Get("X-Contact-Id") != "c-alice" || got.Get("X-Predict-Id") != "p-alice" || got.Get("X-Platform-User-Id") != userID {
		t.Fatalf("upstream after PUT claims: %v", got)
	}
	// Merge (default) keeps the others; merge false replaces.
	if status, b := put(claimsWriteKey, userID, `{"claims":{"contact_id":"c-2"}}`); status != 200 || !strings.Contains(b, `"predict_external_id":"p-alice"`) {
		t.Fatalf("merge: %d %s", status, b)
	}
	if status, b := put(claimsWriteKey, userID, `{"claims":{"contact_id":"c-3"},"merge":false}`); status != 200 || !strings.Contains(b, `"claims":{"contact_id":"c-3"}`) {
		t.Fatalf("replace: %d %s", status, b)
	}
	_, ans, _ = e.refresh(sid)
	if got := e.upstreamWith(str(ans, "contact_token")); got.Get("X-Contact-Id") != "c-3" || got.Get("X-Predict-Id") != "" {
		t.Fatalf("upstream after replace: %v", got)
	}
	_, body, _ := e.do("GET", "/idlink/users/"+userID, "", "X-Api-Key", bindAPIKey)
	if !strings.Contains(body, `"claims":{"contact_id":"c-3"}`) {
		t.Fatalf("GET /users does not show the claims: %s", body)
	}
	// A new login gets them straight away.
	res = e.signedLogin("alice", "")
	if got := e.upstreamWith(str(res, "contact_token")); got.Get("X-Contact-Id") != "c-3" {
		t.Fatalf("login after PUT claims: %v", got)
	}
}

// claimsBackend is a real claims_url resolver.
type claimsBackend struct {
	srv    *httptest.Server
	calls  atomic.Int64
	mu     sync.Mutex
	bodies []map[string]any
	auth   []string
	answer func(w http.ResponseWriter, body map[string]any)
}

func startClaimsBackend(t *testing.T) *claimsBackend {
	b := &claimsBackend{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.calls.Add(1)
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		b.mu.Lock()
		b.bodies = append(b.bodies, body)
		b.auth = append(b.auth, r.Header.Get("Authorization"))
		answer := b.answer
		b.mu.Unlock()
		answer(w, body)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *claimsBackend) set(f func(w http.ResponseWriter, body map[string]any)) {
	b.mu.Lock()
	b.answer = f
	b.mu.Unlock()
}

// claims_url: asked synchronously at login and refresh with the user, its
// answer cached with a bound, and when it cannot answer no token (and no
// session) at all: 503 claims_unavailable with Retry-After.
func TestClaimsResolver(t *testing.T) {
	b := startClaimsBackend(t)
	b.set(func(w http.ResponseWriter, body map[string]any) {
		ext, _ := body["external_id"].(string)
		fmt.Fprintf(w, `{"claims":{"contact_id":"c-%s","predict_external_id":"p-%s","unmapped":{"x":1}}}`, ext, ext)
	})
	t.Setenv("IDLINK_TEST_CLAIMS_TOKEN", "claims-secret")
	e := startBindEnvWith(t, claimsTenantExtra(), claimsMapping+`
				claims_url `+b.srv.URL+`/claims {
					header Authorization "Bearer {env.IDLINK_TEST_CLAIMS_TOKEN}"
					timeout 300ms
					cache_ttl 1s
				}`)

	res := e.signedLogin("alice", "")
	userID := str(res, "user_id")
	got := e.upstreamWith(str(res, "contact_token"))
	if got.Get("X-Contact-Id") != "c-alice" || got.Get("X-Predict-Id") != "p-alice" {
		t.Fatalf("upstream with the resolver's claims: %v", got)
	}
	b.mu.Lock()
	first, auth := b.bodies[0], b.auth[0]
	b.mu.Unlock()
	if first["tenant"] != "acme" || first["user_id"] != userID || first["external_id"] != "alice" || auth != "Bearer claims-secret" {
		t.Fatalf("the resolver was asked %v with Authorization %q", first, auth)
	}
	// Cached: a refresh within cache_ttl asks nothing.
	if code, ans, _ := e.refresh(str(res, "session_id")); code != 200 || b.calls.Load() != 1 {
		t.Fatalf("refresh within cache_ttl: %d %v, %d resolver calls", code, ans, b.calls.Load())
	}
	// The resolver's answer wins over claims the backend wrote.
	if status, body, _ := e.do("PUT", "/idlink/users/"+userID+"/claims", `{"claims":{"contact_id":"c-stored","predict_external_id":"p-stored"}}`,
		"X-Api-Key", claimsWriteKey); status != 200 {
		t.Fatalf("PUT claims: %d %s", status, body)
	}

	// Down (5xx, then too slow, then nonsense): no token, 503 with
	// Retry-After, and the login changes nothing.
	time.Sleep(1100 * time.Millisecond) // past cache_ttl
	for name, answer := range map[string]func(w http.ResponseWriter, body map[string]any){
		"500":      func(w http.ResponseWriter, _ map[string]any) { w.WriteHeader(500) },
		"slow":     func(w http.ResponseWriter, _ map[string]any) { time.Sleep(time.Second); fmt.Fprint(w, `{"claims":{}}`) },
		"not json": func(w http.ResponseWriter, _ map[string]any) { fmt.Fprint(w, `<html>`) },
		"object":   func(w http.ResponseWriter, _ map[string]any) { fmt.Fprint(w, `{"claims":{"contact_id":{"a":1}}}`) },
		"403":      func(w http.ResponseWriter, _ map[string]any) { w.WriteHeader(403) },
	} {
		b.set(answer)
		start := time.Now()
		req, _ := http.NewRequest("POST", e.base+"/idlink/sessions", nil)
		req.Header.Set("X-Platform", "ios")
		req.Header.Set("X-External-Id", "bob")
		req.Header.Set("X-External-Id-Signature", sign(bindIOSSecret, "bob"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.Contains(string(body), codeClaimsUnavailable) || resp.Header.Get("Retry-After") != "5" {
			t.Fatalf("%s: login while the resolver is down: %d %s Retry-After=%q", name, resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
		if d := time.Since(start); d > 900*time.Millisecond {
			t.Fatalf("%s: the login waited %v for a resolver with a 300ms timeout", name, d)
		}
		code, ans, h := e.refresh(str(res, "session_id"))
		if code != 503 || ans["error"] != codeClaimsUnavailable || h.Get("Retry-After") != "5" {
			t.Fatalf("%s: refresh while the resolver is down: %d %v", name, code, ans)
		}
	}
	// bob's failed logins admitted no session.
	b.set(func(w http.ResponseWriter, _ map[string]any) { w.WriteHeader(404) })
	bob := e.signedLogin("bob", "")
	_, body, _ := e.do("GET", "/idlink/users/"+str(bob, "user_id"), "", "X-Api-Key", bindAPIKey)
	var view struct {
		Sessions []any `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(body), &view); err != nil || len(view.Sessions) != 1 {
		t.Fatalf("bob after the failed logins: %s (want the one session of the last login)", body)
	}
	// 404: the backend knows nothing of bob, whose token carries no
	// resolver claims.
	if got := e.upstreamWith(str(bob, "contact_token")); got.Get("X-Contact-Id") != "" {
		t.Fatalf("a 404 answer gave claims: %v", got)
	}

	// Back up: alice's claims are the resolver's again, over the stored ones.
	b.set(func(w http.ResponseWriter, body map[string]any) {
		fmt.Fprint(w, `{"claims":{"contact_id":"c-fresh"}}`)
	})
	code, ans, _ := e.refresh(str(res, "session_id"))
	if code != 200 {
		t.Fatalf("refresh once the resolver is back: %d %v", code, ans)
	}
	if got := e.upstreamWith(str(ans, "contact_token")); got.Get("X-Contact-Id") != "c-fresh" || got.Get("X-Predict-Id") != "p-stored" {
		t.Fatalf("upstream once the resolver is back: X-Contact-Id=%q X-Predict-Id=%q (want the resolver's contact id, the stored predict id)",
			got.Get("X-Contact-Id"), got.Get("X-Predict-Id"))
	}
}

// A claims_url that could never fill a token is refused when Caddy
// starts.
func TestClaimsResolverConfigRefused(t *testing.T) {
	for name, c := range map[string]struct {
		tok  *ContactToken
		want string
	}{
		"no claim_header": {&ContactToken{SignKeys: []TokenKey{{KID: "k", File: "/x"}}, ClaimsURL: &ClaimsResolver{URL: "https://b.example/c"}}, "needs a claim_header"},
		"no sign_key": {&ContactToken{Keys: []TokenKey{{KID: "k", File: "/x"}}, Issuer: "i", Audience: []string{"a"},
			ClaimHeaders: []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}}, ClaimsURL: &ClaimsResolver{URL: "https://b.example/c"}}, "needs sign_key"},
	} {
		if err := c.tok.validate("acme"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: validate = %v, want %q", name, err, c.want)
		}
	}
}
