package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/idlink/idlink/testenv"
	"github.com/idlink/idlink/webhook"
)

const bclWebhookSecret = "whsec-backchannel-e2e"

// backchannelCaddyfile is one instance of a pair on redisURL: tenant acme
// verifies the provider's contact tokens (ES256 by JWKS, RS256 by PEM) and
// accepts its logout tokens; sessions up to 3 per user; events to hook.
func backchannelCaddyfile(redisURL string, port int, jwksURL, hook string) string {
	return fmt.Sprintf(`{
	idlink {
		redis %s
		redis_timeout 500ms
		tenant acme {
			contact_token {
				jwks_url %s
				key rs-1 {env.IDLINK_BCL_RSA}
				issuer %s
				audience %s
				backchannel_logout {
					max_age 2m
				}
			}
			sessions {
				max 3
				idle 1h
			}
			webhook %s {
				secret %s
				poll_interval 20ms
			}
		}
	}
}

http://127.0.0.1:%d {
	handle_path /idlink/* {
		idlink_api acme
	}
	route /app {
		idlink acme
		respond "{idlink.user_id} {idlink.source}" 200
	}
}
`, redisURL, jwksURL, testIssuer, testAudience, hook, bclWebhookSecret, port)
}

// logoutClaims are the claims of a valid logout token for sub.
func logoutClaims(sub, jti string, now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": testIssuer, "aud": testAudience, "sub": sub, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
		"jti":    jti,
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}},
	}
}

// TestBackchannelLogoutE2E runs back-channel logout through two real Caddy
// processes on one Redis: a valid logout token posted to one instance ends
// every session of its user, and the other instance, warm on one of them,
// refuses it within a second (measured over 20 logouts); the webhook hears
// session.ended with reason logged_out; other users keep their sessions;
// replays and every malformed token are 400 invalid_request with an
// error_description.
func TestBackchannelLogoutE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a shared Redis (two instances)")
	}
	es := newTestKey(t, "es-1", "ES256")
	rs := newTestKey(t, "rs-1", "RS256")
	jwks := startJWKSServer(t, es.jwk(t, true))
	t.Setenv("IDLINK_BCL_RSA", rs.writePEM(t, false))

	var mu sync.Mutex
	var ended []map[string]any // data of the session.ended events received
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ev webhook.Event
		if err := webhook.Verify(req.Header.Get(webhook.SignatureHeader), body, []string{bclWebhookSecret}, time.Minute, time.Now()); err != nil || json.Unmarshal(body, &ev) != nil {
			t.Errorf("webhook delivery %s: %v", body, err)
		}
		if ev.Type == "session.ended" {
			var d map[string]any
			_ = json.Unmarshal(ev.Data, &d)
			mu.Lock()
			ended = append(ended, d)
			mu.Unlock()
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	bases := startCaddyPair(t, func(port int) string { return backchannelCaddyfile(r.URL(), port, jwks.URL, hook.URL) }, "/app")
	do := func(req *http.Request) (int, http.Header, string) {
		t.Helper()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}
	login := func(instance int, sub string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, bases[instance]+"/idlink/sessions", nil)
		req.Header.Set("Authorization", "Bearer "+es.sign(t, goodClaims(sub, time.Now()), nil))
		status, _, body := do(req)
		var res startSessionResponse
		if status != http.StatusCreated || json.Unmarshal([]byte(body), &res) != nil {
			t.Fatalf("login %s: %d %s", sub, status, body)
		}
		return res.SessionID
	}
	use := func(instance int, sid string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, bases[instance]+"/app", nil)
		req.Header.Set(hdrSessionID, sid)
		status, _, body := do(req)
		return status, body
	}
	post := func(instance int, contentType, body string) (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodPost, bases[instance]+"/idlink/backchannel-logout", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		return do(req)
	}
	logout := func(instance int, token string) (int, http.Header, string) {
		return post(instance, "application/x-www-form-urlencoded", url.Values{"logout_token": {token}}.Encode())
	}
	invalid := func(what string, status int, h http.Header, body string) {
		t.Helper()
		var e struct{ Error, ErrorDescription string }
		var raw map[string]string
		_ = json.Unmarshal([]byte(body), &raw)
		e.Error, e.ErrorDescription = raw["error"], raw["error_description"]
		if status != http.StatusBadRequest || e.Error != "invalid_request" || e.ErrorDescription == "" ||
			h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: %d %v %s, want 400 invalid_request with error_description", what, status, h, body)
		}
	}

	// 1. Alice has two sessions (one warm on the other instance), Bob one.
	a1, a2, b1 := login(0, "alice"), login(1, "alice"), login(0, "bob")
	for _, sid := range []string{a1, a2, b1} {
		if status, body := use(1, sid); status != 200 {
			t.Fatalf("warm %s: %d %s", sid, status, body)
		}
	}
	tok := es.sign(t, logoutClaims("alice", "jti-alice-1", time.Now()), map[string]any{"typ": "logout+jwt"})
	status, h, body := logout(0, tok)
	if status != 200 || h.Get("Cache-Control") != "no-store" || strings.TrimSpace(body) != `{"sessions_ended":2}` {
		t.Fatalf("logout: %d %v %s", status, h, body)
	}
	for _, sid := range []string{a1, a2} {
		for i := range 2 {
			if status, body := use(i, sid); status != 401 || !strings.Contains(body, `"reason":"logged_out"`) {
				t.Fatalf("instance %d, %s after logout: %d %s", i, sid, status, body)
			}
		}
	}
	if status, body := use(1, b1); status != 200 {
		t.Fatalf("bob after alice's logout: %d %s", status, body)
	}

	// 2. Replayed: the same token again, on either instance.
	for i := range 2 {
		status, h, body := logout(i, tok)
		invalid(fmt.Sprintf("replay on %d", i), status, h, body)
		if !strings.Contains(body, "jti") {
			t.Errorf("replay: %s", body)
		}
	}

	// 3. Refused tokens end nothing.
	now := time.Now()
	with := func(mutate func(c jwt.MapClaims)) jwt.MapClaims {
		c := logoutClaims("bob", fmt.Sprintf("jti-bob-%d", time.Now().UnixNano()), now)
		mutate(c)
		return c
	}
	other := newTestKey(t, "es-1", "ES256") // same kid, another key
	for _, c := range []struct {
		name, token, want string
	}{
		{"nonce", es.sign(t, with(func(c jwt.MapClaims) { c["nonce"] = "n-1" }), nil), "nonce"},
		{"wrong aud", es.sign(t, with(func(c jwt.MapClaims) { c["aud"] = "another-client" }), nil), "audience"},
		{"wrong iss", es.sign(t, with(func(c jwt.MapClaims) { c["iss"] = "https://evil.test" }), nil), "issuer"},
		{"bad signature", other.sign(t, with(func(jwt.MapClaims) {}), nil), "signature"},
		{"no events", es.sign(t, with(func(c jwt.MapClaims) { delete(c, "events") }), nil), "events"},
		{"event not an object", es.sign(t, with(func(c jwt.MapClaims) {
			c["events"] = map[string]any{"http://schemas.openid.net/event/backchannel-logout": "yes"}
		}), nil), "JSON object"},
		{"other event", es.sign(t, with(func(c jwt.MapClaims) {
			c["events"] = map[string]any{"http://schemas.openid.net/event/other": map[string]any{}}
		}), nil), "backchannel-logout"},
		{"no jti", es.sign(t, with(func(c jwt.MapClaims) { delete(c, "jti") }), nil), "jti"},
		{"no iat", es.sign(t, with(func(c jwt.MapClaims) { delete(c, "iat") }), nil), "iat"},
		{"too old", es.sign(t, with(func(c jwt.MapClaims) { c["iat"] = now.Add(-10 * time.Minute).Unix(); delete(c, "exp") }), nil), "too long ago"},
		{"expired", es.sign(t, with(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() }), nil), "expired"},
		{"sid only", es.sign(t, with(func(c jwt.MapClaims) { delete(c, "sub"); c["sid"] = "idp-session-1" }), nil), "sid"},
		{"neither sub nor sid", es.sign(t, with(func(c jwt.MapClaims) { delete(c, "sub") }), nil), "neither"},
		{"typ of an access token", es.sign(t, with(func(jwt.MapClaims) {}), map[string]any{"typ": "at+jwt"}), "typ"},
		{"alg none", func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, with(func(jwt.MapClaims) {})).SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s + "c2ln" // a signature part, so that only the alg refuses it
		}(), "algorithm"},
		{"not a JWT", "not-a-token", "compact JWS"},
	} {
		status, h, body := logout(0, c.token)
		invalid(c.name, status, h, body)
		if !strings.Contains(body, c.want) {
			t.Errorf("%s: %s, want a description naming %q", c.name, body, c.want)
		}
	}
	if status, body := use(1, b1); status != 200 {
		t.Fatalf("bob after refused logouts: %d %s", status, body)
	}
	// The form itself.
	status, _, body = post(0, "application/json", `{"logout_token":"x"}`)
	if status != http.StatusUnsupportedMediaType {
		t.Errorf("json body: %d %s", status, body)
	}
	status, h, body = post(0, "application/x-www-form-urlencoded", "token=x")
	invalid("no logout_token", status, h, body)
	status, _, body = post(0, "application/x-www-form-urlencoded", "logout_token="+strings.Repeat("a", 64<<10))
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("large body: %d %s", status, body)
	}

	// 4. A token signed with the PEM key (RS256) ends Bob's session.
	status, _, body = logout(1, rs.sign(t, logoutClaims("bob", "jti-bob-rs", time.Now()), nil))
	if status != 200 || strings.TrimSpace(body) != `{"sessions_ended":1}` {
		t.Fatalf("RS256 logout: %d %s", status, body)
	}
	if status, _ := use(0, b1); status != 401 {
		t.Fatalf("bob after his logout: %d", status)
	}
	// A user idlink never saw: 200, nothing ended.
	status, _, body = logout(0, es.sign(t, logoutClaims("nobody", "jti-nobody", time.Now()), nil))
	if status != 200 || strings.TrimSpace(body) != `{"sessions_ended":0}` {
		t.Fatalf("unknown user: %d %s", status, body)
	}

	// 5. Latency: a session warm on instance 1 is refused there after a
	// logout posted to instance 0.
	var lat []time.Duration
	for i := range 20 {
		sub := fmt.Sprintf("lat-%d", i)
		sid := login(0, sub)
		if status, body := use(1, sid); status != 200 {
			t.Fatalf("warm %s: %d %s", sub, status, body)
		}
		tok := es.sign(t, logoutClaims(sub, "jti-"+sub, time.Now()), nil)
		start := time.Now()
		if status, _, body := logout(0, tok); status != 200 {
			t.Fatalf("logout %s: %d %s", sub, status, body)
		}
		for {
			if status, _ := use(1, sid); status == 401 {
				break
			}
			if time.Since(start) > time.Second {
				t.Fatalf("%s still accepted on instance 1 a second after its logout on instance 0", sub)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("back-channel logout on instance 0 → session refused on instance 1: p50 %v, p90 %v, max %v (20 logouts, response included)",
		lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)*9/10].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))

	// 6. The webhook heard every end, with reason logged_out.
	want := append([]string{a1, a2, b1}, nil...)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := map[string]string{}
		for _, d := range ended {
			sid, _ := d["session_id"].(string)
			reason, _ := d["reason"].(string)
			got[sid] = reason
		}
		mu.Unlock()
		missing := ""
		for _, sid := range want {
			if got[sid] != "logged_out" {
				missing = sid + " (" + got[sid] + ")"
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session.ended with reason logged_out for %s: %v", missing, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
