package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the
// tenant's OpenID provider POSTs logout_token=<JWT> to POST
// /backchannel-logout when a user logs out there, and idlink ends that
// user's sessions. The domain side is internal/identity/logout.go.

// defaultLogoutMaxAge is how old a logout token may be (now - iat) when
// backchannel_logout sets no max_age.
const defaultLogoutMaxAge = 5 * time.Minute

// maxLogoutBody bounds the form body: one token of at most
// verify.MaxTokenBytes (base64url is never percent-encoded) and the name.
const maxLogoutBody = verify.MaxTokenBytes + 64

// BackchannelLogout accepts the logout tokens of the provider whose
// contact tokens the tenant verifies (contact_token's jwks_url and keys;
// never idlink's own sign_key). A token's sub is the user's external id,
// as in those contact tokens (user_claim sub) and SSO answers.
type BackchannelLogout struct {
	// Issuer is the iss logout tokens must carry. Default: contact_token's
	// issuer.
	Issuer string `json:"issuer,omitempty"`
	// Audience lists accepted aud values (the relying party's client id).
	// Default: contact_token's audience.
	Audience []string `json:"audience,omitempty"`
	// MaxAge refuses logout tokens issued (iat) longer ago than this, with
	// contact_token's leeway. Their jti is remembered as long. Default: 5m.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

func (b *BackchannelLogout) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch name := d.Val(); name {
		case "issuer":
			if b.Issuer != "" {
				return d.Err("issuer already specified")
			}
			if err := oneArg(d, &b.Issuer); err != nil {
				return err
			}
		case "audience":
			if len(b.Audience) > 0 {
				return d.Err("audience already specified")
			}
			if b.Audience = d.RemainingArgs(); len(b.Audience) == 0 {
				return d.ArgErr()
			}
		case "max_age":
			if b.MaxAge != 0 {
				return d.Err("max_age already specified")
			}
			if err := durationArg(d, &b.MaxAge); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized backchannel_logout subdirective '%s'", name)
		}
	}
	return nil
}

func (b *BackchannelLogout) validate(tenant string, c *ContactToken) error {
	switch {
	case c.JWKSURL == "" && len(c.Keys) == 0:
		return fmt.Errorf("tenant %q contact_token backchannel_logout: needs the provider's keys (jwks_url or key); sign_key never verifies a logout token", tenant)
	case c.UserClaim != "" && c.UserClaim != defaultUserClaim:
		return fmt.Errorf("tenant %q contact_token backchannel_logout: a logout token names the user by sub, and user_claim %q names it otherwise", tenant, c.UserClaim)
	case b.MaxAge < 0:
		return fmt.Errorf("tenant %q contact_token backchannel_logout: max_age must be positive", tenant)
	}
	return nil
}

// provision builds the verifier, defaults filled from the contact token.
func (b *BackchannelLogout) provision(t *Tenant, c *ContactToken) (*verify.Logout, error) {
	if b.Issuer == "" {
		b.Issuer = c.Issuer
	}
	if len(b.Audience) == 0 {
		b.Audience = c.Audience
	}
	if b.MaxAge <= 0 {
		b.MaxAge = caddy.Duration(defaultLogoutMaxAge)
	}
	v, err := verify.NewLogout(verify.LogoutConfig{
		Tokens: c.v, Issuer: b.Issuer, Audience: b.Audience,
		MaxAge: time.Duration(b.MaxAge), Leeway: time.Duration(c.Leeway), Now: t.now,
	})
	if err != nil {
		return nil, fmt.Errorf("contact_token backchannel_logout: %v", err)
	}
	return v, nil
}

// backchannelLogout is POST /backchannel-logout. The provider calls it,
// not the customer backend: no API key; the token's signature is the
// authentication. 200 {"sessions_ended": n}; 400 invalid_request with
// error_description (§2.8), also for a replayed token; 404 when the tenant
// has no backchannel_logout; 503 with Retry-After when the provider's keys
// or the store cannot be reached (the provider may retry).
func (a *API) backchannelLogout(w http.ResponseWriter, r *http.Request) {
	raw, refusal := readLogoutToken(w, r)
	if refusal != nil {
		writeLogoutRefusal(w, refusal)
		return
	}
	n, err := a.tenant.id.BackchannelLogout(r.Context(), raw)
	var ae *apiError
	switch {
	case errors.Is(err, identity.ErrNoBackchannelLogout):
		writeError(w, newError(http.StatusNotFound, codeNotFound, "this tenant does not accept back-channel logout"))
	case errors.As(err, &ae) && ae.Status == http.StatusBadRequest:
		writeLogoutRefusal(w, ae)
	case err != nil:
		a.fail(w, err)
	default:
		writeJSON(w, http.StatusOK, struct {
			SessionsEnded int `json:"sessions_ended"`
		}{n})
	}
}

// readLogoutToken reads the one logout_token of a form body.
func readLogoutToken(w http.ResponseWriter, r *http.Request) (string, *apiError) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		return "", newError(http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLogoutBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", newError(http.StatusRequestEntityTooLarge, "body_too_large",
				fmt.Sprintf("the body must be at most %d bytes", maxLogoutBody))
		}
		return "", apierr.InvalidRequest("the body could not be read")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return "", apierr.InvalidRequest("the body is not a valid form")
	}
	if v := form["logout_token"]; len(v) != 1 || v[0] == "" {
		return "", apierr.InvalidRequest("the body must carry exactly one logout_token")
	}
	return form.Get("logout_token"), nil
}

// writeLogoutRefusal answers a refusal with OAuth's error_description
// beside idlink's message (§2.8 of the specification).
func writeLogoutRefusal(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.Status, struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		Message     string `json:"message"`
	}{e.Code, e.Message, e.Message})
}
