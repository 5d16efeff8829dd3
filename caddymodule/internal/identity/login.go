package identity

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/store"
)

// The domain's operations besides the per-request Authenticate: login
// (verify → link → admit → issue), token refresh, logout, installs and
// links, and a user's sessions.

// LoginResult is what a login made.
type LoginResult struct {
	UserID    string
	SessionID string
	// ContactToken is set when the tenant issues contact tokens and the
	// login verified.
	ContactToken string
	// ExpiresAt is the end of the session's lifetime; zero without one.
	ExpiresAt time.Time
	// Evicted are the user's sessions ended to make room.
	Evicted []string
	// Verified tells whether the login's credential verified. An
	// unverified (report or off mode) login linked no install, stored no
	// attributes and got no contact token.
	Verified bool
}

// Login verifies the credentials of a login exactly as Authenticate does,
// links the install it presents to the user, admits a new session under
// the user's limit, stores the external attributes and verified
// email/phone, and issues the session's contact token.
//
// Refusals, besides those of the credentials: 401 authentication_required
// (no user credential: anonymous, an install or a session alone), 401
// unknown_install, 409 link_in_progress, 413 attributes_too_large (nothing
// stored).
func (d *Domain) Login(ctx context.Context, c Credentials, attrs *store.AttributeUpdate) (*LoginResult, error) {
	// A login starts a session: a session id sent along (the SDK's
	// previous one, maybe evicted) does not take part, and the install is
	// linked to the user rather than checked against its current user.
	installID := c.InstallID
	c.SessionID, c.InstallID = "", ""
	if installID != "" {
		if _, err := store.ParseID(store.KindInstall, installID); err != nil {
			return nil, apierr.UnknownInstall()
		}
	}
	linked := ""
	if installID != "" && c.ExternalID != "" && len(d.cfg.Platforms) > 0 && c.ContactToken == "" && c.SSOToken == "" {
		// A signed external id alone: link before resolving it, so that
		// an external id seen for the first time takes the install's
		// anonymous user (data continuity) instead of a new user that
		// the install's one would be merged into. Only once everything
		// the login presents verifies.
		// An unverified one (report, off) links nothing: see below.
		ok, mode, why := d.verifyExternalID(&c)
		if !ok && mode == ModeEnforce {
			return nil, d.badSignature(why)
		}
		if ok {
			if _, _, _, err := d.verifyAttributes(&c, c.ExternalID); err != nil {
				return nil, err
			}
			res, err := d.installs.link(ctx, installID, c.ExternalID)
			if err != nil {
				return nil, loginLinkError(err)
			}
			linked = res.UserID
		}
	}
	id, err := d.Identify(ctx, &c)
	if err != nil {
		return nil, err
	}
	if id.UserID == "" {
		return nil, apierr.AuthRequired("a login needs a user credential: a signed external id, a contact token or an SSO token")
	}
	id.InstallID = ""
	if !id.Verified {
		// Report and off modes observe, they never bind: an unverified
		// login holds an unverified session of the user it names, and
		// that is all. It links no install (nor adopts its anonymous
		// user), writes no attributes (nor email or phone: Identify
		// accepts those only beside a verified external id), gets no
		// contact token and evicts no verified session.
		if installID != "" || attrs != nil {
			d.logger.Info("report mode: unverified login binds nothing",
				zap.Bool("install_ignored", installID != ""), zap.Bool("attributes_ignored", attrs != nil))
		}
		installID, attrs = "", nil
		id.VerifiedEmail, id.VerifiedPhone = "", ""
	}
	if installID != "" {
		if linked == "" && id.ExternalID != "" {
			res, err := d.installs.link(ctx, installID, id.ExternalID)
			if err != nil {
				return nil, loginLinkError(err)
			}
			linked = res.UserID
		}
		if linked != id.UserID {
			// An identity without an external id (nothing to link to),
			// or, defensively, a link that disagrees with it.
			return nil, apierr.IdentityMismatch("the install cannot be linked to this login's user")
		}
		id.InstallID = installID
	}
	return d.admit(ctx, id, attrs)
}

// loginLinkError maps the errors of linking an install at login.
func loginLinkError(err error) error {
	switch {
	case errors.Is(err, store.ErrInstallNotFound), errors.Is(err, store.ErrInstallWrongTenant):
		return apierr.UnknownInstall()
	case errors.Is(err, store.ErrLinkInProgress):
		return apierr.LinkInProgress()
	}
	return err
}

// admit admits a session for an identified user.
func (d *Domain) admit(ctx context.Context, id Identity, attrs *store.AttributeUpdate) (*LoginResult, error) {
	shard, err := store.ParseID(store.KindUser, id.UserID)
	if err != nil {
		return nil, fmt.Errorf("%w: user id %q: %v", store.ErrUnavailable, id.UserID, err)
	}
	sign, err := d.tokens.prepare(ctx, id)
	if err != nil {
		return nil, err
	}
	ns := store.NewSession{
		ID: store.NewID(store.KindSession, shard), UserID: id.UserID, InstallID: id.InstallID,
		Verified: id.Verified, Email: id.VerifiedEmail, Phone: id.VerifiedPhone, Attributes: attrs,
	}
	// Detached from the client's cancellation (the call keeps its
	// deadline): a client that hangs up mid-login gets no answer, but the
	// admission is not left to chance.
	started := d.cfg.Now()
	evicted, err := d.cfg.Store.AdmitSession(context.WithoutCancel(ctx), d.keys, d.sessions.policy, ns, started)
	var tooLarge *store.AttributesTooLargeError
	if errors.As(err, &tooLarge) {
		return nil, apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeAttributesTooLarge,
			fmt.Sprintf("the external attributes would be %d bytes of JSON after merging; the limit is %d", tooLarge.Size, tooLarge.Limit))
	}
	if err != nil {
		return nil, err
	}
	// This instance refuses the evicted sessions from now on; the others
	// hear it on the invalidation channel.
	for _, sid := range evicted {
		d.sessions.drop(sid)
	}
	d.observeSession(EventStarted, verifiedReason(id.Verified), 1)
	d.observeSession(EventEnded, store.ReasonEvicted, len(evicted))
	res := &LoginResult{UserID: id.UserID, SessionID: ns.ID, Evicted: evicted, Verified: id.Verified}
	if lt := d.sessions.policy.Lifetime; lt > 0 {
		res.ExpiresAt = started.Add(lt).UTC().Truncate(time.Millisecond)
	}
	if sign != nil {
		if res.ContactToken, err = sign(ns.ID, res.ExpiresAt); err != nil {
			return nil, err
		}
	}
	d.debug("session started", zap.String("user_id", id.UserID), zap.Int("evicted", len(evicted)))
	return res, nil
}

// Issues reports whether the tenant issues contact tokens.
func (d *Domain) Issues() bool { return d.tokens.issues() }

// Refreshed is a fresh contact token for a live session.
type Refreshed struct {
	ContactToken string
	ExpiresAt    time.Time
	UserID       string
	SessionID    string
}

// Refresh issues a fresh token for a live session, named by the current
// token (Authorization: Bearer or X-Contact-Token; it must still verify)
// or by X-Session-Id. Its extra claims are the user's claims, read now,
// and it never outlives the session's absolute lifetime.
func (d *Domain) Refresh(ctx context.Context, c Credentials) (*Refreshed, error) {
	if !d.tokens.issues() {
		return nil, ErrNoSigningKey
	}
	raw := c.Bearer
	if raw == "" {
		raw = c.ContactToken
	} else if c.ContactToken != "" && c.ContactToken != raw {
		return nil, apierr.InvalidRequest("Authorization and X-Contact-Token carry different tokens")
	}
	sid, userID := "", ""
	if raw != "" {
		vt, err := d.verifyToken(ctx, raw)
		if err != nil {
			return nil, err
		}
		if !vt.Own || vt.SessionID == "" {
			return nil, apierr.Token("only a contact token idlink issued for a session can be refreshed")
		}
		sid, userID = vt.SessionID, vt.UserID
	}
	if c.SessionID != "" {
		if sid != "" && sid != c.SessionID {
			return nil, apierr.IdentityMismatch("the token and X-Session-Id name different sessions")
		}
		sid = c.SessionID
	}
	if sid == "" {
		return nil, apierr.AuthRequired("send the current contact token (Authorization: Bearer) or X-Session-Id")
	}
	e, err := d.sessions.live(ctx, sid)
	if err != nil {
		return nil, err
	}
	if userID != "" && e.userID != userID {
		return nil, apierr.Token("the token's session belongs to another user")
	}
	if !e.verified {
		return nil, apierr.SessionUnverified()
	}
	var end time.Time
	if lt := d.sessions.policy.Lifetime; lt > 0 {
		end = time.UnixMilli(e.started).Add(lt)
	}
	claims, err := d.tokens.claims(ctx, e.userID, e.externalID)
	if err != nil {
		return nil, err
	}
	tok, exp, err := d.tokens.issue(e.userID, sid, e.externalID, claims, end)
	if err != nil {
		return nil, err
	}
	return &Refreshed{ContactToken: tok, ExpiresAt: exp, UserID: e.userID, SessionID: sid}, nil
}

// Logout ends the session sid: its id never works again, on any instance.
// It is idempotent: a session that had already ended answers the reason it
// ended for. 401 unknown_session for an id the store does not know.
func (d *Domain) Logout(ctx context.Context, sid string) (reason string, err error) {
	if _, err := store.ParseID(store.KindSession, sid); err != nil {
		return "", apierr.UnknownSession()
	}
	why, endedNow, known, err := d.cfg.Store.EndSession(context.WithoutCancel(ctx), d.keys, d.sessions.policy, sid, store.ReasonLoggedOut, d.cfg.Now())
	if err != nil {
		return "", err
	}
	if endedNow {
		d.observeSession(EventEnded, store.ReasonLoggedOut, 1)
	}
	if !known {
		return "", apierr.UnknownSession()
	}
	d.sessions.drop(sid)
	return why, nil
}

// CreateInstall issues an install id with a new anonymous user, both
// expiring after the tenant's install_ttl unless used or linked.
func (d *Domain) CreateInstall(ctx context.Context) (installID, userID string, err error) {
	installID, userID, err = d.cfg.Store.CreateInstall(context.WithoutCancel(ctx), d.keys, d.cfg.Now(), d.users.expiry)
	if err == nil {
		d.debug("install created", zap.String("user_id", userID))
	}
	return installID, userID, err
}

// Link links an install to an external id the customer backend vouches
// for (POST /users/{install_id}/link). Errors are the store's.
func (d *Domain) Link(ctx context.Context, installID, externalID string) (store.LinkResult, error) {
	return d.installs.link(ctx, installID, externalID)
}

// UserSessions reads a user's attributes and live sessions (least
// recently active first) in one round trip.
func (d *Domain) UserSessions(ctx context.Context, userID string) (attrs string, live []store.LiveSession, err error) {
	return d.cfg.Store.UserSessions(ctx, d.keys, d.sessions.policy, userID, d.cfg.Now())
}

func verifiedReason(v bool) string {
	if v {
		return "verified"
	}
	return "unverified"
}
