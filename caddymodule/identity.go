package caddymodule

import (
	"context"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
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

var anonymous = identity{source: SourceAnonymous}

// authenticate verifies the credentials of a request and resolves the
// user. Precedence (SPEC.md): contact token, HMAC external id, SSO token,
// session id, install id, anonymous.
func (t *Tenant) authenticate(ctx context.Context, c *credentials) (identity, *apiError) {
	platform, mode := t.platformFor(c.platform)
	id := identity{}
	if platform != nil && mode != ModeOff {
		if c.email != "" && c.emailSig != "" {
			if verifyHMAC(platform.keys, c.email, c.emailSig) {
				id.verifiedEmail = c.email
			} else if mode == ModeEnforce {
				return identity{}, t.badSignature("the email signature does not match")
			}
		}
		if c.phone != "" && c.phoneSig != "" {
			if verifyHMAC(platform.keys, c.phone, c.phoneSig) {
				id.verifiedPhone = c.phone
			} else if mode == ModeEnforce {
				return identity{}, t.badSignature("the phone signature does not match")
			}
		}
	}

	if c.externalID != "" && len(t.Platforms) > 0 {
		verified, why := false, ""
		switch {
		case mode == ModeOff:
		case platform == nil:
			why = "unknown platform"
		case c.externalIDSig == "":
			why = "the external id has no signature"
		case !verifyHMAC(platform.keys, c.externalID, c.externalIDSig):
			why = "the external id signature does not match"
		default:
			verified = true
		}
		if !verified && mode == ModeEnforce {
			return identity{}, t.badSignature(why)
		}
		if !verified && mode == ModeReport {
			t.logger.Info("report mode: unverified external id passed", zap.String("reason", why))
		}
		userID, err := t.resolveExternal(ctx, c.externalID)
		if err != nil {
			return t.storeFailed(err)
		}
		id.source, id.verified = SourceHMAC, verified
		id.userID, id.externalID = userID, c.externalID
		return id, nil
	}

	if t.Anonymous == AnonymousDeny {
		return identity{}, &apiError{
			Status: http.StatusUnauthorized, Code: codeAuthRequired,
			Message: "this endpoint needs an identified user",
		}
	}
	anon := anonymous
	anon.verifiedEmail, anon.verifiedPhone = id.verifiedEmail, id.verifiedPhone
	return anon, nil
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
	if ce := t.logger.Check(zap.DebugLevel, "signature refused"); ce != nil {
		ce.Write(zap.String("reason", why))
	}
	return newError(http.StatusUnauthorized, codeInvalidSignature, why)
}

// storeFailed applies the on_store_error policy.
func (t *Tenant) storeFailed(err error) (identity, *apiError) {
	t.logStoreError(err)
	if t.app.OnStoreError == FailOpen && t.Anonymous == AnonymousAllow {
		return anonymous, nil
	}
	return identity{}, errStoreUnavailable()
}
