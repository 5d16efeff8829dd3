package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/store"
)

// Login (POST /sessions: verify, link, admit, issue), logout (DELETE
// /sessions/current) and the sessions and attributes part of GET
// /users/{user_id}.

// --- POST /sessions -----------------------------------------------------

// startSessionRequest is the optional body of POST /sessions.
type startSessionRequest struct {
	// ExternalAttributes is a JSON object merged into the user's stored
	// attributes.
	ExternalAttributes json.RawMessage `json:"external_attributes"`
	// MergeExternalAttributes false replaces the stored attributes
	// instead. Default: true.
	MergeExternalAttributes *bool `json:"merge_external_attributes"`
}

// startSessionResponse is the answer of POST /sessions.
type startSessionResponse struct {
	UserID    string `json:"user_id"`
	SessionID string `json:"session_id"`
	// ContactToken is set when the tenant issues contact tokens.
	ContactToken string `json:"contact_token,omitempty"`
	// ExpiresAt is the end of the session's lifetime (RFC 3339), null
	// without a lifetime.
	ExpiresAt *string `json:"expires_at"`
	// Evicted are the user's sessions ended to make room.
	Evicted []string `json:"evicted"`
	// Verified tells whether the login's credential verified. An
	// unverified (report or off mode) login linked no install, stored
	// no attributes and got no contact token.
	Verified bool `json:"verified"`
}

// startSession is POST /sessions (the SDK's session.start, identify and
// ssoLogin): it verifies the login's credentials exactly as the idlink
// handler does, links the install it presents (X-Install-Id) to the user,
// admits a new session under the user's limit, stores the external
// attributes and verified email/phone, and answers 201
// startSessionResponse. With cookies, the answer sets the session
// cookie.
//
// Errors, besides those of the credentials: 401 authentication_required
// (no user credential: anonymous, an install or a session alone), 401
// unknown_install, 409 link_in_progress (with Retry-After), 413
// attributes_too_large (nothing stored), 503 store_unavailable.
func (a *API) startSession(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if t.Cookie != nil {
		if _, e := t.checkOriginOf(r); e != nil {
			writeError(w, e)
			return
		}
	}
	creds, bad := a.tenant.credentials(r)
	if bad != nil {
		writeError(w, bad)
		return
	}
	var req startSessionRequest
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		if e := readJSON(w, r, &req); e != nil {
			writeError(w, e)
			return
		}
	}
	update, aerr := parseObjectUpdate("external_attributes", req.ExternalAttributes, req.MergeExternalAttributes, maxAttributesBytes)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	subject, banned := checkBan(t, r)
	if banned != nil {
		writeError(w, banned)
		return
	}
	res, err := t.id.Login(r.Context(), creds, update)
	if ae := (*apiError)(nil); errors.As(err, &ae) {
		writeError(w, failed(t, r, subject, creds.SessionID, ae))
		return
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	resp := startSessionResponse{UserID: res.UserID, SessionID: res.SessionID, ContactToken: res.ContactToken,
		Evicted: res.Evicted, Verified: res.Verified}
	if !res.ExpiresAt.IsZero() {
		s := res.ExpiresAt.Format(time.RFC3339Nano)
		resp.ExpiresAt = &s
	}
	t.Cookie.setSession(w, res.SessionID, res.ExpiresAt, t.now())
	writeJSON(w, http.StatusCreated, resp)
}

// --- DELETE /sessions/current -------------------------------------------

// endCurrentSession is DELETE /sessions/current: logout of the session
// named by X-Session-Id (or the session cookie). Its id never works
// again, on any instance. It is idempotent: a session that had already
// ended answers 200 too, with the reason it ended for. With cookies, the
// answer clears the install and session cookies.
func (a *API) endCurrentSession(w http.ResponseWriter, r *http.Request) {
	creds, bad := a.tenant.credentials(r)
	if bad != nil {
		writeError(w, bad)
		return
	}
	if creds.SessionID == "" {
		writeError(w, apierr.AuthRequired("send the session to end as X-Session-Id (or its cookie)"))
		return
	}
	why, err := a.tenant.id.Logout(r.Context(), creds.SessionID)
	if err != nil {
		a.fail(w, err)
		return
	}
	a.tenant.Cookie.clear(w)
	writeJSON(w, http.StatusOK, struct {
		Ended  bool   `json:"ended"`
		Reason string `json:"reason"`
	}{true, why})
}

// --- GET /users/{user_id} -----------------------------------------------

// userSessionsView is the sessions and attributes part of GET
// /users/{user_id}.
type userSessionsView struct {
	// Sessions are the user's live sessions, least recently active first.
	Sessions []sessionView `json:"sessions"`
	// Attributes are the user's external attributes ({} if none).
	Attributes json.RawMessage `json:"attributes"`
}

// sessionView is one live session (newSessionView). Its id is shown as a
// prefix only: the full id is a bearer credential. Its handle names it to
// DELETE /sessions/{handle} and /users/{user_id}/sessions/{handle}.
type sessionView struct {
	Handle     string `json:"handle"`
	IDPrefix   string `json:"id_prefix"`
	Started    string `json:"started"`
	LastActive string `json:"last_active"`
	InstallID  string `json:"install_id,omitempty"`
	// Verified is false for a session an unverified (report or off mode)
	// login started.
	Verified bool `json:"verified"`
}

// userSessions reads a user's live sessions and attributes in one round
// trip. The GET /users/{user_id} handler embeds the result.
func userSessions(ctx context.Context, d *identity.Domain, userID string) (userSessionsView, error) {
	attrs, live, err := d.UserSessions(ctx, userID)
	if err != nil {
		return userSessionsView{}, err
	}
	v := userSessionsView{Sessions: make([]sessionView, 0, len(live)), Attributes: json.RawMessage(attrs)}
	if !json.Valid(v.Attributes) {
		return userSessionsView{}, fmt.Errorf("%w: user %s: stored attributes are not valid JSON", store.ErrUnavailable, userID)
	}
	for _, s := range live {
		v.Sessions = append(v.Sessions, newSessionView(s))
	}
	return v, nil
}

// --- External attributes --------------------------------------------------
