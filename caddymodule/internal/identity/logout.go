package identity

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// ErrNoBackchannelLogout is asked of a tenant without backchannel_logout.
var ErrNoBackchannelLogout = errors.New("back-channel logout is not configured")

// BackchannelLogout carries out a logout token an OpenID provider posted
// (OpenID Connect Back-Channel Logout 1.0): it verifies the token (§2.6),
// refuses a jti seen before (a replay), and ends every live session of the
// user the token's sub names, the external id that contact tokens and SSO
// tokens of the provider carry, with reason logged_out: each with its
// session.ended event and its announcement, so that every instance refuses
// it within moments. The cached SSO answers naming the user are dropped on
// every instance too. It returns how many sessions it ended.
//
// idlink keeps no provider session ids, so a token with a sid and no sub
// names nothing it can find: it is refused (§2.8's 400), rather than
// answered 200 for a logout that did not happen. With both, every session
// of the user ends (a superset of the sid's).
//
// Refusals are 400 invalid_request; the provider's JWKS out of reach is 503
// key_source_unavailable; a store failure is an error (503), after which
// the jti is released so that the provider's retry is carried out.
func (d *Domain) BackchannelLogout(ctx context.Context, raw string) (int, error) {
	if d.cfg.Logout == nil {
		return 0, ErrNoBackchannelLogout
	}
	lt, err := d.cfg.Logout.Verify(ctx, raw)
	var refused *verify.Refusal
	switch {
	case err == nil:
	case errors.As(err, &refused):
		d.debug("logout token refused", zap.String("reason", refused.Reason))
		return 0, apierr.InvalidRequest(refused.Reason)
	case errors.Is(err, verify.ErrKeySourceUnavailable):
		return 0, apierr.KeySourceUnavailable()
	default:
		return 0, err
	}
	if lt.Subject == "" {
		return 0, apierr.InvalidRequest("the logout token names a provider session (sid) but no sub: idlink keeps no provider session ids, send sub")
	}
	ctx = context.WithoutCancel(ctx) // the provider hanging up leaves no logout half done
	now := d.cfg.Now()
	fresh, err := d.cfg.Store.ClaimLogoutJTI(ctx, d.keys, lt.Issuer, lt.JTI, lt.Until.Sub(now))
	if err != nil {
		return 0, err
	}
	if !fresh {
		d.debug("logout token replayed")
		return 0, apierr.InvalidRequest("the logout token was used before (its jti was seen)")
	}
	n, err := d.endSubject(ctx, lt.Subject)
	if err != nil {
		if rerr := d.cfg.Store.ReleaseLogoutJTI(ctx, d.keys, lt.Issuer, lt.JTI); rerr != nil {
			d.LogStoreError(rerr)
		}
		return 0, err
	}
	d.logger.Info("back-channel logout", zap.Int("sessions_ended", n))
	return n, nil
}

// endSubject ends every live session of the user of an external id, and
// drops the SSO answers naming it, here and on every instance.
func (d *Domain) endSubject(ctx context.Context, externalID string) (int, error) {
	if d.cfg.SSO != nil {
		d.cfg.SSO.ForgetUser(externalID)
		if err := d.cfg.Store.Publish(ctx, d.cfg.Tenant, InvalidateSSOUser, externalID); err != nil {
			return 0, err
		}
	}
	userID, err := d.cfg.Store.ExternalUser(ctx, d.keys, externalID)
	if err != nil || userID == "" {
		return 0, err // no user: nothing to end
	}
	if _, err := store.ParseID(store.KindUser, userID); err != nil {
		return 0, fmt.Errorf("%w: user id %q: %v", store.ErrUnavailable, userID, err)
	}
	ended, err := d.cfg.Store.EndUserSessions(ctx, d.keys, d.sessions.policy, userID, "", "", store.ReasonLoggedOut, d.cfg.Now())
	if err != nil {
		return 0, err
	}
	d.observeSession(EventEnded, store.ReasonLoggedOut, len(ended))
	for _, e := range ended {
		d.sessions.drop(e.ID)
	}
	return len(ended), nil
}
