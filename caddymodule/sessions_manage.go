package caddymodule

import (
	"errors"
	"net/http"
	"time"

	"github.com/idlink/idlink/caddymodule/store"
)

// Session management (OWASP ASVS 5.0 V7): a user sees and ends its own
// sessions (GET /sessions, DELETE /sessions/{handle}, DELETE /sessions:
// all but the caller's), an administrator
// those of any user (scope session.admin: GET and DELETE
// /users/{user_id}/sessions, DELETE /users/{user_id}/sessions/{handle}).
// Sessions are named by their handle, the hex SHA-1 of the id, never by
// the id itself, which is a bearer credential. Every end is one script in
// the user's slot (store.EndUserSessions), emits session.ended with reason
// revoked and is refused by every instance within a second.

// ownSessionView is one of the caller's live sessions.
type ownSessionView struct {
	sessionView
	// Current marks the session the request was made with.
	Current bool `json:"current"`
}

// sessionEnd is the answer of a DELETE of one session.
type sessionEnd struct {
	Ended  bool   `json:"ended"`
	Reason string `json:"reason"`
}

// endedView is one session ended by DELETE /sessions or
// /users/{user_id}/sessions.
type endedView struct {
	Handle string `json:"handle"`
	Reason string `json:"reason"`
}

// listOwnSessions is GET /sessions: the live sessions of the caller's
// user, least recently active first, the caller's own marked current. The
// caller authenticates with a verified session (X-Session-Id) or a contact
// token (Authorization: Bearer or X-Contact-Token): see
// identity.Domain.SessionOwner, which also lists the refusals (401
// authentication_required, session_ended, unknown_session, invalid_token,
// identity_mismatch; 403 session_unverified for an unverified
// report-mode login).
func (a *API) listOwnSessions(w http.ResponseWriter, r *http.Request) {
	userID, current, ok := a.sessionOwner(w, r)
	if !ok {
		return
	}
	live, err := a.tenant.id.LiveSessions(r.Context(), userID)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]ownSessionView, 0, len(live))
	for _, s := range live {
		out = append(out, ownSessionView{sessionView: newSessionView(s), Current: s.ID == current})
	}
	writeJSON(w, http.StatusOK, struct {
		UserID   string           `json:"user_id"`
		Sessions []ownSessionView `json:"sessions"`
	}{userID, out})
}

// endOwnSession is DELETE /sessions/{handle}: ends one live session of the
// caller's user, the caller's own included; 200 sessionEnd (reason
// revoked, or idle or expired if it was found over). A handle that names
// no live session of this user, another user's included, is 404
// unknown_session. Credentials and their refusals as listOwnSessions.
func (a *API) endOwnSession(w http.ResponseWriter, r *http.Request) {
	userID, _, ok := a.sessionOwner(w, r)
	if !ok {
		return
	}
	a.endOne(w, r, userID)
}

// endOwnSessions is DELETE /sessions: ends every live session of the
// caller's user but the one the request was made with (a contact token
// bound to no session keeps none); 200 {"ended": [{handle, reason}...]}.
// The caller's own ends with DELETE /sessions/current. Credentials and
// their refusals as listOwnSessions.
func (a *API) endOwnSessions(w http.ResponseWriter, r *http.Request) {
	userID, current, ok := a.sessionOwner(w, r)
	if !ok {
		return
	}
	a.endAll(w, r, userID, current)
}

// sessionOwner authenticates the caller of GET and DELETE /sessions, or
// answers the refusal.
func (a *API) sessionOwner(w http.ResponseWriter, r *http.Request) (userID, current string, ok bool) {
	creds, bad := a.tenant.credentials(r)
	if bad != nil {
		writeError(w, bad)
		return "", "", false
	}
	userID, current, err := a.tenant.id.SessionOwner(r.Context(), creds)
	if err != nil {
		a.fail(w, err)
		return "", "", false
	}
	return userID, current, true
}

// listUserSessions is GET /users/{user_id}/sessions (scope session.admin):
// the user's live sessions, least recently active first. 404
// user_not_found for an unknown user.
func (a *API) listUserSessions(w http.ResponseWriter, r *http.Request) {
	userID, ok := a.adminUser(w, r)
	if !ok {
		return
	}
	live, err := a.tenant.id.LiveSessions(r.Context(), userID)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]sessionView, 0, len(live))
	for _, s := range live {
		out = append(out, newSessionView(s))
	}
	writeJSON(w, http.StatusOK, struct {
		UserID   string        `json:"user_id"`
		Sessions []sessionView `json:"sessions"`
	}{userID, out})
}

// endUserSessions is DELETE /users/{user_id}/sessions (scope
// session.admin): ends every live session of the user, in one script;
// 200 {"ended": [{handle, reason}...]} (empty if it had none).
func (a *API) endUserSessions(w http.ResponseWriter, r *http.Request) {
	userID, ok := a.adminUser(w, r)
	if !ok {
		return
	}
	a.endAll(w, r, userID, "")
}

// endUserSession is DELETE /users/{user_id}/sessions/{handle} (scope
// session.admin): ends one live session of the user; as endOwnSession.
func (a *API) endUserSession(w http.ResponseWriter, r *http.Request) {
	userID, ok := a.adminUser(w, r)
	if !ok {
		return
	}
	a.endOne(w, r, userID)
}

// adminUser checks the API key's session.admin scope and that the path's
// user exists, or answers the refusal.
func (a *API) adminUser(w http.ResponseWriter, r *http.Request) (string, bool) {
	t := a.tenant
	if e := t.requireScope(r, ScopeSessionAdmin); e != nil {
		writeError(w, e)
		return "", false
	}
	u, err := t.app.store.GetUser(r.Context(), t.id.Keys(), r.PathValue("user_id"))
	if errors.Is(err, store.ErrUserNotFound) {
		writeError(w, newError(http.StatusNotFound, codeUserNotFound, "no such user"))
		return "", false
	}
	if err != nil {
		a.fail(w, err)
		return "", false
	}
	return u.ID, true
}

// endAll ends every live session of userID but keep, in one script.
func (a *API) endAll(w http.ResponseWriter, r *http.Request, userID, keep string) {
	ended, err := a.tenant.id.RevokeSessions(r.Context(), userID, keep)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]endedView, 0, len(ended))
	for _, e := range ended {
		out = append(out, endedView{Handle: store.SessionHandle(e.ID), Reason: e.Reason})
	}
	writeJSON(w, http.StatusOK, struct {
		Ended []endedView `json:"ended"`
	}{out})
}

// endOne ends the session of userID the path's handle names.
func (a *API) endOne(w http.ResponseWriter, r *http.Request, userID string) {
	e, err := a.tenant.id.RevokeSession(r.Context(), userID, r.PathValue("handle"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sessionEnd{Ended: true, Reason: e.Reason})
}

// newSessionView shows a live session: its handle, the prefix of its id
// (never the id: it is a bearer credential), when it started and was last
// active, its install and whether its login verified.
func newSessionView(s store.LiveSession) sessionView {
	prefix := s.ID
	if len(prefix) > sessionIDPrefixLen {
		prefix = prefix[:sessionIDPrefixLen] + "…"
	}
	return sessionView{
		Handle: store.SessionHandle(s.ID), IDPrefix: prefix, InstallID: s.InstallID, Verified: s.Verified,
		Started:    s.Started.UTC().Format(time.RFC3339Nano),
		LastActive: s.Last.UTC().Format(time.RFC3339Nano),
	}
}
