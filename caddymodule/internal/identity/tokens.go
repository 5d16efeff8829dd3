package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// ErrNoSigningKey is answered when a tenant that has no sign_key is asked
// to issue a token.
var ErrNoSigningKey = apierr.New(http.StatusNotFound, "contact_tokens_disabled",
	"this tenant does not issue contact tokens (no sign_key)")

// tokens issues the tenant's own contact tokens with the claims the
// customer backend vouches for.
type tokens struct {
	d *Domain
}

func (tk *tokens) init(d *Domain) { tk.d = d }

// issues reports whether the tenant issues contact tokens.
func (tk *tokens) issues() bool { return tk.d.cfg.Tokens != nil && tk.d.cfg.Tokens.Issues() }

// claims returns the claims a token issued for the user carries: for
// every claim a claim_header maps, the value the customer backend vouches
// for, from the claims it wrote (PUT /users/{user_id}/claims) and, with a
// claims_url, the resolver's answer, which wins. Both are read now, so no
// token is issued without the claims its tenant maps and the backend
// knows; a resolver that cannot answer is its error and no token at all.
// A mapped claim the backend has none of is absent.
func (tk *tokens) claims(ctx context.Context, userID, externalID string) (map[string]string, error) {
	d := tk.d
	if len(d.cfg.MappedClaims) == 0 {
		return nil, nil
	}
	raw, err := d.cfg.Store.UserClaims(ctx, d.keys, userID)
	if err != nil {
		return nil, err
	}
	var stored map[string]any
	if err := json.Unmarshal([]byte(raw), &stored); err != nil {
		return nil, fmt.Errorf("%w: user %s: stored claims are not a JSON object", store.ErrUnavailable, userID)
	}
	out := map[string]string{}
	for _, n := range d.cfg.MappedClaims {
		if s, ok := verify.ClaimString(stored[n]); ok {
			out[n] = s
		}
	}
	if d.cfg.ClaimsURL != nil {
		answer, err := d.cfg.ClaimsURL(ctx, userID, externalID)
		if err != nil {
			return nil, err
		}
		for n, s := range answer {
			out[n] = s
		}
	}
	return out, nil
}

// prepare prepares the contact token a login hands out with its new
// session: before the session is admitted it gathers what the token needs
// (so that a login whose token cannot be had changes nothing), and returns
// the signer to call once the session exists, or nil when the session gets
// no token (the tenant does not issue tokens, or the login was not
// verified: no token says more than its session knows).
func (tk *tokens) prepare(ctx context.Context, id Identity) (sign func(sessionID string, sessionEnd time.Time) (string, error), err error) {
	if !tk.issues() || !id.Verified {
		return nil, nil
	}
	claims, err := tk.claims(ctx, id.UserID, id.ExternalID)
	if err != nil {
		return nil, err
	}
	return func(sessionID string, sessionEnd time.Time) (string, error) {
		tok, _, err := tk.issue(id.UserID, sessionID, id.ExternalID, claims, sessionEnd)
		return tok, err
	}, nil
}

// issue signs a token that expires after the ttl, or at notAfter if that
// is sooner (zero: no bound).
func (tk *tokens) issue(userID, sessionID, externalID string, extra map[string]string, notAfter time.Time) (string, time.Time, error) {
	if !tk.issues() {
		return "", time.Time{}, ErrNoSigningKey
	}
	return tk.d.cfg.Tokens.Issue(userID, sessionID, externalID, extra, notAfter)
}
