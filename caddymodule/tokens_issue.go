package caddymodule

import (
	"context"
	"net/http"
	"time"
)

// Issuance and refresh of the tenant's own contact tokens.

// prepareSessionToken prepares the contact token POST /sessions hands
// out with a new session: before the session is admitted it gathers what
// the token needs (so that a login whose token cannot be had changes
// nothing), and returns the signer to call once the session exists, or
// nil when the session gets no token (the tenant does not issue tokens,
// or the login was not verified: no token says more than its session
// knows).
func (t *Tenant) prepareSessionToken(ctx context.Context, id identity) (sign func(sessionID string, sessionEnd time.Time) (string, error), err error) {
	if !t.issues() || !id.verified {
		return nil, nil
	}
	claims, err := t.tokenClaims(ctx, id.userID, id.externalID)
	if err != nil {
		return nil, err
	}
	return func(sessionID string, sessionEnd time.Time) (string, error) {
		tok, _, err := t.issueToken(id.userID, sessionID, id.externalID, claims, sessionEnd)
		return tok, err
	}, nil
}

// issueForSession issues a token for a live session: its extra claims
// are the user's claims, read now (tokenClaims), and it never outlives the
// session's absolute lifetime (sessionEnd; zero: none).
func (t *Tenant) issueForSession(ctx context.Context, userID, sessionID, externalID string, sessionEnd time.Time) (string, time.Time, error) {
	claims, err := t.tokenClaims(ctx, userID, externalID)
	if err != nil {
		return "", time.Time{}, err
	}
	return t.issueToken(userID, sessionID, externalID, claims, sessionEnd)
}

// refreshContactToken is POST /contact-token: a fresh token for a live
// session, named by the current token (Authorization: Bearer or
// X-Contact-Token; it must still verify) or by X-Session-Id.
func (a *API) refreshContactToken(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if !t.issues() {
		writeError(w, errNoSigningKey)
		return
	}
	creds, bad := readCredentials(r.Header)
	if bad != nil {
		writeError(w, bad)
		return
	}
	raw := creds.bearer
	if raw == "" {
		raw = creds.contactToken
	} else if creds.contactToken != "" && creds.contactToken != raw {
		writeError(w, errInvalidRequest("Authorization and X-Contact-Token carry different tokens"))
		return
	}
	sid, userID := "", ""
	if raw != "" {
		vt, err := t.ContactToken.verify(r.Context(), raw)
		if err != nil {
			a.fail(w, err)
			return
		}
		if !vt.Own || vt.SessionID == "" {
			writeError(w, tokenError("only a contact token idlink issued for a session can be refreshed"))
			return
		}
		sid, userID = vt.SessionID, vt.UserID
	}
	if creds.sessionID != "" {
		if sid != "" && sid != creds.sessionID {
			writeError(w, newError(http.StatusUnauthorized, codeIdentityMismatch,
				"the token and X-Session-Id name different sessions"))
			return
		}
		sid = creds.sessionID
	}
	if sid == "" {
		writeError(w, newError(http.StatusUnauthorized, codeAuthRequired,
			"send the current contact token (Authorization: Bearer) or X-Session-Id"))
		return
	}
	e, err := t.liveSession(r.Context(), sid)
	if err != nil {
		a.fail(w, err)
		return
	}
	if userID != "" && e.userID != userID {
		writeError(w, tokenError("the token's session belongs to another user"))
		return
	}
	if !e.verified {
		writeError(w, errSessionUnverified())
		return
	}
	var end time.Time
	if lt := t.sess.policy.Lifetime; lt > 0 {
		end = time.UnixMilli(e.started).Add(lt)
	}
	tok, exp, err := t.issueForSession(r.Context(), e.userID, sid, e.externalID, end)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		ContactToken string `json:"contact_token"`
		ExpiresAt    string `json:"expires_at"`
		UserID       string `json:"user_id"`
		SessionID    string `json:"session_id"`
	}{tok, exp.UTC().Format(time.RFC3339), e.userID, sid})
}

// errNoSigningKey is returned when a tenant that has no sign_key is asked
// to issue a token.
var errNoSigningKey = newError(http.StatusNotFound, "contact_tokens_disabled",
	"this tenant does not issue contact tokens (no sign_key)")

// issues reports whether the tenant issues contact tokens.
func (t *Tenant) issues() bool { return t.ContactToken != nil && t.ContactToken.v.Issues() }

// issueToken signs a token that expires after the ttl, or at notAfter if
// that is sooner (zero: no bound).
func (t *Tenant) issueToken(userID, sessionID, externalID string, extra map[string]string, notAfter time.Time) (string, time.Time, error) {
	if !t.issues() {
		return "", time.Time{}, errNoSigningKey
	}
	return t.ContactToken.v.Issue(userID, sessionID, externalID, extra, notAfter)
}
