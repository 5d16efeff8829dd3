package caddymodule

import (
	"context"
	"errors"
	"net/http"

	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// The contact token of a request: verified by the tenant's verifier
// (internal/verify), then turned into an identity.

// checkContactToken verifies the contact token of a request, if any: from
// X-Contact-Token, or Authorization: Bearer when the tenant verifies
// contact tokens. A token signed by the tenant's own key names the platform
// user in "sub" and its session in "sid"; another issuer's token names an
// external id (user_claim), resolved like the HMAC path.
func (t *Tenant) checkContactToken(ctx context.Context, c *credentials) (*identity, error) {
	raw := c.contactToken
	if c.bearer != "" && t.ContactToken != nil {
		if raw != "" && raw != c.bearer {
			return nil, errInvalidRequest("Authorization and X-Contact-Token carry different tokens")
		}
		raw = c.bearer
	}
	if raw == "" {
		return nil, nil
	}
	if t.ContactToken == nil {
		return nil, tokenError("this tenant does not accept contact tokens")
	}
	vt, err := t.ContactToken.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	return t.ContactToken.identityOf(ctx, vt)
}

// identityOf turns a verified token into an identity.
func (c *ContactToken) identityOf(ctx context.Context, vt *verify.Token) (*identity, error) {
	id := &identity{
		source: SourceContactToken, verified: true,
		userID: vt.UserID, externalID: vt.ExternalID, sessionID: vt.SessionID,
		claimHeaders: vt.Headers,
	}
	if !vt.Own {
		u, err := c.tenant.resolveExternal(ctx, vt.ExternalID)
		if err != nil {
			return nil, err
		}
		id.userID = u
	}
	if vt.SessionID != "" {
		e, err := c.tenant.checkTokenSession(ctx, vt)
		if err != nil {
			return nil, err
		}
		id.installID = e.installID
		// A token says no more than its session knows.
		id.verified = e.verified
	}
	return id, nil
}

// errSessionUnverified refuses a contact token for a session an
// unverified (report or off mode) login started.
func errSessionUnverified() *apiError {
	return newError(http.StatusForbidden, "session_unverified",
		"this session's login was not verified (report or off mode): it gets no contact token; log in with a signed credential")
}

// checkTokenSession refuses a token bound to a session (sid) that has
// ended, through the sessions' liveness check: warm, it costs no Redis
// round trip, and an end (logout, eviction) reaches every instance over
// the invalidation channel. It counts as activity on the session.
func (t *Tenant) checkTokenSession(ctx context.Context, vt *verify.Token) (*sessionEntry, error) {
	e, err := t.liveSession(ctx, vt.SessionID)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			withChallenge := *ae
			withChallenge.Challenge = bearerInvalidToken
			return nil, &withChallenge
		}
		return nil, err
	}
	if e.userID != vt.UserID {
		return nil, tokenError("the token's session belongs to another user")
	}
	return e, nil
}

// verify checks a token with the tenant's verifier, answering its
// refusals as 401 invalid_token and an unreachable key source as 503.
func (c *ContactToken) verify(ctx context.Context, raw string) (*verify.Token, error) {
	vt, err := c.v.Verify(ctx, raw)
	if err == nil {
		return vt, nil // before errors.As, whose target would escape: no allocation on a hit
	}
	var refused *verify.Refusal
	switch {
	case errors.As(err, &refused):
		return nil, tokenError(refused.Reason)
	case errors.Is(err, verify.ErrKeySourceUnavailable):
		return nil, errKeySourceUnavailable()
	case err != nil:
		return nil, err
	}
	return vt, nil
}
