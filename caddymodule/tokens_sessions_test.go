package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/store"
)

// claimsUpdate is a store update setting string claims.
func claimsUpdate(t *testing.T, kv ...string) store.AttributeUpdate {
	t.Helper()
	u := store.AttributeUpdate{Limit: maxClaimsBytes}
	for i := 0; i+1 < len(kv); i += 2 {
		k, _ := json.Marshal(kv[i])
		v, _ := json.Marshal(kv[i+1])
		u.Fields = append(u.Fields, [2]string{string(k), string(v)})
	}
	return u
}

// withIssuance makes tenant acme an issuer of contact tokens (ES256, so
// that two tokens signed in one second still differ).
func withIssuance(tb testing.TB, s *Sessions) func(a *App) {
	k := newTestKey(tb, "own-1", "ES256")
	file := k.writePEM(tb, true)
	return func(a *App) {
		a.Tenants["acme"].ContactToken = &ContactToken{
			SignKeys:     []TokenKey{{KID: "own-1", File: file}},
			ClaimHeaders: []ClaimHeader{{Claim: "contact_id", Header: "X-Contact-Id"}, {Claim: "predict_external_id", Header: "X-Predict-Id"}},
			TTL:          caddyDuration(5 * time.Minute),
		}
		a.Tenants["acme"].Sessions = s
	}
}

func bearerRequest(method, path, token string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	return r
}

type refreshAnswer struct {
	ContactToken string `json:"contact_token"`
	ExpiresAt    string `json:"expires_at"`
	UserID       string `json:"user_id"`
	SessionID    string `json:"session_id"`
}

// TestContactTokenSessionRoundTrip: login → token → the handler on another
// instance accepts the token alone → refresh → logout → the token and its
// refresh are refused on every instance within a second.
func TestContactTokenSessionRoundTrip(t *testing.T) {
	url := testRedisURL(t) // "": the embedded store, shared by both apps of this process
	a := newTestApp(t, url, withIssuance(t, nil))
	b := newTestApp(t, url, func(app *App) {
		withIssuance(t, nil)(app)
		app.Tenants["acme"].ContactToken.SignKeys = a.Tenants["acme"].ContactToken.SignKeys
	})
	waitSubscribed(t, a)
	waitSubscribed(t, b)
	apiA, apiB := newSessionsAPI(t, a), newSessionsAPI(t, b)
	hA, hB := newTestHandler(t, a, nil), newTestHandler(t, b, nil)

	// Login with attributes: the client wrote them, so none becomes a
	// claim of the token.
	w, _, _ := serve(apiA, loginRequest("alice", `{"external_attributes":{"contact_id":"c-attacker","predict_external_id":"p-9","plan":"gold"}}`))
	if w.Code != http.StatusCreated {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	var res startSessionResponse
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || res.ContactToken == "" {
		t.Fatalf("no contact_token: %s", w.Body)
	}
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(res.ContactToken, claims); err != nil {
		t.Fatal(err)
	}
	if claims["contact_id"] != nil || claims["predict_external_id"] != nil || claims["plan"] != nil {
		t.Fatalf("external attributes became claims: %v", claims)
	}
	// The backend's claims: the session's next token carries them.
	if _, _, err := a.store.SetUserClaims(t.Context(), a.Tenants["acme"].id.Keys(), res.UserID, claimsUpdate(t, "contact_id", "c-9", "predict_external_id", "p-9"), time.Now()); err != nil {
		t.Fatal(err)
	}
	bySid := httptest.NewRequest("POST", "/contact-token", nil)
	bySid.Header.Set(hdrSessionID, res.SessionID)
	w, _, _ = serve(apiA, bySid)
	var first refreshAnswer
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &first) != nil {
		t.Fatalf("refresh after the claims were set: %d %s", w.Code, w.Body)
	}
	res.ContactToken = first.ContactToken
	claims = jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(res.ContactToken, claims); err != nil {
		t.Fatal(err)
	}
	iat, _ := claims.GetIssuedAt()
	exp, _ := claims.GetExpirationTime()
	if claims["iss"] != "idlink/acme" || claims["aud"] != "acme" || claims["sub"] != res.UserID || claims["sid"] != res.SessionID ||
		claims["external_id"] != "alice" || claims["contact_id"] != "c-9" || claims["predict_external_id"] != "p-9" ||
		claims["plan"] != nil || exp.Sub(iat.Time) != 5*time.Minute {
		t.Fatalf("claims %v", claims)
	}

	// Instance B: the token alone identifies the user and the session.
	w, next, _ := serve(hB, bearerRequest("GET", "/app", res.ContactToken))
	if w.Code != 200 || next.header.Get(hdrPlatformUserID) != res.UserID || next.header.Get(hdrSessionID) != res.SessionID ||
		next.header.Get(hdrIdentitySource) != SourceContactToken || next.header.Get("X-Contact-Id") != "c-9" ||
		next.header.Get("X-Predict-Id") != "p-9" || next.header.Get("Authorization") != "" {
		t.Fatalf("token on B: %d %s %v", w.Code, w.Body, next.header)
	}
	// With the session id too: they agree.
	r := bearerRequest("GET", "/app", res.ContactToken)
	r.Header.Set(hdrSessionID, res.SessionID)
	if w, _, _ := serve(hB, r); w.Code != 200 {
		t.Fatalf("token + session: %d %s", w.Code, w.Body)
	}

	// Refresh on B, by the token and by the session id.
	refresh := func(r *http.Request) (*httptest.ResponseRecorder, refreshAnswer) {
		w, _, _ := serve(apiB, r)
		var ans refreshAnswer
		if w.Code == 200 {
			if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
				t.Fatal(err)
			}
		}
		return w, ans
	}
	w, fresh := refresh(bearerRequest("POST", "/contact-token", res.ContactToken))
	if w.Code != 200 || fresh.ContactToken == "" || fresh.ContactToken == res.ContactToken || fresh.SessionID != res.SessionID || fresh.UserID != res.UserID {
		t.Fatalf("refresh: %d %s", w.Code, w.Body)
	}
	if e, err := time.Parse(time.RFC3339, fresh.ExpiresAt); err != nil || e.Before(exp.Time) {
		t.Fatalf("expires_at %q", fresh.ExpiresAt)
	}
	bySession := httptest.NewRequest("POST", "/contact-token", nil)
	bySession.Header.Set(hdrSessionID, res.SessionID)
	if w, _ := refresh(bySession); w.Code != 200 {
		t.Fatalf("refresh by session: %d %s", w.Code, w.Body)
	}
	if w, next, _ := serve(hA, bearerRequest("GET", "/app", fresh.ContactToken)); w.Code != 200 || next.header.Get("X-Contact-Id") != "c-9" {
		t.Fatalf("refreshed token on A: %d %s", w.Code, w.Body)
	}
	// Refusals of the refresh endpoint.
	other := login(t, apiA, "bob")
	mixed := bearerRequest("POST", "/contact-token", res.ContactToken)
	mixed.Header.Set(hdrSessionID, other.SessionID)
	ext := newTestKey(t, "own-1", "ES256").sign(t, jwt.MapClaims{"sub": res.UserID, "sid": res.SessionID, "iss": "idlink/acme", "aud": "acme", "exp": time.Now().Add(time.Minute).Unix()}, nil)
	for name, c := range map[string]struct {
		r    *http.Request
		code string
	}{
		"no credential":             {httptest.NewRequest("POST", "/contact-token", nil), apierr.CodeAuthRequired},
		"token and another session": {mixed, apierr.CodeIdentityMismatch},
		"forged token":              {bearerRequest("POST", "/contact-token", ext), apierr.CodeInvalidToken},
		"garbage":                   {bearerRequest("POST", "/contact-token", "a.b.c"), apierr.CodeInvalidToken},
	} {
		w, _ := refresh(c.r)
		if code, _ := errorBody(t, w); w.Code != 401 || code != c.code {
			t.Errorf("%s: %d %s", name, w.Code, code)
		}
	}

	// Logout on A: every token of the session is refused on both
	// instances within a second, and cannot be refreshed.
	lo := httptest.NewRequest(http.MethodDelete, "/sessions/current", nil)
	lo.Header.Set(hdrSessionID, res.SessionID)
	if w, _, _ := serve(apiA, lo); w.Code != 200 {
		t.Fatalf("logout: %d", w.Code)
	}
	deadline := time.Now().Add(time.Second)
	for _, h := range []*Handler{hA, hB} {
		for _, tok := range []string{res.ContactToken, fresh.ContactToken} {
			for {
				w, next, _ := serve(h, bearerRequest("GET", "/app", tok))
				if w.Code == 401 {
					code, reason := sessionError(t, w)
					if code != apierr.CodeSessionEnded || reason != store.ReasonLoggedOut || next.called ||
						w.Header().Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
						t.Fatalf("after logout: %s %s %v", code, reason, w.Header())
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("a token of a logged-out session is still accepted after 1s")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	if w, _ := refresh(bearerRequest("POST", "/contact-token", fresh.ContactToken)); w.Code != 401 {
		t.Fatalf("refresh after logout: %d", w.Code)
	}
	// bob's session is untouched.
	if w, _, _ := serve(hB, bearerRequest("GET", "/app", other.ContactToken)); w.Code != 200 {
		t.Fatalf("another session: %d", w.Code)
	}
}

// TestContactTokenEvictedSession: a newer login that evicts a session
// (max 1) makes its token refused with the reason.
func TestContactTokenEvictedSession(t *testing.T) {
	a := newTestApp(t, testRedisURL(t), withIssuance(t, nil))
	api, h := newSessionsAPI(t, a), newTestHandler(t, a, nil)
	first := login(t, api, "roamer")
	if w, _, _ := serve(h, bearerRequest("GET", "/app", first.ContactToken)); w.Code != 200 {
		t.Fatal(w.Code)
	}
	second := login(t, api, "roamer")
	w, _, _ := serve(h, bearerRequest("GET", "/app", first.ContactToken))
	if code, reason := sessionError(t, w); w.Code != 401 || code != apierr.CodeSessionEnded || reason != store.ReasonEvicted {
		t.Fatalf("evicted: %d %s %s", w.Code, code, reason)
	}
	if w, _, _ := serve(h, bearerRequest("GET", "/app", second.ContactToken)); w.Code != 200 {
		t.Fatal(w.Code)
	}
}

// TestContactTokenNeverOutlivesSession: with a session lifetime shorter
// than the ttl, the token expires with the session.
func TestContactTokenNeverOutlivesSession(t *testing.T) {
	a := newTestApp(t, testRedisURL(t), withIssuance(t, &Sessions{Lifetime: caddyDuration(2 * time.Minute)}))
	res := login(t, newSessionsAPI(t, a), "brief")
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(res.ContactToken, claims); err != nil {
		t.Fatal(err)
	}
	exp, _ := claims.GetExpirationTime()
	end, _ := time.Parse(time.RFC3339Nano, *res.ExpiresAt)
	if exp.After(end) || end.Sub(exp.Time) > time.Second {
		t.Fatalf("token exp %v, session end %v", exp, end)
	}
}

// TestNoIssuanceWithoutSignKey: a tenant without sign_key hands out no
// token and has no refresh endpoint.
func TestNoIssuanceWithoutSignKey(t *testing.T) {
	a := newTestApp(t, testRedisURL(t), nil)
	api := newSessionsAPI(t, a)
	res := login(t, api, "plain")
	if res.ContactToken != "" {
		t.Fatal("a token without sign_key")
	}
	r := httptest.NewRequest("POST", "/contact-token", nil)
	r.Header.Set(hdrSessionID, res.SessionID)
	w, _, _ := serve(api, r)
	if code, _ := errorBody(t, w); w.Code != 404 || code != "contact_tokens_disabled" {
		t.Fatalf("%d %s", w.Code, code)
	}
	if !strings.Contains(w.Header().Get("Content-Type"), "json") {
		t.Fatal("not JSON")
	}
}

// TestLoginWithContactToken: POST /sessions accepts an external issuer's
// contact token as the login credential.
func TestLoginWithContactToken(t *testing.T) {
	ext := newTestKey(t, "ext", "ES256")
	a := newTestApp(t, testRedisURL(t), func(app *App) {
		withIssuance(t, nil)(app)
		app.Tenants["acme"].ContactToken.Keys = []TokenKey{{KID: "ext", File: ext.writePEM(t, false)}}
		app.Tenants["acme"].ContactToken.Issuer = testIssuer
		app.Tenants["acme"].ContactToken.Audience = []string{testAudience}
	})
	api := newSessionsAPI(t, a)
	r := bearerRequest("POST", "/sessions", ext.sign(t, jwt.MapClaims{"iss": testIssuer, "aud": testAudience, "sub": "carol", "exp": time.Now().Add(time.Minute).Unix()}, nil))
	w, _, _ := serve(api, r)
	var res startSessionResponse
	if w.Code != http.StatusCreated || json.Unmarshal(w.Body.Bytes(), &res) != nil || res.ContactToken == "" {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	claims := jwt.MapClaims{}
	jwt.NewParser().ParseUnverified(res.ContactToken, claims)
	if claims["external_id"] != "carol" || claims["sub"] != res.UserID {
		t.Fatalf("claims %v", claims)
	}
}

// BenchmarkHandlerSessionTokenWarm is the SDK's steady state: a request
// with only the contact token POST /sessions issued, already verified and
// its session live in the cache: no signature check, no Redis round trip.
func BenchmarkHandlerSessionTokenWarm(b *testing.B) {
	a := newTestApp(b, testRedisURL(b), withIssuance(b, &Sessions{Idle: caddyDuration(time.Hour)}))
	res := login(b, newSessionsAPI(b, a), "bench")
	h := newTestHandler(b, a, nil)
	r := bearerRequest("GET", "/app", res.ContactToken)
	w, _, _ := serve(h, r)
	if w.Code != 200 {
		b.Fatal(w.Code)
	}
	r, _ = http.NewRequest("GET", "/app", nil)
	r = r.WithContext(benchRequest("x").Context())
	bearer := "Bearer " + res.ContactToken
	rec := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(r.Header) // what the previous round set for the upstream
		r.Header[hdrAuthorization] = []string{bearer}
		if err := h.ServeHTTP(rec, r, nopNext); err != nil {
			b.Fatal(err)
		}
	}
	if r.Header.Get(hdrPlatformUserID) != res.UserID {
		b.Fatalf("not authenticated: %d %s", rec.Code, rec.Body)
	}
}
