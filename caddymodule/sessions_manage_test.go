package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/store"
)

// Keys of the session management tests.
const (
	sessionAdminKey = "session-admin-key-0123456789"
	userReadOnlyKey = "user-read-key-0123456789abc"
)

// withManagedSessions: up to 3 sessions per user, an API key of scope
// session.admin and one of user.read only.
func withManagedSessions(a *App) {
	a.Tenants["acme"].Sessions = &Sessions{Max: 3}
	a.Tenants["acme"].APIKeys = []APIKey{
		{SHA256: sha256Hex(sessionAdminKey), Scopes: []string{ScopeSessionAdmin}},
		{SHA256: sha256Hex(userReadOnlyKey), Scopes: []string{ScopeUserRead}},
	}
}

// ownSessions is the answer of GET /sessions.
type ownSessions struct {
	UserID   string `json:"user_id"`
	Sessions []struct {
		Handle   string `json:"handle"`
		IDPrefix string `json:"id_prefix"`
		Current  bool   `json:"current"`
		Verified bool   `json:"verified"`
	} `json:"sessions"`
}

// handles are the handles of a GET /sessions answer, and the current one.
func (o ownSessions) handles() (all []string, current string) {
	for _, s := range o.Sessions {
		all = append(all, s.Handle)
		if s.Current {
			current = s.Handle
		}
	}
	slices.Sort(all)
	return all, current
}

// sortedHandles are the handles of sids, sorted.
func sortedHandles(sids ...string) []string {
	var out []string
	for _, sid := range sids {
		out = append(out, store.SessionHandle(sid))
	}
	slices.Sort(out)
	return out
}

// manage sends a session management request; hdr are header pairs.
func manage(api *API, method, path string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w, _, _ := serve(api, r)
	return w
}

// awaitRefused waits until h refuses sid with session_ended and reason,
// for at most a second.
func awaitRefused(t *testing.T, h *Handler, sid, reason string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		w, _, _ := serve(h, sessionRequest(sid))
		if w.Code == http.StatusUnauthorized {
			if code, why := sessionError(t, w); code != apierr.CodeSessionEnded || why != reason {
				t.Fatalf("%s refused with %s %s, want session_ended %s", sid, code, why, reason)
			}
			return time.Since(start)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("the other instance still accepts %s after 1s", sid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOwnSessions: a user lists its sessions with a verified session and
// ends one; a second instance, where the ended one was warm, refuses it
// within a second; another user's handle is 404 unknown_session; a
// report-mode (unverified) session of the same user, an external id, an
// install or nothing at all neither list nor end anything.
func TestOwnSessions(t *testing.T) { forEachStore(t, testOwnSessions) }

func testOwnSessions(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	a, b := newTestApp(t, url, withManagedSessions), newTestApp(t, url, withManagedSessions)
	waitSubscribed(t, b)
	api, hA, hB := newSessionsAPI(t, a), newTestHandler(t, a, nil), newTestHandler(t, b, nil)
	s1, s2, s3 := login(t, api, "mia"), login(t, api, "mia"), login(t, api, "mia")
	for range 3 { // warm on B
		if w, _, _ := serve(hB, sessionRequest(s2.SessionID)); w.Code != 200 {
			t.Fatalf("s2 on B: %d", w.Code)
		}
	}

	w := manage(api, http.MethodGet, "/sessions", hdrSessionID, s1.SessionID)
	var list ownSessions
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || w.Code != 200 {
		t.Fatalf("GET /sessions: %d %s", w.Code, w.Body)
	}
	all, current := list.handles()
	if list.UserID != s1.UserID || !slices.Equal(all, sortedHandles(s1.SessionID, s2.SessionID, s3.SessionID)) ||
		current != store.SessionHandle(s1.SessionID) {
		t.Fatalf("GET /sessions: %s", w.Body)
	}
	for _, s := range []startSessionResponse{s1, s2, s3} {
		if strings.Contains(w.Body.String(), s.SessionID) {
			t.Fatalf("GET /sessions shows a session id (a bearer credential): %s", w.Body)
		}
	}

	// Someone else's session: 404, and it keeps working.
	ned := login(t, api, "ned")
	for _, path := range []string{"/sessions/" + store.SessionHandle(ned.SessionID), "/sessions/" + ned.SessionID, "/sessions/nope"} {
		if w := manage(api, http.MethodDelete, path, hdrSessionID, s1.SessionID); w.Code != 404 || !strings.Contains(w.Body.String(), `"unknown_session"`) {
			t.Fatalf("DELETE %s: %d %s", path, w.Code, w.Body)
		}
	}
	if w, _, _ := serve(hA, sessionRequest(ned.SessionID)); w.Code != 200 {
		t.Fatalf("ned's session after mia's attempts: %d", w.Code)
	}

	// A report-mode login of mia's external id (bad signature on the web
	// platform) holds an unverified session of mia's user: it may neither
	// list nor end her sessions. Nor may an external id, an install or
	// nothing.
	r := loginRequest("mia", "")
	r.Header.Set(hdrPlatform, "web")
	r.Header.Set(hdrExternalIDSig, sign("wrong-secret-0123456789", "mia"))
	rw, _, _ := serve(api, r)
	var unverified startSessionResponse
	if err := json.Unmarshal(rw.Body.Bytes(), &unverified); err != nil || rw.Code != 201 || unverified.Verified || unverified.UserID != s1.UserID {
		t.Fatalf("report-mode login: %d %s", rw.Code, rw.Body)
	}
	// Mia sees it, unverified, beside her verified ones.
	w = manage(api, http.MethodGet, "/sessions", hdrSessionID, s1.SessionID)
	list = ownSessions{}
	_ = json.Unmarshal(w.Body.Bytes(), &list)
	seen := map[string]bool{}
	for _, s := range list.Sessions {
		seen[s.Handle] = s.Verified
	}
	if v, ok := seen[store.SessionHandle(unverified.SessionID)]; len(seen) != 4 || !ok || v || !seen[store.SessionHandle(s2.SessionID)] {
		t.Fatalf("GET /sessions beside an unverified session: %s", w.Body)
	}
	installID, _ := newInstall(t, api)
	for _, c := range []struct {
		hdr  []string
		code string
	}{
		{[]string{hdrSessionID, unverified.SessionID}, apierr.CodeSessionUnverified},
		{[]string{hdrSessionID, unverified.SessionID, hdrInstallID, installID}, apierr.CodeSessionUnverified},
		{[]string{hdrExternalID, "mia", hdrExternalIDSig, sign(testSecret, "mia")}, apierr.CodeAuthRequired},
		{[]string{hdrInstallID, installID}, apierr.CodeAuthRequired},
		{[]string{"Authorization", "Bearer " + s1.SessionID}, apierr.CodeAuthRequired}, // the tenant verifies no tokens
		{nil, apierr.CodeAuthRequired},
		{[]string{hdrSessionID, store.NewID(store.KindSession, 3)}, apierr.CodeUnknownSession},
	} {
		for _, req := range [][2]string{{http.MethodGet, "/sessions"}, {http.MethodDelete, "/sessions/" + store.SessionHandle(s3.SessionID)}} {
			w := manage(api, req[0], req[1], c.hdr...)
			if code, _ := errorBody(t, w); code != c.code || w.Code/100 != 4 {
				t.Fatalf("%s %s with %v: %d %s, want %s", req[0], req[1], c.hdr, w.Code, w.Body, c.code)
			}
		}
	}
	if w, _, _ := serve(hA, sessionRequest(s3.SessionID)); w.Code != 200 {
		t.Fatalf("s3 after refused attempts: %d", w.Code)
	}

	// Mia ends s2: 200 revoked; B, where it was warm, refuses it within a
	// second; a second DELETE is 404.
	h2 := store.SessionHandle(s2.SessionID)
	w = manage(api, http.MethodDelete, "/sessions/"+h2, hdrSessionID, s1.SessionID)
	if w.Code != 200 || w.Body.String() != `{"ended":true,"reason":"revoked"}`+"\n" {
		t.Fatalf("DELETE /sessions/%s: %d %q", h2, w.Code, w.Body)
	}
	t.Logf("revoked session refused on the other instance after %v", awaitRefused(t, hB, s2.SessionID, store.ReasonRevoked))
	awaitRefused(t, hA, s2.SessionID, store.ReasonRevoked)
	if w := manage(api, http.MethodDelete, "/sessions/"+h2, hdrSessionID, s1.SessionID); w.Code != 404 {
		t.Fatalf("second DELETE: %d %s", w.Code, w.Body)
	}
	if w := manage(api, http.MethodGet, "/sessions", hdrSessionID, s3.SessionID); !strings.Contains(w.Body.String(), store.SessionHandle(s1.SessionID)) ||
		strings.Contains(w.Body.String(), h2) {
		t.Fatalf("GET /sessions after the end: %s", w.Body)
	}
	// Its own session too: then it can list nothing more.
	if w := manage(api, http.MethodDelete, "/sessions/"+store.SessionHandle(s1.SessionID), hdrSessionID, s1.SessionID); w.Code != 200 {
		t.Fatalf("ending its own session: %d %s", w.Code, w.Body)
	}
	if w := manage(api, http.MethodGet, "/sessions", hdrSessionID, s1.SessionID); w.Code != 401 || !strings.Contains(w.Body.String(), `"reason":"revoked"`) {
		t.Fatalf("GET /sessions with the ended session: %d %s", w.Code, w.Body)
	}
	// She ends the unverified session that someone started with her
	// external id.
	if w := manage(api, http.MethodDelete, "/sessions/"+store.SessionHandle(unverified.SessionID), hdrSessionID, s3.SessionID); w.Code != 200 {
		t.Fatalf("ending the unverified session: %d %s", w.Code, w.Body)
	}
	awaitRefused(t, hA, unverified.SessionID, store.ReasonRevoked)
	if w, _, _ := serve(hA, sessionRequest(s3.SessionID)); w.Code != 200 {
		t.Fatalf("s3: %d", w.Code)
	}
}

// TestOwnSessionsContactToken: a contact token (Authorization: Bearer)
// lists its user's sessions, its own marked current, ends one, and all the
// others but its own; the token of an ended session lists nothing.
func TestOwnSessionsContactToken(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), withIssuance(t, &Sessions{Max: 2}))
	api := newSessionsAPI(t, app)
	first, second := login(t, api, "tess"), login(t, api, "tess")
	if first.ContactToken == "" {
		t.Fatal("no contact token")
	}
	w := manage(api, http.MethodGet, "/sessions", "Authorization", "Bearer "+first.ContactToken)
	var list ownSessions
	_ = json.Unmarshal(w.Body.Bytes(), &list)
	all, current := list.handles()
	if w.Code != 200 || !slices.Equal(all, sortedHandles(first.SessionID, second.SessionID)) || current != store.SessionHandle(first.SessionID) {
		t.Fatalf("GET /sessions with a token: %d %s", w.Code, w.Body)
	}
	// A token and a session of different sessions of the same user agree
	// on the user; of different users they do not.
	other := login(t, api, "uma")
	if w := manage(api, http.MethodGet, "/sessions", "Authorization", "Bearer "+first.ContactToken, hdrSessionID, other.SessionID); w.Code != 401 ||
		!strings.Contains(w.Body.String(), apierr.CodeIdentityMismatch) {
		t.Fatalf("token and another user's session: %d %s", w.Code, w.Body)
	}
	w = manage(api, http.MethodDelete, "/sessions/"+store.SessionHandle(second.SessionID), "Authorization", "Bearer "+first.ContactToken)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"revoked"`) {
		t.Fatalf("DELETE with a token: %d %s", w.Code, w.Body)
	}
	w = manage(api, http.MethodGet, "/sessions", "Authorization", "Bearer "+second.ContactToken)
	if code, _ := errorBody(t, w); w.Code != 401 || code != apierr.CodeSessionEnded {
		t.Fatalf("the ended session's token: %d %s", w.Code, w.Body)
	}
	// DELETE /sessions with a token keeps the token's session.
	third := login(t, api, "tess")
	w = manage(api, http.MethodDelete, "/sessions", "Authorization", "Bearer "+first.ContactToken)
	if w.Code != 200 || w.Body.String() != `{"ended":[{"handle":"`+store.SessionHandle(third.SessionID)+`","reason":"revoked"}]}`+"\n" {
		t.Fatalf("DELETE /sessions with a token: %d %s", w.Code, w.Body)
	}
}

// TestAdminSessions: /users/{user_id}/sessions needs scope session.admin;
// with it an administrator lists a user's sessions, ends one by handle
// (another user's handle: 404) and then all of them, which a second
// instance refuses within a second.
func TestAdminSessions(t *testing.T) { forEachStore(t, testAdminSessions) }

func testAdminSessions(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	a, b := newTestApp(t, url, withManagedSessions), newTestApp(t, url, withManagedSessions)
	waitSubscribed(t, b)
	api, hB := newSessionsAPI(t, a), newTestHandler(t, b, nil)
	s1, s2, s3 := login(t, api, "vic"), login(t, api, "vic"), login(t, api, "vic")
	other := login(t, api, "wes")
	for _, sid := range []string{s1.SessionID, s2.SessionID, s3.SessionID} {
		if w, _, _ := serve(hB, sessionRequest(sid)); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	base := "/users/" + s1.UserID + "/sessions"
	one := base + "/" + store.SessionHandle(s1.SessionID)
	for _, req := range [][2]string{{http.MethodGet, base}, {http.MethodDelete, base}, {http.MethodDelete, one}} {
		if w := manage(api, req[0], req[1], "X-Api-Key", userReadOnlyKey); w.Code != 403 || !strings.Contains(w.Body.String(), "insufficient_scope") {
			t.Fatalf("%s %s without the scope: %d %s", req[0], req[1], w.Code, w.Body)
		}
		// A user's own credentials are no API key.
		if w := manage(api, req[0], req[1], hdrSessionID, s1.SessionID); w.Code != 401 || !strings.Contains(w.Body.String(), "invalid_api_key") {
			t.Fatalf("%s %s with a session: %d %s", req[0], req[1], w.Code, w.Body)
		}
		if w := manage(api, req[0], strings.Replace(req[1], s1.UserID, store.NewID(store.KindUser, 2), 1), "Authorization", "Bearer "+sessionAdminKey); w.Code != 404 ||
			!strings.Contains(w.Body.String(), codeUserNotFound) {
			t.Fatalf("%s for an unknown user: %d %s", req[0], w.Code, w.Body)
		}
	}
	if w, _, _ := serve(hB, sessionRequest(s1.SessionID)); w.Code != 200 {
		t.Fatal("refused requests ended a session")
	}

	w := manage(api, http.MethodGet, base, "X-Api-Key", sessionAdminKey)
	var list ownSessions
	_ = json.Unmarshal(w.Body.Bytes(), &list)
	if all, _ := list.handles(); w.Code != 200 || list.UserID != s1.UserID || !slices.Equal(all, sortedHandles(s1.SessionID, s2.SessionID, s3.SessionID)) ||
		strings.Contains(w.Body.String(), `"current"`) {
		t.Fatalf("GET %s: %d %s", base, w.Code, w.Body)
	}
	if w := manage(api, http.MethodDelete, base+"/"+store.SessionHandle(other.SessionID), "X-Api-Key", sessionAdminKey); w.Code != 404 ||
		!strings.Contains(w.Body.String(), `"unknown_session"`) {
		t.Fatalf("another user's session by handle: %d %s", w.Code, w.Body)
	}
	if w := manage(api, http.MethodDelete, one, "X-Api-Key", sessionAdminKey); w.Code != 200 || !strings.Contains(w.Body.String(), `"revoked"`) {
		t.Fatalf("DELETE %s: %d %s", one, w.Code, w.Body)
	}
	awaitRefused(t, hB, s1.SessionID, store.ReasonRevoked)

	w = manage(api, http.MethodDelete, base, "X-Api-Key", sessionAdminKey)
	var ended struct {
		Ended []struct{ Handle, Reason string } `json:"ended"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &ended)
	var got []string
	for _, e := range ended.Ended {
		if e.Reason != store.ReasonRevoked {
			t.Fatalf("ended %+v", e)
		}
		got = append(got, e.Handle)
	}
	slices.Sort(got)
	if w.Code != 200 || !slices.Equal(got, sortedHandles(s2.SessionID, s3.SessionID)) {
		t.Fatalf("DELETE %s: %d %s", base, w.Code, w.Body)
	}
	for _, sid := range []string{s2.SessionID, s3.SessionID} {
		t.Logf("ended by the admin, refused on the other instance after %v", awaitRefused(t, hB, sid, store.ReasonRevoked))
	}
	if w, _, _ := serve(hB, sessionRequest(other.SessionID)); w.Code != 200 {
		t.Fatal("another user's session ended")
	}
	if w := manage(api, http.MethodDelete, base, "X-Api-Key", sessionAdminKey); w.Code != 200 || w.Body.String() != `{"ended":[]}`+"\n" {
		t.Fatalf("DELETE again: %d %q", w.Code, w.Body)
	}
	// GET /users/{user_id} shows the handles too.
	s4 := login(t, api, "vic")
	if w := manage(api, http.MethodGet, "/users/"+s4.UserID, "X-Api-Key", userReadOnlyKey); w.Code != 200 ||
		!strings.Contains(w.Body.String(), `"handle":"`+store.SessionHandle(s4.SessionID)+`"`) {
		t.Fatalf("GET /users: %d %s", w.Code, w.Body)
	}
}

// TestRevokedSessionEvents: every revocation, by the user or an
// administrator, is delivered to the webhook as session.ended with reason
// revoked.
func TestRevokedSessionEvents(t *testing.T) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	app := newTestApp(t, eventsRedisURL(t), func(a *App) {
		withManagedSessions(a)
		a.Tenants["acme"].Webhook = &Webhook{URL: rcv.srv.URL, Secrets: []string{whOldSecret, whNewSecret},
			PollInterval: caddy.Duration(20 * time.Millisecond)}
	})
	api := newSessionsAPI(t, app)
	s1, s2, s3 := login(t, api, "xena"), login(t, api, "xena"), login(t, api, "xena")
	if w := manage(api, http.MethodDelete, "/sessions/"+store.SessionHandle(s2.SessionID), hdrSessionID, s1.SessionID); w.Code != 200 {
		t.Fatalf("user end: %d %s", w.Code, w.Body)
	}
	if w := manage(api, http.MethodDelete, "/users/"+s1.UserID+"/sessions", "X-Api-Key", sessionAdminKey); w.Code != 200 {
		t.Fatalf("admin end: %d %s", w.Code, w.Body)
	}
	want := []string{s1.SessionID, s2.SessionID, s3.SessionID}
	revoked := func() []string {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		var out []string
		for id, ev := range rcv.events {
			var d struct {
				SessionID string `json:"session_id"`
				UserID    string `json:"user_id"`
				Reason    string `json:"reason"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			if ev.Type == store.EventSessionEnded && rcv.delivered[id] > 0 && d.Reason == store.ReasonRevoked && d.UserID == s1.UserID {
				out = append(out, d.SessionID)
			}
		}
		slices.Sort(out)
		return out
	}
	slices.Sort(want)
	waitUntil(t, "three session.ended (revoked) delivered", clock, 0, func() bool { return slices.Equal(revoked(), want) })
	rcv.check()
}

// TestOwnSessionsEndOthers: DELETE /sessions ends every session of the
// caller's user but the caller's own, which a second instance refuses
// within a second; the caller's keeps working, another user's too.
func TestOwnSessionsEndOthers(t *testing.T) { forEachStore(t, testOwnSessionsEndOthers) }

func testOwnSessionsEndOthers(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	a, b := newTestApp(t, url, withManagedSessions), newTestApp(t, url, withManagedSessions)
	waitSubscribed(t, b)
	api, hB := newSessionsAPI(t, a), newTestHandler(t, b, nil)
	s1, s2, s3 := login(t, api, "yan"), login(t, api, "yan"), login(t, api, "yan")
	other := login(t, api, "zed")
	for _, sid := range []string{s1.SessionID, s2.SessionID, s3.SessionID, other.SessionID} {
		if w, _, _ := serve(hB, sessionRequest(sid)); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	if w := manage(api, http.MethodDelete, "/sessions"); w.Code != 401 {
		t.Fatalf("DELETE /sessions without credentials: %d %s", w.Code, w.Body)
	}
	w := manage(api, http.MethodDelete, "/sessions", hdrSessionID, s2.SessionID)
	var ended struct {
		Ended []struct{ Handle, Reason string } `json:"ended"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &ended)
	var got []string
	for _, e := range ended.Ended {
		if e.Reason != store.ReasonRevoked {
			t.Fatalf("ended %+v", e)
		}
		got = append(got, e.Handle)
	}
	slices.Sort(got)
	if w.Code != 200 || !slices.Equal(got, sortedHandles(s1.SessionID, s3.SessionID)) {
		t.Fatalf("DELETE /sessions: %d %s", w.Code, w.Body)
	}
	for _, sid := range []string{s1.SessionID, s3.SessionID} {
		awaitRefused(t, hB, sid, store.ReasonRevoked)
	}
	for _, sid := range []string{s2.SessionID, other.SessionID} {
		if w, _, _ := serve(hB, sessionRequest(sid)); w.Code != 200 {
			t.Fatalf("%s after DELETE /sessions: %d %s", sid, w.Code, w.Body)
		}
	}
	if w := manage(api, http.MethodDelete, "/sessions", hdrSessionID, s2.SessionID); w.Code != 200 || w.Body.String() != `{"ended":[]}`+"\n" {
		t.Fatalf("DELETE /sessions again: %d %q", w.Code, w.Body)
	}
}
