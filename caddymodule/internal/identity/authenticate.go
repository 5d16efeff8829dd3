package identity

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/spans"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// A credentialCheck verifies one kind of credential of a request. It
// returns a zero Identity (no Source) and no error when the request does
// not present that kind; a claim when it verified (or, in report/off
// mode, accepted) it; an error when the request must be refused. Claims
// are values: a pointer returned through the table's function values
// would put every claim on the heap, one allocation per request.
type credentialCheck func(d *Domain, ctx context.Context, c *Credentials) (Identity, error)

// credentialChecks in SPEC.md's order of precedence: contact token, HMAC
// external id, SSO token, session id, install id. The first that is
// present names the user; every other one present must name the same user.
var credentialChecks = []struct {
	name    string // of its trace span, idlink.verify.<name>
	present func(c *Credentials) bool
	check   credentialCheck
}{
	{"contact_token", func(c *Credentials) bool { return c.ContactToken != "" || c.Bearer != "" }, (*Domain).checkContactToken},
	{"hmac", func(c *Credentials) bool { return c.ExternalID != "" }, (*Domain).checkHMAC},
	{"sso", func(c *Credentials) bool { return c.SSOToken != "" }, (*Domain).checkSSO},
	{"session", func(c *Credentials) bool { return c.SessionID != "" }, (*Domain).checkSession},
	{"install", func(c *Credentials) bool { return c.InstallID != "" }, (*Domain).checkInstall},
}

// Authenticate verifies the credentials of a request and resolves the
// user. Store failures are turned into the on_store_error policy here:
// the answer is an identity or a refusal, never another error.
func (d *Domain) Authenticate(ctx context.Context, c *Credentials) (Identity, *apierr.Error) {
	id, err := d.Identify(ctx, c)
	if err == nil {
		return id, nil
	}
	if ae, ok := err.(*apierr.Error); ok {
		return Identity{}, ae
	}
	// The on_store_error policy: fail_closed answers 503
	// store_unavailable; fail_open passes the request as anonymous, never
	// with an identity it did not verify (and not at all if anonymous is
	// denied).
	d.LogStoreError(err)
	if d.cfg.FailOpen && !d.cfg.AnonymousDeny {
		return Identity{Source: SourceAnonymous}, nil
	}
	return Identity{}, apierr.StoreUnavailable()
}

// Identify verifies the credentials of a request and resolves the user;
// errors are refusals (*apierr.Error) or store failures.
func (d *Domain) Identify(ctx context.Context, c *Credentials) (Identity, error) {
	var id Identity // no Source: no claim yet
	traced := spans.Recording(ctx)
	for _, cc := range credentialChecks {
		var claim Identity
		var err error
		if traced && cc.present(c) {
			claim, err = d.tracedCheck(ctx, cc.name, cc.check, c)
		} else {
			claim, err = cc.check(d, ctx, c)
		}
		if err != nil {
			return Identity{}, err
		}
		if claim.Source == "" {
			continue
		}
		if id.Source == "" {
			id = claim
			continue
		}
		if claim.UserID != id.UserID {
			// An external id that did not verify (report or off mode) is
			// the client's own writing: it observes, it never binds, so it
			// gives way to the credential idlink issued or verified rather
			// than refusing the request (which report mode must not do).
			switch {
			// Enforce mode would have refused it: that is still counted.
			case unverifiedExternal(&id):
				d.debug("unverified external id ignored: another credential names another user", zap.String("other", claim.Source))
				if claim.WouldRefuse == "" {
					claim.WouldRefuse = id.WouldRefuse
				}
				id = claim
				continue
			case unverifiedExternal(&claim):
				d.debug("unverified external id ignored: another credential names another user", zap.String("primary", id.Source))
				if id.WouldRefuse == "" {
					id.WouldRefuse = claim.WouldRefuse
				}
				continue
			}
			d.debug("credentials disagree", zap.String("primary", id.Source), zap.String("other", claim.Source))
			return Identity{}, apierr.IdentityMismatch("the credentials presented name different users")
		}
		// Secondary credentials add what they know (install, session).
		if id.InstallID == "" {
			id.InstallID = claim.InstallID
		}
		if id.SessionID == "" {
			id.SessionID = claim.SessionID
		}
		if id.ExternalID == "" && claim.Verified {
			id.ExternalID = claim.ExternalID
		}
		if id.VerifiedEmail == "" && id.VerifiedPhone == "" {
			id.VerifiedEmail, id.VerifiedPhone = claim.VerifiedEmail, claim.VerifiedPhone
		}
		if id.ClaimHeaders == nil {
			id.ClaimHeaders = claim.ClaimHeaders
		}
		if id.WouldRefuse == "" {
			id.WouldRefuse = claim.WouldRefuse
		}
	}
	if id.Source == "" {
		if d.cfg.AnonymousDeny {
			return Identity{}, apierr.AuthRequired("this endpoint needs an identified user")
		}
		id = Identity{Source: SourceAnonymous}
	}
	// Signed email/phone on the request win over the ones a session's
	// login stored for the user; they count only beside a verified
	// external id.
	if id.Verified && id.ExternalID != "" {
		email, phone, wouldRefuse, err := d.verifyAttributes(c, id.ExternalID)
		if err != nil {
			return Identity{}, err
		}
		if id.WouldRefuse == "" {
			id.WouldRefuse = wouldRefuse
		}
		if email != "" || phone != "" {
			id.VerifiedEmail, id.VerifiedPhone = email, phone
		}
	} else if c.EmailSig != "" || c.PhoneSig != "" {
		d.debug("signed email/phone ignored: no verified external id on the request")
	}
	return id, nil
}

// unverifiedExternal reports a claim made by an external id whose
// signature did not verify (report or off mode).
func unverifiedExternal(id *Identity) bool { return id.Source == SourceHMAC && !id.Verified }

// tracedCheck runs a credential check in its span idlink.verify.<name>,
// ended with its outcome: verified, unverified, a refusal's code, or
// store_error. Never the credential.
func (d *Domain) tracedCheck(ctx context.Context, name string, check credentialCheck, c *Credentials) (Identity, error) {
	ctx, span := spans.StartTenant(ctx, "idlink.verify."+name, d.cfg.Tenant)
	claim, err := check(d, ctx, c)
	switch ae := (*apierr.Error)(nil); {
	case errors.As(err, &ae):
		spans.End(span, ae.Code, true)
	case err != nil:
		spans.End(span, "store_error", true)
	case claim.Source != "" && claim.Verified:
		spans.End(span, "verified", false)
	default:
		spans.End(span, "unverified", false)
	}
	return claim, err
}

// --- HMAC -----------------------------------------------------------------

// AttributeMessage is the message an email or phone signature signs: in
// the bound format, the field, the external id and the value separated by
// newlines (which neither an external id nor a header value can contain,
// so the message names them unambiguously, and never equals an external
// id, which an external-id signature signs).
func AttributeMessage(format, field, externalID, value string) string {
	if format == SignedAttributesPlain {
		return value
	}
	return field + "\n" + externalID + "\n" + value
}

// verifyAttributes checks the signed email and phone of a request whose
// verified external id is externalID. They are injected only when their
// signature verifies; a bad one is refused in enforce mode and dropped
// otherwise (wouldRefuse: in report mode, the code enforce would refuse
// it with).
func (d *Domain) verifyAttributes(c *Credentials, externalID string) (email, phone, wouldRefuse string, err error) {
	platform, mode := d.platformFor(c.Platform)
	if platform == nil || mode == ModeOff {
		return "", "", "", nil
	}
	check := func(v, sig, what string) (string, error) {
		if v == "" || sig == "" {
			return "", nil
		}
		if verify.HMAC(platform.Keys, AttributeMessage(d.cfg.SignedAttributes, what, externalID, v), sig) {
			return v, nil
		}
		if mode == ModeEnforce {
			return "", d.badSignature("the " + what + " signature does not match")
		}
		wouldRefuse = apierr.CodeInvalidSignature
		return "", nil
	}
	if email, err = check(c.Email, c.EmailSig, "email"); err != nil {
		return "", "", "", err
	}
	if phone, err = check(c.Phone, c.PhoneSig, "phone"); err != nil {
		return "", "", "", err
	}
	return email, phone, wouldRefuse, nil
}

// checkHMAC verifies X-External-Id with X-External-Id-Signature under the
// platform's secrets and resolves the user of the external id. A tenant
// without platforms does not accept external ids.
func (d *Domain) checkHMAC(ctx context.Context, c *Credentials) (Identity, error) {
	if c.ExternalID == "" || len(d.cfg.Platforms) == 0 {
		return Identity{}, nil
	}
	verified, mode, why := d.verifyExternalID(c)
	if !verified && mode == ModeEnforce {
		return Identity{}, d.badSignature(why)
	}
	if !verified && mode == ModeReport {
		d.logger.Info("report mode: unverified external id passed", zap.String("reason", why))
	}
	resolve := d.users.resolve
	if !verified {
		resolve = d.users.resolveUnverified // its user expires until a verified credential names it
	}
	userID, err := resolve(ctx, c.ExternalID)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{Source: SourceHMAC, Verified: verified, UserID: userID, ExternalID: c.ExternalID}
	if !verified && mode == ModeReport {
		id.WouldRefuse = apierr.CodeInvalidSignature
	}
	return id, nil
}

// verifyExternalID checks the signature of X-External-Id under its
// platform: whether it verified, the mode that applies, and why not.
func (d *Domain) verifyExternalID(c *Credentials) (verified bool, mode, why string) {
	platform, mode := d.platformFor(c.Platform)
	switch {
	case mode == ModeOff:
	case platform == nil:
		why = "unknown platform"
	case c.ExternalIDSig == "":
		why = "the external id has no signature"
	case !verify.HMAC(platform.Keys, c.ExternalID, c.ExternalIDSig):
		why = "the external id signature does not match"
	default:
		verified = true
	}
	return verified, mode, why
}

// platformFor returns the platform a request names (or the default one)
// and the mode that applies: the platform's own, or for an unknown or
// missing platform the strictest mode of the tenant, so that naming a
// platform that does not exist never weakens enforcement.
func (d *Domain) platformFor(name string) (*Platform, string) {
	if name == "" {
		name = d.cfg.DefaultPlatform
	}
	if p := d.cfg.Platforms[name]; p != nil {
		return p, p.Mode
	}
	return nil, d.strictest
}

func (d *Domain) badSignature(why string) *apierr.Error {
	d.debug("signature refused", zap.String("reason", why))
	return apierr.New(401, apierr.CodeInvalidSignature, why)
}

// --- Contact tokens -------------------------------------------------------

// checkContactToken verifies the contact token of a request, if any: from
// X-Contact-Token, or Authorization: Bearer when the tenant verifies
// contact tokens. A token signed by the tenant's own key names the platform
// user in "sub" and its session in "sid"; another issuer's token names an
// external id (user_claim), resolved like the HMAC path.
func (d *Domain) checkContactToken(ctx context.Context, c *Credentials) (Identity, error) {
	raw := c.ContactToken
	if c.Bearer != "" && d.cfg.Tokens != nil {
		if raw != "" && raw != c.Bearer {
			return Identity{}, apierr.InvalidRequest("Authorization and X-Contact-Token carry different tokens")
		}
		raw = c.Bearer
	}
	if raw == "" {
		return Identity{}, nil
	}
	if d.cfg.Tokens == nil {
		return Identity{}, apierr.Token("this tenant does not accept contact tokens")
	}
	vt, err := d.verifyToken(ctx, raw)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{
		Source: SourceContactToken, Verified: true,
		UserID: vt.UserID, ExternalID: vt.ExternalID, SessionID: vt.SessionID,
		ClaimHeaders: vt.Headers,
	}
	if !vt.Own {
		if id.UserID, err = d.users.resolve(ctx, vt.ExternalID); err != nil {
			return Identity{}, err
		}
	}
	if vt.SessionID != "" {
		e, err := d.tokenSession(ctx, vt)
		if err != nil {
			return Identity{}, err
		}
		id.InstallID = e.installID
		// A token says no more than its session knows.
		id.Verified = e.verified
	}
	return id, nil
}

// tokenSession refuses a token bound to a session (sid) that has ended,
// through the sessions' liveness check: warm, it costs no Redis round
// trip, and an end (logout, eviction) reaches every instance over the
// invalidation channel. It counts as activity on the session.
func (d *Domain) tokenSession(ctx context.Context, vt *verify.Token) (*sessionEntry, error) {
	e, err := d.sessions.live(ctx, vt.SessionID)
	if err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) {
			withChallenge := *ae
			withChallenge.Challenge = apierr.BearerInvalidToken
			return nil, &withChallenge
		}
		return nil, err
	}
	if e.userID != vt.UserID {
		return nil, apierr.Token("the token's session belongs to another user")
	}
	return e, nil
}

// verifyToken checks a token with the tenant's verifier, answering its
// refusals as 401 invalid_token and an unreachable key source as 503.
func (d *Domain) verifyToken(ctx context.Context, raw string) (*verify.Token, error) {
	vt, err := d.cfg.Tokens.Verify(ctx, raw)
	if err == nil {
		return vt, nil // before errors.As, whose target would escape: no allocation on a hit
	}
	var refused *verify.Refusal
	switch {
	case errors.As(err, &refused):
		return nil, apierr.Token(refused.Reason)
	case errors.Is(err, verify.ErrKeySourceUnavailable):
		return nil, apierr.KeySourceUnavailable()
	}
	return nil, err
}

// --- SSO ------------------------------------------------------------------

// checkSSO verifies X-Sso-Token against the tenant's token-info URL. Its
// sub is the user's external id (resolved like the HMAC path); its email
// counts as verified when the answer says email_verified: true.
func (d *Domain) checkSSO(ctx context.Context, c *Credentials) (Identity, error) {
	if c.SSOToken == "" {
		return Identity{}, nil
	}
	if d.cfg.SSO == nil {
		return Identity{}, apierr.Token("this tenant does not accept SSO tokens")
	}
	res, err := d.cfg.SSO.Check(ctx, c.SSOToken)
	var refused *verify.Refusal
	switch {
	case err == nil: // first: errors.As's target would escape, an allocation on every hit
	case errors.As(err, &refused):
		d.debug("SSO token refused", zap.String("reason", refused.Reason))
		return Identity{}, apierr.Token(refused.Reason)
	default:
		return Identity{}, apierr.SSOUnavailable()
	}
	userID, err := d.users.resolve(ctx, res.ExternalID)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Source: SourceSSO, Verified: true, UserID: userID,
		ExternalID: res.ExternalID, VerifiedEmail: res.Email}, nil
}

// --- Sessions and installs ------------------------------------------------

// checkSession verifies X-Session-Id: it must name a live session. Alone
// it identifies the session's user (X-Identity-Source: session); with
// other credentials the pipeline checks that they name the same user.
//
// X-Identity-Verified is the session's own: true when the login that
// started it verified its credential (a session id is an unguessable
// bearer credential that idlink issued only after that verification),
// false for a session started by an unverified report-mode login.
func (d *Domain) checkSession(ctx context.Context, c *Credentials) (Identity, error) {
	if c.SessionID == "" {
		return Identity{}, nil
	}
	e, err := d.sessions.live(ctx, c.SessionID)
	if err != nil {
		return Identity{}, err
	}
	return Identity{
		Source: SourceSession, Verified: e.verified, UserID: e.userID,
		ExternalID: e.externalID, InstallID: e.installID, SessionID: c.SessionID,
		VerifiedEmail: e.email, VerifiedPhone: e.phone,
	}, nil
}

// checkInstall identifies a request by X-Install-Id: the install's user,
// unverified (an install id is a device's bearer id, not a proof of who
// uses it). With a stronger credential it only has to agree with it.
func (d *Domain) checkInstall(ctx context.Context, c *Credentials) (Identity, error) {
	if c.InstallID == "" {
		return Identity{}, nil
	}
	u, err := d.installs.user(ctx, c.InstallID)
	if errors.Is(err, store.ErrInstallNotFound) {
		d.debug("unknown install id refused")
		return Identity{}, apierr.UnknownInstall()
	}
	if err != nil {
		return Identity{}, err
	}
	return Identity{Source: SourceInstall, UserID: u, InstallID: c.InstallID}, nil
}
