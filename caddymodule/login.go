package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

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
// startSessionResponse.
//
// Errors, besides those of the credentials: 401 authentication_required
// (no user credential: anonymous, an install or a session alone), 401
// unknown_install, 409 link_in_progress (with Retry-After), 413
// attributes_too_large (nothing stored), 503 store_unavailable.
func (a *API) startSession(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	creds, bad := readCredentials(r.Header)
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

	// A login starts a session: a session id sent along (the SDK's
	// previous one, maybe evicted) does not take part, and the install is
	// linked to the user rather than checked against its current user.
	installID := creds.installID
	creds.sessionID, creds.installID = "", ""
	if installID != "" {
		if _, err := store.ParseID(store.KindInstall, installID); err != nil {
			writeError(w, errUnknownInstall())
			return
		}
	}
	ctx := r.Context()
	linked := ""
	if installID != "" && creds.externalID != "" && len(t.Platforms) > 0 && creds.contactToken == "" && creds.ssoToken == "" {
		// A signed external id alone: link before resolving it, so that
		// an external id seen for the first time takes the install's
		// anonymous user (data continuity) instead of a new user that
		// the install's one would be merged into. Only once everything
		// the login presents verifies.
		// An unverified one (report, off) links nothing: see below.
		ok, mode, why := t.verifyExternalID(&creds)
		if !ok && mode == ModeEnforce {
			writeError(w, t.badSignature(why))
			return
		}
		if ok {
			if _, _, err := t.verifyAttributes(&creds, creds.externalID); err != nil {
				a.fail(w, err)
				return
			}
			res, err := t.link(ctx, installID, creds.externalID)
			if err != nil {
				a.fail(w, linkError(err))
				return
			}
			linked = res.UserID
		}
	}
	id, err := t.identify(ctx, &creds)
	if err != nil {
		a.fail(w, err)
		return
	}
	if id.userID == "" {
		writeError(w, newError(http.StatusUnauthorized, codeAuthRequired,
			"a login needs a user credential: a signed external id, a contact token or an SSO token"))
		return
	}
	id.installID = ""
	if !id.verified {
		// Report and off modes observe, they never bind: an unverified
		// login holds an unverified session of the user it names, and
		// that is all. It links no install (nor adopts its anonymous
		// user), writes no attributes (nor email or phone: identify
		// accepts those only beside a verified external id), gets no
		// contact token and evicts no verified session.
		if installID != "" || update != nil {
			t.logger.Info("report mode: unverified login binds nothing",
				zap.Bool("install_ignored", installID != ""), zap.Bool("attributes_ignored", update != nil))
		}
		installID, update = "", nil
		id.verifiedEmail, id.verifiedPhone = "", ""
	}
	if installID != "" {
		if linked == "" && id.externalID != "" {
			res, err := t.link(ctx, installID, id.externalID)
			if err != nil {
				a.fail(w, linkError(err))
				return
			}
			linked = res.UserID
		}
		if linked != id.userID {
			// An identity without an external id (nothing to link to),
			// or, defensively, a link that disagrees with it.
			writeError(w, newError(http.StatusUnauthorized, codeIdentityMismatch,
				"the install cannot be linked to this login's user"))
			return
		}
		id.installID = installID
	}

	res, err := t.startSession(ctx, id, update)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

// linkError maps the errors of linking an install at login.
func linkError(err error) error {
	switch {
	case errors.Is(err, store.ErrInstallNotFound), errors.Is(err, store.ErrInstallWrongTenant):
		return errUnknownInstall()
	case errors.Is(err, store.ErrLinkInProgress):
		e := newError(http.StatusConflict, codeLinkInProgress, "another link of this install is in progress; retry shortly")
		e.RetryAfter = 1
		return e
	}
	return err
}

func errUnknownInstall() *apiError {
	return newError(http.StatusUnauthorized, codeUnknownInstall, "the install id is not known")
}

// startSession admits a session for an identified user.
func (t *Tenant) startSession(ctx context.Context, id identity, attrs *store.AttributeUpdate) (*startSessionResponse, error) {
	shard, err := store.ParseID(store.KindUser, id.userID)
	if err != nil {
		return nil, fmt.Errorf("%w: user id %q: %v", store.ErrUnavailable, id.userID, err)
	}
	sign, err := t.prepareSessionToken(ctx, id)
	if err != nil {
		return nil, err
	}
	ns := store.NewSession{
		ID: store.NewID(store.KindSession, shard), UserID: id.userID, InstallID: id.installID,
		Verified: id.verified, Email: id.verifiedEmail, Phone: id.verifiedPhone, Attributes: attrs,
	}
	// Detached from the client's cancellation (the call keeps its
	// deadline): a client that hangs up mid-login gets no answer, but the
	// admission is not left to chance.
	started := t.now()
	evicted, err := t.app.store.AdmitSession(context.WithoutCancel(ctx), t.keys, t.sess.policy, ns, started)
	var tooLarge *store.AttributesTooLargeError
	if errors.As(err, &tooLarge) {
		return nil, newError(http.StatusRequestEntityTooLarge, codeAttributesTooLarge,
			fmt.Sprintf("the external attributes would be %d bytes of JSON after merging; the limit is %d", tooLarge.Size, tooLarge.Limit))
	}
	if err != nil {
		return nil, err
	}
	// This instance refuses the evicted sessions from now on; the others
	// hear it on the invalidation channel.
	for _, sid := range evicted {
		t.dropSession(sid)
	}
	res := &startSessionResponse{UserID: id.userID, SessionID: ns.ID, Evicted: evicted, Verified: id.verified}
	var expires time.Time
	if lt := t.sess.policy.Lifetime; lt > 0 {
		expires = started.Add(lt).UTC().Truncate(time.Millisecond)
		s := expires.Format(time.RFC3339Nano)
		res.ExpiresAt = &s
	}
	if sign != nil {
		if res.ContactToken, err = sign(ns.ID, expires); err != nil {
			return nil, err
		}
	}
	t.debug("session started", zap.String("user_id", id.userID), zap.Int("evicted", len(evicted)))
	return res, nil
}

// --- DELETE /sessions/current -------------------------------------------

// endCurrentSession is DELETE /sessions/current: logout of the session
// named by X-Session-Id. Its id never works again, on any instance. It is
// idempotent: a session that had already ended answers 200 too, with the
// reason it ended for.
func (a *API) endCurrentSession(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	creds, bad := readCredentials(r.Header)
	if bad != nil {
		writeError(w, bad)
		return
	}
	if creds.sessionID == "" {
		writeError(w, newError(http.StatusUnauthorized, codeAuthRequired, "send the session to end as X-Session-Id"))
		return
	}
	if _, err := store.ParseID(store.KindSession, creds.sessionID); err != nil {
		writeError(w, errUnknownSession())
		return
	}
	why, _, known, err := t.app.store.EndSession(context.WithoutCancel(r.Context()), t.keys, t.sess.policy, creds.sessionID, store.ReasonLoggedOut, t.now())
	if err != nil {
		a.fail(w, err)
		return
	}
	if !known {
		writeError(w, errUnknownSession())
		return
	}
	t.dropSession(creds.sessionID)
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

// sessionView is one live session. Its id is shown as a prefix only: the
// full id is a bearer credential.
type sessionView struct {
	IDPrefix   string `json:"id_prefix"`
	Started    string `json:"started"`
	LastActive string `json:"last_active"`
	InstallID  string `json:"install_id,omitempty"`
}

// userSessions reads a user's live sessions and attributes in one round
// trip. The GET /users/{user_id} handler embeds the result.
func (t *Tenant) userSessions(ctx context.Context, userID string) (userSessionsView, error) {
	attrs, live, err := t.app.store.UserSessions(ctx, t.keys, t.sess.policy, userID, t.now())
	if err != nil {
		return userSessionsView{}, err
	}
	v := userSessionsView{Sessions: make([]sessionView, 0, len(live)), Attributes: json.RawMessage(attrs)}
	if !json.Valid(v.Attributes) {
		return userSessionsView{}, fmt.Errorf("%w: user %s: stored attributes are not valid JSON", store.ErrUnavailable, userID)
	}
	for _, s := range live {
		prefix := s.ID
		if len(prefix) > sessionIDPrefixLen {
			prefix = prefix[:sessionIDPrefixLen] + "…"
		}
		v.Sessions = append(v.Sessions, sessionView{
			IDPrefix: prefix, InstallID: s.InstallID,
			Started:    s.Started.UTC().Format(time.RFC3339Nano),
			LastActive: s.Last.UTC().Format(time.RFC3339Nano),
		})
	}
	return v, nil
}

// --- External attributes --------------------------------------------------
