package caddymodule

import (
	"context"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// identity is who a request was verified to be.
type identity struct {
	source        string
	verified      bool
	userID        string
	externalID    string
	installID     string
	sessionID     string
	verifiedEmail string
	verifiedPhone string
	claimHeaders  []verify.Header // from a contact token's claim_header mappings
}

// apply sets the identity headers on the request to the upstream (which
// were all deleted before) and the placeholders.
func (id *identity) apply(h http.Header, repl *caddy.Replacer) {
	verified := "false"
	if id.verified {
		verified = "true"
	}
	h[hdrIdentitySource] = []string{id.source}
	h[hdrIdentityVerified] = []string{verified}
	setIf(h, hdrPlatformUserID, id.userID)
	setIf(h, hdrExternalID, id.externalID)
	setIf(h, hdrInstallID, id.installID)
	setIf(h, hdrSessionID, id.sessionID)
	setIf(h, hdrVerifiedEmail, id.verifiedEmail)
	setIf(h, hdrVerifiedPhone, id.verifiedPhone)
	for _, hv := range id.claimHeaders {
		h[hv.Name] = []string{hv.Value}
	}

	repl.Set("idlink.source", id.source)
	repl.Set("idlink.verified", verified)
	repl.Set("idlink.user_id", id.userID)
	repl.Set("idlink.external_id", id.externalID)
	repl.Set("idlink.install_id", id.installID)
	repl.Set("idlink.session_id", id.sessionID)
	if id.userID != "" {
		repl.Set("http.auth.user.id", id.userID)
	}
}

func setIf(h http.Header, name, v string) {
	if v != "" {
		h[name] = []string{v}
	}
}

// A credentialCheck verifies one kind of credential of a request. It
// returns nil, nil when the request does not present that kind; a claim
// when it verified (or, in report/off mode, accepted) it; an error when
// the request must be refused.
type credentialCheck func(t *Tenant, ctx context.Context, c *credentials) (*identity, error)

// credentialChecks in SPEC.md's order of precedence: contact token, HMAC
// external id, SSO token, session id, install id. The first that is
// present names the user; every other one present must name the same user.
var credentialChecks = []credentialCheck{
	(*Tenant).checkContactToken,
	(*Tenant).checkHMAC,
	(*Tenant).checkSSO,
	(*Tenant).checkSession,
	(*Tenant).checkInstall,
}

// authenticate verifies the credentials of a request and resolves the
// user. Store failures are turned into the on_store_error policy here.
func (t *Tenant) authenticate(ctx context.Context, c *credentials) (identity, *apiError) {
	id, err := t.identify(ctx, c)
	if err != nil {
		if ae, ok := err.(*apiError); ok {
			return identity{}, ae
		}
		return t.storeFailed(err)
	}
	return id, nil
}

func (t *Tenant) identify(ctx context.Context, c *credentials) (identity, error) {
	var id *identity
	for _, check := range credentialChecks {
		claim, err := check(t, ctx, c)
		if err != nil {
			return identity{}, err
		}
		if claim == nil {
			continue
		}
		if id == nil {
			id = claim
			continue
		}
		if claim.userID != id.userID {
			t.debug("credentials disagree", zap.String("primary", id.source), zap.String("other", claim.source))
			return identity{}, newError(http.StatusUnauthorized, codeIdentityMismatch,
				"the credentials presented name different users")
		}
		// Secondary credentials add what they know (install, session).
		if id.installID == "" {
			id.installID = claim.installID
		}
		if id.sessionID == "" {
			id.sessionID = claim.sessionID
		}
		if id.externalID == "" && claim.verified {
			id.externalID = claim.externalID
		}
		if id.verifiedEmail == "" && id.verifiedPhone == "" {
			id.verifiedEmail, id.verifiedPhone = claim.verifiedEmail, claim.verifiedPhone
		}
		if id.claimHeaders == nil {
			id.claimHeaders = claim.claimHeaders
		}
	}
	if id == nil {
		if t.Anonymous == AnonymousDeny {
			return identity{}, newError(http.StatusUnauthorized, codeAuthRequired,
				"this endpoint needs an identified user")
		}
		id = &identity{source: SourceAnonymous}
	}
	// Signed email/phone on the request win over the ones a session's
	// login stored for the user; they count only beside a verified
	// external id.
	if id.verified && id.externalID != "" {
		email, phone, err := t.verifyAttributes(c, id.externalID)
		if err != nil {
			return identity{}, err
		}
		if email != "" || phone != "" {
			id.verifiedEmail, id.verifiedPhone = email, phone
		}
	} else if c.emailSig != "" || c.phoneSig != "" {
		t.debug("signed email/phone ignored: no verified external id on the request")
	}
	return *id, nil
}

// Signed attribute formats (the tenant's signed_attributes).
const (
	// SignedAttributesBound (default): the signature of an email or a
	// phone is HMAC(secret, field + "\n" + external id + "\n" + value),
	// so that it holds for that user and that field only.
	SignedAttributesBound = "bound"
	// SignedAttributesPlain: HMAC(secret, value), as signers of the seeds
	// do. A captured (value, signature) pair works beside any verified
	// external id, and an external-id signature of "ceo@corp.com" is also
	// an email signature of it.
	SignedAttributesPlain = "plain"
)

// attributeMessage is the message an email or phone signature signs: in
// the bound format, the field, the external id and the value separated by
// newlines (which neither an external id nor a header value can contain,
// so the message names them unambiguously, and never equals an external
// id, which an external-id signature signs).
func attributeMessage(format, field, externalID, value string) string {
	if format == SignedAttributesPlain {
		return value
	}
	return field + "\n" + externalID + "\n" + value
}

// verifyAttributes checks the signed email and phone of a request whose
// verified external id is externalID. They are injected only when their
// signature verifies; a bad one is refused in enforce mode and dropped
// otherwise.
func (t *Tenant) verifyAttributes(c *credentials, externalID string) (email, phone string, err error) {
	platform, mode := t.platformFor(c.platform)
	if platform == nil || mode == ModeOff {
		return "", "", nil
	}
	check := func(v, sig, what string) (string, error) {
		if v == "" || sig == "" {
			return "", nil
		}
		if verify.HMAC(platform.keys, attributeMessage(t.SignedAttributes, what, externalID, v), sig) {
			return v, nil
		}
		if mode == ModeEnforce {
			return "", t.badSignature("the " + what + " signature does not match")
		}
		return "", nil
	}
	if email, err = check(c.email, c.emailSig, "email"); err != nil {
		return "", "", err
	}
	phone, err = check(c.phone, c.phoneSig, "phone")
	return email, phone, err
}

// checkHMAC verifies X-External-Id with X-External-Id-Signature under the
// platform's secrets and resolves the user of the external id. A tenant
// without platforms does not accept external ids.
func (t *Tenant) checkHMAC(ctx context.Context, c *credentials) (*identity, error) {
	if c.externalID == "" || len(t.Platforms) == 0 {
		return nil, nil
	}
	verified, mode, why := t.verifyExternalID(c)
	if !verified && mode == ModeEnforce {
		return nil, t.badSignature(why)
	}
	if !verified && mode == ModeReport {
		t.logger.Info("report mode: unverified external id passed", zap.String("reason", why))
	}
	resolve := t.resolveExternal
	if !verified {
		resolve = t.resolveUnverified // its user expires until a verified credential names it
	}
	userID, err := resolve(ctx, c.externalID)
	if err != nil {
		return nil, err
	}
	return &identity{source: SourceHMAC, verified: verified, userID: userID, externalID: c.externalID}, nil
}

// verifyExternalID checks the signature of X-External-Id under its
// platform: whether it verified, the mode that applies, and why not.
func (t *Tenant) verifyExternalID(c *credentials) (verified bool, mode, why string) {
	platform, mode := t.platformFor(c.platform)
	switch {
	case mode == ModeOff:
	case platform == nil:
		why = "unknown platform"
	case c.externalIDSig == "":
		why = "the external id has no signature"
	case !verify.HMAC(platform.keys, c.externalID, c.externalIDSig):
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
func (t *Tenant) platformFor(name string) (*Platform, string) {
	if name == "" {
		name = t.DefaultPlatform
	}
	if p := t.Platforms[name]; p != nil {
		return p, p.Mode
	}
	return nil, t.strictest
}

func (t *Tenant) badSignature(why string) *apiError {
	t.debug("signature refused", zap.String("reason", why))
	return newError(http.StatusUnauthorized, codeInvalidSignature, why)
}

// debug logs a refused credential at debug level: never at error level,
// never with the credential itself.
func (t *Tenant) debug(msg string, fields ...zap.Field) {
	if ce := t.logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(fields...)
	}
}

// storeFailed applies the on_store_error policy: fail_closed answers 503
// store_unavailable; fail_open passes the request as anonymous, never with
// an identity it did not verify (and not at all if anonymous is denied).
func (t *Tenant) storeFailed(err error) (identity, *apiError) {
	t.logStoreError(err)
	if t.app.OnStoreError == FailOpen && t.Anonymous == AnonymousAllow {
		return identity{source: SourceAnonymous}, nil
	}
	return identity{}, errStoreUnavailable()
}
