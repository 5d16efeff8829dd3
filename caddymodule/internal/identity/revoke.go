package identity

import (
	"context"
	"net/http"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/store"
)

// A user's sessions, as the user sees and ends them (GET /sessions,
// DELETE /sessions and /sessions/{handle}) and as an administrator does (/users/{user_id}/sessions).
// Sessions are named by their handle (store.SessionHandle), never by their
// id: the id is a bearer credential, and one device's credentials must not
// hand out another device's.

// SessionOwner is the user whose sessions the request may list and end,
// and the session it was made with (empty for a contact token bound to no
// session). Only a session or a contact token qualifies, and only a
// verified one: a live session whose login verified its credential
// (X-Session-Id), or a contact token that verifies (Authorization: Bearer
// or X-Contact-Token; one bound to a session says no more than its
// session). Other credentials of the request take no part: an external
// id or an SSO token is a login's business, an install id proves nothing.
//
// Refusals: 401 authentication_required (neither), the session's and the
// token's own (401 session_ended, unknown_session, invalid_token,
// identity_mismatch when they name different users), and 403
// session_unverified for a session an unverified (report or off mode)
// login started, or a token bound to one.
func (d *Domain) SessionOwner(ctx context.Context, c Credentials) (userID, current string, err error) {
	own := Credentials{SessionID: c.SessionID, ContactToken: c.ContactToken}
	if d.cfg.Tokens != nil {
		own.Bearer = c.Bearer
	}
	if own.SessionID == "" && own.ContactToken == "" && own.Bearer == "" {
		return "", "", apierr.AuthRequired("send the session (X-Session-Id) or its contact token (Authorization: Bearer)")
	}
	id, err := d.Identify(ctx, &own)
	if err != nil {
		return "", "", err
	}
	if id.UserID == "" {
		return "", "", apierr.AuthRequired("send the session (X-Session-Id) or its contact token (Authorization: Bearer)")
	}
	if !id.Verified {
		d.debug("unverified session refused its session list")
		return "", "", apierr.New(http.StatusForbidden, apierr.CodeSessionUnverified,
			"this session's login was not verified (report or off mode): it can neither list nor end sessions; log in with a signed credential")
	}
	return id.UserID, id.SessionID, nil
}

// LiveSessions are a user's live sessions, least recently active first.
func (d *Domain) LiveSessions(ctx context.Context, userID string) ([]store.LiveSession, error) {
	_, live, err := d.UserSessions(ctx, userID)
	return live, err
}

// RevokeSession ends the live session of userID whose handle is handle
// (reason revoked, or idle or expired if it was found over): its id never
// works again, on any instance. 404 unknown_session when the user has no
// live session of that handle, which includes every other user's
// sessions and sessions that have already ended.
func (d *Domain) RevokeSession(ctx context.Context, userID, handle string) (store.EndedSession, error) {
	if !store.ValidHandle(handle) {
		return store.EndedSession{}, errNoSuchSession()
	}
	ended, err := d.revoke(ctx, userID, handle, "")
	if err != nil {
		return store.EndedSession{}, err
	}
	if len(ended) != 1 {
		return store.EndedSession{}, errNoSuchSession()
	}
	return ended[0], nil
}

// RevokeSessions ends every live session of userID but the session keep,
// if not empty (reason revoked, or idle or expired for those found over),
// and returns them.
func (d *Domain) RevokeSessions(ctx context.Context, userID, keep string) ([]store.EndedSession, error) {
	return d.revoke(ctx, userID, "", keep)
}

func (d *Domain) revoke(ctx context.Context, userID, handle, keep string) ([]store.EndedSession, error) {
	// Detached from the client's cancellation, as every end is: the
	// client may hang up, the end is not left to chance.
	ended, err := d.cfg.Store.EndUserSessions(context.WithoutCancel(ctx), d.keys, d.sessions.policy, userID, handle, keep, store.ReasonRevoked, d.cfg.Now())
	if err != nil {
		return nil, err
	}
	d.observeSession(EventEnded, store.ReasonRevoked, len(ended))
	// This instance refuses them from now on; the others hear it on the
	// invalidation channel, which the script published to.
	for _, e := range ended {
		d.sessions.drop(e.ID)
	}
	d.debug("sessions revoked", zap.String("user_id", userID), zap.Int("ended", len(ended)))
	return ended, nil
}

// errNoSuchSession is 404 unknown_session: the user has no live session of
// that handle. It says nothing of whose the handle might be.
func errNoSuchSession() *apierr.Error {
	return apierr.New(http.StatusNotFound, apierr.CodeUnknownSession, "the user has no live session of this handle")
}
