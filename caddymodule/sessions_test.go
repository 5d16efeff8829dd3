package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// testClock is an injectable clock (app.now) safe for concurrent use.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Now().Truncate(time.Millisecond)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// withSessions sets tenant acme's session policy and the app's clock.
func withSessions(s *Sessions, c *testClock) func(a *App) {
	return func(a *App) {
		a.Tenants["acme"].Sessions = s
		if c != nil {
			a.now = c.Now
		}
	}
}

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

func caddyfileDispenser(s string) *caddyfile.Dispenser { return caddyfile.NewTestDispenser(s) }

// newSessionsAPI returns the idlink_api handler of tenant acme of app.
func newSessionsAPI(tb testing.TB, app *App) *API {
	tb.Helper()
	a := &API{Tenant: "acme", app: app, tenant: app.Tenants["acme"], logger: zap.NewNop(), mux: http.NewServeMux()}
	for pattern, h := range apiRoutes {
		a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { h(a, w, r) })
	}
	return a
}

// loginRequest is POST /sessions with a signed external id.
func loginRequest(ext, body string) *http.Request {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(http.MethodPost, "/sessions", nil)
	} else {
		r = httptest.NewRequest(http.MethodPost, "/sessions", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	if ext != "" {
		r.Header.Set(hdrExternalID, ext)
		r.Header.Set(hdrExternalIDSig, sign(testSecret, ext))
	}
	return r
}

// login starts a session and fails the test unless it got 201.
func login(tb testing.TB, api *API, ext string) startSessionResponse {
	tb.Helper()
	w, _, _ := serve(api, loginRequest(ext, ""))
	if w.Code != http.StatusCreated {
		tb.Fatalf("login %s: %d %s", ext, w.Code, w.Body)
	}
	var res startSessionResponse
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
		tb.Fatal(err)
	}
	return res
}

func sessionRequest(sid string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/profile", nil)
	r.Header.Set(hdrSessionID, sid)
	return r
}

// sessionError is a refused request's body with its reason.
func sessionError(tb testing.TB, w *httptest.ResponseRecorder) (code, reason string) {
	tb.Helper()
	var e struct{ Error, Message, Reason string }
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		tb.Fatalf("body %q: %v", w.Body, err)
	}
	if e.Reason != "" && !strings.Contains(e.Message, e.Reason) {
		tb.Fatalf("message %q does not name the reason %q", e.Message, e.Reason)
	}
	return e.Error, e.Reason
}

func TestSessionLoginAndCheck(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)

	res := login(t, api, "alice")
	if !strings.HasPrefix(res.SessionID, "s_") || !strings.HasPrefix(res.UserID, "u_") || res.ExpiresAt != nil || res.Evicted == nil {
		t.Fatalf("login answer %+v", res)
	}
	// The session alone identifies the user.
	w, next, repl := serve(h, sessionRequest(res.SessionID))
	if w.Code != 200 || !next.called {
		t.Fatalf("session request: %d %s", w.Code, w.Body)
	}
	for k, v := range map[string]string{
		hdrPlatformUserID: res.UserID, hdrIdentitySource: SourceSession, hdrIdentityVerified: "true",
		hdrSessionID: res.SessionID, hdrExternalID: "alice",
	} {
		if got := next.header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if got, _ := repl.GetString("idlink.session_id"); got != res.SessionID {
		t.Errorf("placeholder idlink.session_id %q", got)
	}
	// With the external id of the same user: source hmac, session kept.
	r := signedRequest("alice", "ios", testSecret)
	r.Header.Set(hdrSessionID, res.SessionID)
	if w, next, _ := serve(h, r); w.Code != 200 || next.header.Get(hdrIdentitySource) != SourceHMAC || next.header.Get(hdrSessionID) != res.SessionID {
		t.Fatalf("hmac+session: %d %v", w.Code, next.header)
	}
	// With another user's external id: identity_mismatch.
	r = signedRequest("mallory", "ios", testSecret)
	r.Header.Set(hdrSessionID, res.SessionID)
	if w, _, _ := serve(h, r); w.Code != 401 {
		t.Fatalf("mismatch: %d", w.Code)
	} else if code, _ := errorBody(t, w); code != apierr.CodeIdentityMismatch {
		t.Fatalf("mismatch: %s", code)
	}
	// Unknown and malformed ids.
	for _, sid := range []string{store.NewID(store.KindSession, 2), "s_bogus", res.UserID, res.SessionID + "x"} {
		w, next, _ := serve(h, sessionRequest(sid))
		if w.Code != 401 || next.called {
			t.Fatalf("%s: %d", sid, w.Code)
		}
		if code, _ := errorBody(t, w); code != apierr.CodeUnknownSession {
			t.Fatalf("%s: %s", sid, code)
		}
	}
}

func TestSessionLoginRefusals(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	api := newSessionsAPI(t, app)
	bad := loginRequest("alice", "")
	bad.Header.Set(hdrExternalIDSig, sign("wrong-secret-0123456789", "alice"))
	badBody := loginRequest("alice", `{"external_attributes": [1]}`)
	sessionOnly := loginRequest("", "")
	sessionOnly.Header.Set(hdrSessionID, login(t, api, "alice").SessionID)
	for name, tc := range map[string]struct {
		r      *http.Request
		status int
		code   string
	}{
		"anonymous":         {loginRequest("", ""), 401, apierr.CodeAuthRequired},
		"a session only":    {sessionOnly, 401, apierr.CodeAuthRequired},
		"bad signature":     {bad, 401, apierr.CodeInvalidSignature},
		"array attributes":  {badBody, 400, apierr.CodeInvalidRequest},
		"string attributes": {loginRequest("alice", `{"external_attributes": "x"}`), 400, apierr.CodeInvalidRequest},
		"not JSON":          {loginRequest("alice", `{"external_attributes": {`), 400, apierr.CodeInvalidRequest},
		"bad UTF-8":         {loginRequest("alice", "{\"external_attributes\": {\"a\": \"\xff\"}}"), 400, apierr.CodeInvalidRequest},
	} {
		w, _, _ := serve(api, tc.r)
		if w.Code != tc.status {
			t.Errorf("%s: %d %s", name, w.Code, w.Body)
			continue
		}
		if code, _ := errorBody(t, w); code != tc.code {
			t.Errorf("%s: %s", name, code)
		}
	}
}

// TestSessionReportModeUnverified: a report-mode login with a bad
// signature starts a session, but it is not a verified one.
func TestSessionReportModeUnverified(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
	r := loginRequest("walt", "")
	r.Header.Set(hdrPlatform, "web")
	r.Header.Set(hdrExternalIDSig, sign("wrong-secret-0123456789", "walt"))
	w, _, _ := serve(api, r)
	if w.Code != 201 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var res startSessionResponse
	_ = json.Unmarshal(w.Body.Bytes(), &res)
	_, next, _ := serve(h, sessionRequest(res.SessionID))
	if next.header.Get(hdrIdentityVerified) != "false" || next.header.Get(hdrIdentitySource) != SourceSession {
		t.Fatalf("report-mode session: %v", next.header)
	}
}

// TestSessionLimit: limits 1, 2 and 3, with ordered logins: the least
// recently active session is refused with session_ended: evicted, and
// the others keep working.
func TestSessionLimit(t *testing.T) { forEachStore(t, testSessionLimit) }

func testSessionLimit(t *testing.T, url string) {
	for _, max := range []int{1, 2, 3} {
		t.Run(itoa(max), func(t *testing.T) {
			c := newTestClock()
			app := newTestApp(t, url, withSessions(&Sessions{Max: max}, c))
			api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
			ext := "limit-" + itoa(max)
			var sids []string
			for i := range max + 2 {
				c.Add(time.Second)
				res := login(t, api, ext)
				sids = append(sids, res.SessionID)
				if i >= max && (len(res.Evicted) != 1 || res.Evicted[0] != sids[i-max]) {
					t.Fatalf("login %d evicted %v, want [%s]", i, res.Evicted, sids[i-max])
				}
				// Each session is used right away (warm on this instance).
				if w, _, _ := serve(h, sessionRequest(res.SessionID)); w.Code != 200 {
					t.Fatalf("new session refused: %d", w.Code)
				}
			}
			for i, sid := range sids {
				w, _, _ := serve(h, sessionRequest(sid))
				if i < 2 {
					if w.Code != 401 {
						t.Fatalf("evicted session %d: %d", i, w.Code)
					}
					if code, reason := sessionError(t, w); code != apierr.CodeSessionEnded || reason != store.ReasonEvicted {
						t.Fatalf("evicted session %d: %s %s", i, code, reason)
					}
				} else if w.Code != 200 {
					t.Fatalf("live session %d: %d %s", i, w.Code, w.Body)
				}
			}
		})
	}
}

// TestSessionLimitConcurrentTwoInstances: hundreds of concurrent logins
// of one user through two instances (two apps, one Redis) leave exactly
// max live sessions, and every other one is refused on both instances.
func TestSessionLimitConcurrentTwoInstances(t *testing.T) {
	forEachStore(t, testSessionLimitConcurrentTwoInstances)
}

func testSessionLimitConcurrentTwoInstances(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	const logins = 200
	for _, max := range []int{1, 2, 3} {
		t.Run(itoa(max), func(t *testing.T) {
			apps := []*App{
				newTestApp(t, url, withSessions(&Sessions{Max: max}, nil)),
				newTestApp(t, url, withSessions(&Sessions{Max: max}, nil)),
			}
			apis := []*API{newSessionsAPI(t, apps[0]), newSessionsAPI(t, apps[1])}
			hs := []*Handler{newTestHandler(t, apps[0], nil), newTestHandler(t, apps[1], nil)}
			ext := "crowd-" + itoa(max)
			sids := make([]string, logins)
			var evicted atomic.Int64
			var wg sync.WaitGroup
			// Both apps share one pooled client (same URL and timeout):
			// at most its 20 connections' worth of logins are in flight, so
			// none queues for a connection past its deadline on a loaded
			// machine; Redis sees the same concurrency either way.
			inflight := make(chan struct{}, 20)
			for i := range logins {
				wg.Go(func() {
					inflight <- struct{}{}
					defer func() { <-inflight }()
					res := login(t, apis[i%2], ext)
					sids[i] = res.SessionID
					evicted.Add(int64(len(res.Evicted)))
				})
			}
			wg.Wait()
			if evicted.Load() != logins-int64(max) {
				t.Fatalf("%d evicted, want %d", evicted.Load(), logins-max)
			}
			live := 0
			for _, sid := range sids {
				codes := [2]int{}
				for j, h := range hs {
					w, _, _ := serve(h, sessionRequest(sid))
					codes[j] = w.Code
				}
				if codes[0] != codes[1] {
					t.Fatalf("instances disagree on %s: %v", sid, codes)
				}
				if codes[0] == 200 {
					live++
				}
			}
			if live != max {
				t.Fatalf("%d sessions work, want %d", live, max)
			}
		})
	}
}

// TestSessionEvictionSeenByOtherInstance: a session warm in instance B's
// cache is refused by B within a second of a login on instance A evicting
// it (pub/sub invalidation), and the stream holds both events.
func TestSessionEvictionSeenByOtherInstance(t *testing.T) {
	forEachStore(t, testSessionEvictionSeenByOtherInstance)
}

func testSessionEvictionSeenByOtherInstance(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	a, b := newTestApp(t, url, nil), newTestApp(t, url, nil)
	apiA, hB := newSessionsAPI(t, a), newTestHandler(t, b, nil)
	first := login(t, apiA, "roamer")
	for range 3 { // warm on B
		if w, _, _ := serve(hB, sessionRequest(first.SessionID)); w.Code != 200 {
			t.Fatalf("first device on B: %d", w.Code)
		}
	}
	second := login(t, apiA, "roamer")
	if len(second.Evicted) != 1 || second.Evicted[0] != first.SessionID {
		t.Fatalf("evicted %v", second.Evicted)
	}
	start := time.Now()
	for {
		w, _, _ := serve(hB, sessionRequest(first.SessionID))
		if w.Code == 401 {
			if code, reason := sessionError(t, w); code != apierr.CodeSessionEnded || reason != store.ReasonEvicted {
				t.Fatalf("%s %s", code, reason)
			}
			break
		}
		if time.Since(start) > time.Second {
			t.Fatal("instance B still accepts the evicted session after 1s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("refused on the other instance after %v", time.Since(start))

	shard, _ := store.ParseID(store.KindUser, first.UserID)
	msgs, err := storeClient(t, a).XRange(context.Background(), a.Tenants["acme"].id.Keys().Events(shard), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, m := range msgs {
		if d, _ := m.Values["data"].(string); strings.Contains(d, first.SessionID) || strings.Contains(d, second.SessionID) {
			types = append(types, m.Values["type"].(string))
			if m.Values["type"] == store.EventSessionEnded && (!strings.Contains(d, `"reason":"evicted"`) || !strings.Contains(d, `"evicted_by":"`+second.SessionID)) {
				t.Fatalf("ended event %s", d)
			}
		}
	}
	if strings.Join(types, ",") != "session.started,session.started,session.ended" {
		t.Fatalf("events %v", types)
	}
}

// TestSessionLogout: DELETE /sessions/current ends the session on every
// instance, is idempotent, and the id never works again.
func TestSessionLogout(t *testing.T) { forEachStore(t, testSessionLogout) }

func testSessionLogout(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	a, b := newTestApp(t, url, nil), newTestApp(t, url, nil)
	api, hA, hB := newSessionsAPI(t, a), newTestHandler(t, a, nil), newTestHandler(t, b, nil)
	res := login(t, api, "leaver")
	for _, h := range []*Handler{hA, hB} {
		if w, _, _ := serve(h, sessionRequest(res.SessionID)); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	logout := func(sid string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodDelete, "/sessions/current", nil)
		if sid != "" {
			r.Header.Set(hdrSessionID, sid)
		}
		w, _, _ := serve(api, r)
		return w
	}
	for i := range 2 { // idempotent
		w := logout(res.SessionID)
		if w.Code != 200 || !strings.Contains(w.Body.String(), `"ended":true`) || !strings.Contains(w.Body.String(), `"logged_out"`) {
			t.Fatalf("logout %d: %d %s", i, w.Code, w.Body)
		}
	}
	deadline := time.Now().Add(time.Second)
	for _, h := range []*Handler{hA, hB} {
		for {
			w, _, _ := serve(h, sessionRequest(res.SessionID))
			if w.Code == 401 {
				if code, reason := sessionError(t, w); code != apierr.CodeSessionEnded || reason != store.ReasonLoggedOut {
					t.Fatalf("%s %s", code, reason)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("logged-out session still accepted after 1s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// A new login does not revive it.
	login(t, api, "leaver")
	if w, _, _ := serve(hA, sessionRequest(res.SessionID)); w.Code != 401 {
		t.Fatal("dead id revived by a new login")
	}
	if w := logout(""); w.Code != 401 {
		t.Fatalf("logout without a session: %d", w.Code)
	}
	if w := logout(store.NewID(store.KindSession, 1)); w.Code != 401 {
		t.Fatalf("logout of an unknown session: %d", w.Code)
	}
}

// TestSessionIdleAndLifetime with an injected clock: activity keeps a
// session alive through the idle timeout; its lifetime ends it anyway;
// without activity it ends after the idle timeout. The reason is answered
// every time afterwards.
func TestSessionIdleAndLifetime(t *testing.T) {
	c := newTestClock()
	app := newTestApp(t, testRedisURL(t), withSessions(&Sessions{Max: 2, Idle: caddy10m, Lifetime: caddy1h}, c))
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)

	res := login(t, api, "ida")
	if res.ExpiresAt == nil {
		t.Fatal("expires_at missing with a lifetime")
	}
	if exp, err := time.Parse(time.RFC3339, *res.ExpiresAt); err != nil || !exp.Equal(c.Now().Add(time.Hour)) {
		t.Fatalf("expires_at %s (%v), want %v", *res.ExpiresAt, err, c.Now().Add(time.Hour))
	}
	for range 6 { // 54 minutes of activity, every 9 minutes
		c.Add(9 * time.Minute)
		if w, _, _ := serve(h, sessionRequest(res.SessionID)); w.Code != 200 {
			t.Fatalf("active session refused: %d %s", w.Code, w.Body)
		}
	}
	c.Add(6 * time.Minute)
	for range 2 {
		w, _, _ := serve(h, sessionRequest(res.SessionID))
		if code, reason := sessionError(t, w); w.Code != 401 || code != apierr.CodeSessionEnded || reason != store.ReasonExpired {
			t.Fatalf("after the lifetime: %d %s %s", w.Code, code, reason)
		}
	}

	idle := login(t, api, "ida")
	if w, _, _ := serve(h, sessionRequest(idle.SessionID)); w.Code != 200 {
		t.Fatal(w.Code)
	}
	c.Add(10 * time.Minute)
	for range 2 {
		w, _, _ := serve(h, sessionRequest(idle.SessionID))
		if code, reason := sessionError(t, w); w.Code != 401 || code != apierr.CodeSessionEnded || reason != store.ReasonIdle {
			t.Fatalf("after the idle timeout: %d %s %s", w.Code, code, reason)
		}
	}
}

// TestSessionIdleSeenAcrossInstances: activity on one instance keeps the
// session alive on another whose own view is older than the idle timeout.
func TestSessionIdleSeenAcrossInstances(t *testing.T) {
	forEachStore(t, testSessionIdleSeenAcrossInstances)
}

func testSessionIdleSeenAcrossInstances(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	c := newTestClock()
	a := newTestApp(t, url, withSessions(&Sessions{Idle: caddy10m}, c))
	b := newTestApp(t, url, withSessions(&Sessions{Idle: caddy10m}, c))
	api, hA, hB := newSessionsAPI(t, a), newTestHandler(t, a, nil), newTestHandler(t, b, nil)
	res := login(t, api, "traveller")
	serve(hB, sessionRequest(res.SessionID))
	for range 4 { // 24 minutes of activity on A only
		c.Add(6 * time.Minute)
		if w, _, _ := serve(hA, sessionRequest(res.SessionID)); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	if w, _, _ := serve(hB, sessionRequest(res.SessionID)); w.Code != 200 {
		t.Fatalf("B ended a session active on A: %d %s", w.Code, w.Body)
	}
}

var (
	caddy10m = caddyDuration(10 * time.Minute)
	caddy1h  = caddyDuration(time.Hour)
)

// waitSubscribed waits until app hears invalidation messages, so that the
// flush its (re)subscription triggers is behind us.
func waitSubscribed(tb testing.TB, app *App) {
	tb.Helper()
	heard := make(chan struct{}, 1)
	for _, tn := range app.Tenants {
		tn.id.OnInvalidate("probe", func(string) {
			select {
			case heard <- struct{}{}:
			default:
			}
		}, nil)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if err := tn.app.store.Publish(context.Background(), tn.name, "probe", "x"); err != nil {
				tb.Fatal(err)
			}
			select {
			case <-heard:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				tb.Fatal("the app never subscribed to invalidations")
			}
		}
	}
}

// TestSessionCheckWarmNoRoundTrip: once a session is cached, requests
// cost no Redis command; its activity is written once per touch interval
// (a tenth of the idle timeout), not per request.
func TestSessionCheckWarmNoRoundTrip(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("counting commands needs a redis-server (MONITOR)")
	}
	c := newTestClock()
	app := newTestApp(t, r.URL(), withSessions(&Sessions{Idle: caddy10m}, c))
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
	waitSubscribed(t, app)
	res := login(t, api, "warm")
	// Load the lookup script (EVALSHA falls back to EVAL once per script).
	serve(h, sessionRequest(store.NewID(store.KindSession, 0)))
	counter := monitorCommands(t, r.Addr(), res.SessionID) // any command about this session

	if w, _, _ := serve(h, sessionRequest(res.SessionID)); w.Code != 200 {
		t.Fatal(w.Code)
	}
	if n := counter.count(); n != 1 {
		t.Fatalf("cold check: %d commands, want 1", n)
	}
	for range 1000 {
		c.Add(time.Millisecond)
		if w, _, _ := serve(h, sessionRequest(res.SessionID)); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	if n := counter.count(); n != 1 {
		t.Fatalf("1000 warm checks: %d commands, want none beyond the cold one", n-1)
	}
	c.Add(time.Minute) // the touch interval of a 10m idle timeout
	for range 100 {
		serve(h, sessionRequest(res.SessionID))
	}
	if n := counter.count(); n != 2 {
		t.Fatalf("after a touch interval: %d commands, want exactly one more", n-1)
	}
	shard, _ := store.ParseID(store.KindSession, res.SessionID)
	last, _ := r.Client().HGet(context.Background(), app.Tenants["acme"].id.Keys().Session(shard, res.SessionID), "last").Int64()
	if last != c.Now().UnixMilli() {
		t.Fatalf("last activity %d, want %d", last, c.Now().UnixMilli())
	}
}

// TestSessionStoredVerifiedAttributes: the email and phone a login signed
// are stored with the user and injected on session-only requests; signed
// ones on the request win.
func TestSessionStoredVerifiedAttributes(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
	r := loginRequest("vera", "")
	r.Header.Set(hdrUserEmail, "vera@example.com")
	r.Header.Set(hdrUserEmailSig, boundSig(testSecret, "email", "vera", "vera@example.com"))
	r.Header.Set(hdrUserPhone, "+3200000000")
	r.Header.Set(hdrUserPhoneSig, boundSig(testSecret, "phone", "vera", "+3200000000"))
	w, _, _ := serve(api, r)
	var res startSessionResponse
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Code != 201 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	_, next, _ := serve(h, sessionRequest(res.SessionID))
	if next.header.Get(hdrVerifiedEmail) != "vera@example.com" || next.header.Get(hdrVerifiedPhone) != "+3200000000" {
		t.Fatalf("stored verified attributes not injected: %v", next.header)
	}
	r = sessionRequest(res.SessionID)
	r.Header.Set(hdrUserEmail, "vera@new.example.com")
	r.Header.Set(hdrUserEmailSig, boundSig(testSecret, "email", "vera", "vera@new.example.com"))
	if _, next, _ := serve(h, r); next.header.Get(hdrVerifiedEmail) != "vera@new.example.com" {
		t.Fatalf("signed email on the request: %v", next.header)
	}
	// An unsigned email at login is not stored.
	r = loginRequest("otto", "")
	r.Header.Set(hdrUserEmail, "ceo@example.com")
	w, _, _ = serve(api, r)
	_ = json.Unmarshal(w.Body.Bytes(), &res)
	if _, next, _ := serve(h, sessionRequest(res.SessionID)); next.header.Get(hdrVerifiedEmail) != "" {
		t.Fatal("an unsigned email was stored as verified")
	}
}

// TestSessionAttributes through POST /sessions: merge keeps unset keys,
// replace drops them, null removes a key; exactly 8192 bytes pass, 8193
// are refused with 413 and nothing at all is stored.
func TestSessionAttributes(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	api := newSessionsAPI(t, app)
	tn := app.Tenants["acme"]
	ctx := context.Background()
	post := func(body string) (*httptest.ResponseRecorder, startSessionResponse) {
		w, _, _ := serve(api, loginRequest("attr", body))
		var res startSessionResponse
		_ = json.Unmarshal(w.Body.Bytes(), &res)
		return w, res
	}
	attrs := func(user string) string {
		v, err := userSessions(ctx, tn.id, user)
		if err != nil {
			t.Fatal(err)
		}
		return string(v.Attributes)
	}
	steps := []struct{ body, want string }{
		{`{"external_attributes": {"plan": "pro", "seats": 3, "tags": ["a", "b"]}}`, `{"plan":"pro","seats":3,"tags":["a","b"]}`},
		{`{"external_attributes": {"seats": 12345678901234567890, "nested": {"x": [] , "y": {}}}}`, `{"nested":{"x":[],"y":{}},"plan":"pro","seats":12345678901234567890,"tags":["a","b"]}`},
		{`{"external_attributes": {"tags": null, "html": "<b>&</b>"}}`, `{"html":"<b>&</b>","nested":{"x":[],"y":{}},"plan":"pro","seats":12345678901234567890}`},
		{`{}`, `{"html":"<b>&</b>","nested":{"x":[],"y":{}},"plan":"pro","seats":12345678901234567890}`},
		{`{"external_attributes": {"only": true}, "merge_external_attributes": false}`, `{"only":true}`},
	}
	var user string
	for i, s := range steps {
		w, res := post(s.body)
		if w.Code != 201 {
			t.Fatalf("step %d: %d %s", i, w.Code, w.Body)
		}
		user = res.UserID
		if got := attrs(user); got != s.want {
			t.Fatalf("step %d: %s, want %s", i, got, s.want)
		}
	}

	// The 8 KB edge, after replacing: {"k":"…"} is 8 bytes plus the value.
	exact := `{"external_attributes": {"k": "` + strings.Repeat("x", maxAttributesBytes-8) + `"}, "merge_external_attributes": false}`
	if w, _ := post(exact); w.Code != 201 {
		t.Fatalf("exactly %d bytes: %d %s", maxAttributesBytes, w.Code, w.Body)
	}
	stored := attrs(user)
	if len(stored) != maxAttributesBytes {
		t.Fatalf("stored %d bytes", len(stored))
	}
	live, _ := userSessions(ctx, tn.id, user)
	shard, _ := store.ParseID(store.KindUser, user)
	eventsBefore, _ := storeClient(t, app).XLen(ctx, tn.id.Keys().Events(shard)).Result()

	for name, body := range map[string]string{
		"one byte over, replacing": `{"external_attributes": {"k": "` + strings.Repeat("x", maxAttributesBytes-7) + `"}, "merge_external_attributes": false}`,
		"one byte over, merging":   `{"external_attributes": {"": ""}}`, // adds ,"":"" = 6 bytes
	} {
		w, _ := post(body)
		if w.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("%s: %d %s", name, w.Code, w.Body)
		}
		if code, _ := errorBody(t, w); code != apierr.CodeAttributesTooLarge {
			t.Fatalf("%s: %s", name, code)
		}
	}
	// Nothing stored: attributes, sessions and events are as before.
	if got := attrs(user); got != stored {
		t.Fatal("attributes changed by a refused login")
	}
	after, _ := userSessions(ctx, tn.id, user)
	if len(after.Sessions) != 1 || after.Sessions[0] != live.Sessions[0] {
		t.Fatalf("sessions changed by a refused login: %+v vs %+v", after.Sessions, live.Sessions)
	}
	if n, _ := storeClient(t, app).XLen(ctx, tn.id.Keys().Events(shard)).Result(); n != eventsBefore {
		t.Fatalf("%d events appended by a refused login", n-eventsBefore)
	}
}

// TestSessionAttributesConcurrentMerges: concurrent logins each adding a
// key all land (compare-and-set with retries).
func TestSessionAttributesConcurrentMerges(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), withSessions(&Sessions{Max: 50}, nil))
	api := newSessionsAPI(t, app)
	const n = 20
	var wg sync.WaitGroup
	var user atomic.Value
	for i := range n {
		wg.Go(func() {
			w, _, _ := serve(api, loginRequest("merger", `{"external_attributes": {"k`+itoa(i)+`": `+itoa(i)+`}}`))
			if w.Code != 201 {
				t.Errorf("login %d: %d %s", i, w.Code, w.Body)
				return
			}
			var res startSessionResponse
			_ = json.Unmarshal(w.Body.Bytes(), &res)
			user.Store(res.UserID)
		})
	}
	wg.Wait()
	v, err := userSessions(context.Background(), app.Tenants["acme"].id, user.Load().(string))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int
	if err := json.Unmarshal(v.Attributes, &m); err != nil || len(m) != n {
		t.Fatalf("%d keys after %d concurrent merges: %s", len(m), n, v.Attributes)
	}
}

func TestUserSessionsView(t *testing.T) {
	c := newTestClock()
	app := newTestApp(t, testRedisURL(t), withSessions(&Sessions{Max: 2}, c))
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
	first := login(t, api, "viewed")
	c.Add(time.Second)
	second := login(t, api, "viewed")
	c.Add(10 * time.Minute) // the touch interval: the request writes its activity
	serve(h, sessionRequest(first.SessionID))
	v, err := userSessions(context.Background(), app.Tenants["acme"].id, first.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Sessions) != 2 || string(v.Attributes) != "{}" {
		t.Fatalf("%+v", v)
	}
	// Least recently active first; ids as prefixes only.
	if v.Sessions[0].IDPrefix != second.SessionID[:8]+"…" || v.Sessions[1].IDPrefix != first.SessionID[:8]+"…" {
		t.Fatalf("order/prefixes: %+v", v.Sessions)
	}
	body, _ := json.Marshal(v)
	if strings.Contains(string(body), first.SessionID) || strings.Contains(string(body), second.SessionID) {
		t.Fatal("the view leaks a full session id")
	}
	if v.Sessions[1].LastActive != c.Now().UTC().Format(time.RFC3339Nano) {
		t.Fatalf("last active %s, want %s", v.Sessions[1].LastActive, c.Now().UTC().Format(time.RFC3339Nano))
	}
}

func TestParseObjectUpdate(t *testing.T) {
	f, tr := false, true
	for _, tc := range []struct {
		name, in string
		merge    *bool
		replace  bool
		fields   string
	}{
		{"sorted, compacted", "{\"b\" : [ 1 , 2 ],\n\"a\": { \"c\" : \"d e\" }}", nil, false, `"a"={"c":"d e"} "b"=[1,2]`},
		{"null kept as removal", `{"a":null}`, &tr, false, `"a"=null`},
		{"replace", `{"a":1}`, &f, true, `"a"=1`},
		{"number text kept", `{"n":1.000000000000000000001e400,"m":12345678901234567890}`, nil, false, `"m"=12345678901234567890 "n"=1.000000000000000000001e400`},
		{"no HTML escaping", `{"<k>":"a&b"}`, nil, false, `"<k>"="a&b"`},
		{"escapes as sent", `{"a\u0022":"\n"}`, nil, false, `"a\""="\n"`},
		{"empty", `{}`, nil, false, ``},
	} {
		u, aerr := parseObjectUpdate("external_attributes", json.RawMessage(tc.in), tc.merge, maxAttributesBytes)
		if aerr != nil || u == nil {
			t.Fatalf("%s: %v", tc.name, aerr)
		}
		var got []string
		for _, kv := range u.Fields {
			got = append(got, kv[0]+"="+kv[1])
		}
		if strings.Join(got, " ") != tc.fields || u.Replace != tc.replace || u.Limit != maxAttributesBytes {
			t.Fatalf("%s: %q replace=%v limit=%d", tc.name, got, u.Replace, u.Limit)
		}
	}
	for _, bad := range []string{`[]`, `"x"`, `1`, `true`, `{"a":`, "{\"a\":\"\xff\"}", `{"a":1} {}`, `{"a":1} x`,
		// One key, one value: a proxy or log in front reads the same object.
		`{"a":1,"a":2}`} {
		if _, aerr := parseObjectUpdate("external_attributes", json.RawMessage(bad), nil, maxAttributesBytes); aerr == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	for _, none := range []string{``, `null`, ` null `} {
		if u, aerr := parseObjectUpdate("external_attributes", json.RawMessage(none), nil, maxAttributesBytes); u != nil || aerr != nil {
			t.Errorf("%q: %v %v", none, u, aerr)
		}
	}
}

// FuzzParseObjectUpdate: whatever a client sends as
// external_attributes is refused, or becomes fields whose keys are JSON
// strings and whose values are compact JSON, which assemble into a valid
// object.
func FuzzParseObjectUpdate(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":null}`, `{"<":"\u2028"}`, `[1]`, `{"a":{"b":[{}]}}`, "{\"a\":\"\xff\"}", `{"a":1,"a":2}`, `{"\ud800":1}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		u, aerr := parseObjectUpdate("external_attributes", json.RawMessage(in), nil, maxAttributesBytes)
		if aerr != nil || u == nil {
			return
		}
		var b strings.Builder
		b.WriteByte('{')
		for i, kv := range u.Fields {
			var k string
			if json.Unmarshal([]byte(kv[0]), &k) != nil || !json.Valid([]byte(kv[1])) || strings.ContainsAny(kv[1], " \n\t") && !strings.Contains(kv[1], `"`) {
				t.Fatalf("field %q=%q", kv[0], kv[1])
			}
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(kv[0] + ":" + kv[1])
		}
		b.WriteByte('}')
		if !json.Valid([]byte(b.String())) {
			t.Fatalf("assembled %q", b.String())
		}
	})
}

func TestSessionsCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Sessions
		err  string
	}{
		{"sessions {\n max 3\n idle 30m\n lifetime 24h\n}", Sessions{Max: 3, Idle: caddyDuration(30 * time.Minute), Lifetime: caddyDuration(24 * time.Hour)}, ""},
		{"sessions {\n idle off\n lifetime off\n}", Sessions{Idle: -1}, ""},
		{"sessions {\n}", Sessions{}, ""},
		{"sessions 3", Sessions{}, "wrong argument count"},
		{"sessions {\n max 0\n}", Sessions{}, "from 1 to"},
		{"sessions {\n max 1001\n}", Sessions{}, "from 1 to"},
		{"sessions {\n max two\n}", Sessions{}, "from 1 to"},
		{"sessions {\n max 1\n max 2\n}", Sessions{}, "already specified"},
		{"sessions {\n idle 10ms\n}", Sessions{}, "at least 1s"},
		{"sessions {\n lifetime forever\n}", Sessions{}, "at least 1s"},
		{"sessions {\n idle\n}", Sessions{}, "wrong argument count"},
		{"sessions {\n limit 3\n}", Sessions{}, "unrecognized sessions subdirective"},
	} {
		app := new(App)
		err := app.UnmarshalCaddyfile(caddyfileDispenser("idlink {\n tenant acme {\n" + tc.in + "\n}\n}"))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := app.Tenants["acme"].Sessions; got == nil || *got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.in, got, tc.want)
		}
	}
	// Twice in one tenant.
	err := new(App).UnmarshalCaddyfile(caddyfileDispenser("idlink {\n tenant acme {\n sessions {\n}\n sessions {\n}\n}\n}"))
	if err == nil || !strings.Contains(err.Error(), "already specified") {
		t.Errorf("duplicate sessions block: %v", err)
	}
}

func TestSessionsDefaultsAndValidation(t *testing.T) {
	app := newTestApp(t, "", nil)
	tn := app.Tenants["acme"]
	p := tn.id.Sessions()
	if p.Max != 1 || p.Idle != 72*time.Hour || p.Lifetime != 0 || p.Channel != store.InvalidationChannel {
		t.Fatalf("defaults: %+v", p)
	}
	off := newTestApp(t, "", withSessions(&Sessions{Idle: -1}, nil)).Tenants["acme"]
	if off.id.Sessions().Idle != 0 {
		t.Fatalf("idle off: %+v", off.id.Sessions())
	}
	var fromJSON Sessions
	if err := json.Unmarshal([]byte(`{"max": 2, "idle": "30m", "lifetime": "24h"}`), &fromJSON); err != nil ||
		fromJSON != (Sessions{Max: 2, Idle: caddy10m * 3, Lifetime: caddy1h * 24}) {
		t.Fatalf("JSON: %+v %v", fromJSON, err)
	}
	for _, s := range []Sessions{{Max: -1}, {Max: 1001}, {Idle: caddyDuration(time.Millisecond)}, {Lifetime: caddyDuration(time.Millisecond)}} {
		tn := &Tenant{name: "x", Anonymous: AnonymousAllow, Sessions: &s}
		if err := tn.validate(); err == nil {
			t.Errorf("%+v validated", s)
		}
	}
}

// BenchmarkSessionCheckWarm is the idlink handler with a warm X-Session-Id:
// the whole request path, with no Redis round trip (checked).
func BenchmarkSessionCheckWarm(b *testing.B) {
	r := testenv.StartRedis(b)
	if r == nil {
		b.Skip("counting commands needs a redis-server (MONITOR)")
	}
	app := newTestApp(b, r.URL(), nil)
	api, h := newSessionsAPI(b, app), newTestHandler(b, app, nil)
	waitSubscribed(b, app)
	sid := login(b, api, "bench").SessionID
	serve(h, sessionRequest(sid))
	counter := monitorCommands(b, r.Addr(), sid) // any command about this session
	start := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := sessionRequest(sid)
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		next := &recordingNext{}
		w := httptest.NewRecorder()
		for pb.Next() {
			r.Header.Set(hdrSessionID, sid)
			if _ = h.ServeHTTP(w, r, next); w.Code != 200 {
				b.Fatalf("refused: %d", w.Code)
			}
		}
	})
	b.StopTimer()
	// The requests make none; the session's activity is written behind
	// them, at most once per identity.ActivityEvery (identity/activity.go),
	// plus one EVAL after the first EVALSHA finds the script unloaded.
	flushes := int(time.Since(start)/identity.ActivityEvery) + 2
	if n := counter.count(); n > flushes {
		b.Fatalf("%d Redis commands during %d warm checks (%d activity writes allowed)", n, b.N, flushes)
	}
}

// BenchmarkLogin is POST /sessions through the API handler (HMAC check,
// cached external id, one admission script) against real Redis, over
// 1000 users with the default limit of 1 (so most logins evict), with
// 16 logins in flight per CPU: ns/op is the inverse of the throughput.
func BenchmarkLogin(b *testing.B) {
	app := newTestApp(b, testRedisURL(b), nil)
	api := newSessionsAPI(b, app)
	var i atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(16) // many logins in flight, as from many devices
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ext := "bench-" + itoa(int(i.Add(1)%1000))
			if w, _, _ := serve(api, loginRequest(ext, "")); w.Code != http.StatusCreated {
				b.Fatalf("login: %d %s", w.Code, w.Body)
			}
		}
	})
}

// newInstall is POST /installs: an install id and its anonymous user.
func newInstall(tb testing.TB, api *API) (installID, userID string) {
	tb.Helper()
	w, _, _ := serve(api, httptest.NewRequest(http.MethodPost, "/installs", nil))
	var res struct {
		InstallID string `json:"install_id"`
		UserID    string `json:"user_id"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Code != 201 {
		tb.Fatalf("POST /installs: %d %s", w.Code, w.Body)
	}
	return res.InstallID, res.UserID
}

// TestSessionLoginLinksInstall: a login with X-Install-Id links the
// install: a first-seen external id takes the install's anonymous user;
// a known one moves the install to its user. The session records the
// install; a new login on the same install replaces its session, not
// another device's.
func TestSessionLoginLinksInstall(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), withSessions(&Sessions{Max: 2}, nil))
	api, h := newSessionsAPI(t, app), newTestHandler(t, app, nil)
	loginOn := func(install, ext string) (*httptest.ResponseRecorder, startSessionResponse) {
		r := loginRequest(ext, "")
		r.Header.Set(hdrInstallID, install)
		w, _, _ := serve(api, r)
		var res startSessionResponse
		_ = json.Unmarshal(w.Body.Bytes(), &res)
		return w, res
	}

	phone, anon := newInstall(t, api)
	w, first := loginOn(phone, "newbie")
	if w.Code != 201 || first.UserID != anon {
		t.Fatalf("first login on a device: %d %s; want the install's anonymous user %s", w.Code, w.Body, anon)
	}
	r := sessionRequest(first.SessionID)
	r.Header.Set(hdrInstallID, phone)
	w, next, _ := serve(h, r)
	if w.Code != 200 || next.header.Get(hdrInstallID) != phone || next.header.Get(hdrPlatformUserID) != anon {
		t.Fatalf("session + install: %d %v", w.Code, next.header)
	}
	// Without X-Install-Id the session still knows its install.
	if _, next, _ := serve(h, sessionRequest(first.SessionID)); next.header.Get(hdrInstallID) != phone {
		t.Fatalf("install of the session: %v", next.header)
	}

	// A second device of the same (now known) user moves to that user.
	tablet, tabletAnon := newInstall(t, api)
	w, second := loginOn(tablet, "newbie")
	if w.Code != 201 || second.UserID != anon || len(second.Evicted) != 0 {
		t.Fatalf("second device: %d %s", w.Code, w.Body)
	}
	if u, _ := installUserOf(app.Tenants["acme"], tablet); u != anon || u == tabletAnon {
		t.Fatalf("tablet points to %s, want %s", u, anon)
	}
	// Logging in again on the phone replaces the phone's session only.
	w, again := loginOn(phone, "newbie")
	if w.Code != 201 || len(again.Evicted) != 1 || again.Evicted[0] != first.SessionID {
		t.Fatalf("re-login on the phone: %d %s; want [%s] evicted", w.Code, w.Body, first.SessionID)
	}
	if w, _, _ := serve(h, sessionRequest(second.SessionID)); w.Code != 200 {
		t.Fatalf("the tablet lost its session: %d", w.Code)
	}

	// Unknown or malformed installs; an install-only login.
	for name, r := range map[string]*http.Request{
		"unknown": func() *http.Request {
			r := loginRequest("newbie", "")
			r.Header.Set(hdrInstallID, store.NewID(store.KindInstall, 1))
			return r
		}(),
		"malformed": func() *http.Request { r := loginRequest("newbie", ""); r.Header.Set(hdrInstallID, "i_nope"); return r }(),
	} {
		w, _, _ := serve(api, r)
		if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeUnknownInstall {
			t.Errorf("%s install: %d %s", name, w.Code, code)
		}
	}
	r = loginRequest("", "")
	r.Header.Set(hdrInstallID, phone)
	if w, _, _ := serve(api, r); w.Code != 401 {
		t.Fatalf("install-only login: %d", w.Code)
	} else if code, _ := errorBody(t, w); code != apierr.CodeAuthRequired {
		t.Fatalf("install-only login: %s", code)
	}
	// A bad signature links nothing.
	other, otherAnon := newInstall(t, api)
	r = loginRequest("newbie", "")
	r.Header.Set(hdrInstallID, other)
	r.Header.Set(hdrExternalIDSig, sign("wrong-secret-0123456789", "newbie"))
	if w, _, _ := serve(api, r); w.Code != 401 {
		t.Fatalf("bad signature: %d", w.Code)
	}
	if u, _ := installUserOf(app.Tenants["acme"], other); u != otherAnon {
		t.Fatal("a refused login linked the install")
	}
}

// TestGetUserShowsSessionsAndAttributes: GET /users/{user_id} lists the
// live sessions (id prefixes) and the attributes.
func TestGetUserShowsSessionsAndAttributes(t *testing.T) {
	const key = "read-key-0123456789abcdef"
	app := newTestApp(t, testRedisURL(t), func(a *App) {
		a.Tenants["acme"].APIKeys = []APIKey{{SHA256: sha256Hex(key), Scopes: []string{ScopeUserRead}}}
	})
	api := newSessionsAPI(t, app)
	w, _, _ := serve(api, loginRequest("shown", `{"external_attributes": {"plan": "pro"}}`))
	var res startSessionResponse
	_ = json.Unmarshal(w.Body.Bytes(), &res)
	r := httptest.NewRequest(http.MethodGet, "/users/"+res.UserID, nil)
	r.Header.Set("X-Api-Key", key)
	w, _, _ = serve(api, r)
	var got struct {
		UserID     string `json:"user_id"`
		ExternalID string `json:"external_id"`
		Sessions   []struct {
			IDPrefix   string `json:"id_prefix"`
			Started    string `json:"started"`
			LastActive string `json:"last_active"`
		} `json:"sessions"`
		Attributes map[string]string `json:"attributes"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if got.ExternalID != "shown" || len(got.Sessions) != 1 || got.Sessions[0].IDPrefix != res.SessionID[:8]+"…" ||
		got.Sessions[0].Started == "" || got.Attributes["plan"] != "pro" || strings.Contains(w.Body.String(), res.SessionID) {
		t.Fatalf("GET /users: %s", w.Body)
	}
}
