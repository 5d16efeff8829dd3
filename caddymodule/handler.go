package caddymodule

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Identity sources, the values of X-Identity-Source.
const (
	SourceContactToken = "contact_token"
	SourceHMAC         = "hmac"
	SourceSSO          = "sso"
	SourceSession      = "session"
	SourceInstall      = "install"
	SourceAnonymous    = "anonymous"
)

// Handler is the "idlink" HTTP handler: it verifies the identity a request
// presents for one tenant and hands the next handler (typically
// reverse_proxy) a clean, trustworthy set of identity headers.
//
// Before anything else it deletes every identity header the client sent,
// in every spelling (case, duplicates, and the underscore forms CGI, PHP
// and WSGI fold into the same name), on every path; likewise it deletes
// identity and credential names from the request's trailers (declared and
// sent) and from Connection (so that a client cannot have reverse_proxy
// drop idlink's headers as hop-by-hop). Then it sets
// X-Platform-User-Id, X-Identity-Source, X-Identity-Verified,
// X-External-Id, X-Install-Id, X-Verified-Email, X-Verified-Phone and the
// contact token's claim_header headers from what it verified. X-Install-Id
// alone identifies the install's user, unverified (X-Identity-Source:
// install). Signatures and tokens (X-Contact-Token, X-Sso-Token, and
// Authorization: Bearer when the tenant verifies contact tokens) are not
// forwarded.
//
// Placeholders set: {http.auth.user.id} (the platform user id, as Caddy's
// authentication handler does), {idlink.user_id}, {idlink.external_id},
// {idlink.source}, {idlink.verified}, {idlink.install_id},
// {idlink.session_id}, {idlink.tenant}, and {idlink.error} (the error code
// of a refused request).
//
// Answers, all JSON {"error","message"}: 400 invalid_request (ambiguous,
// over-long or control-character values), 401 invalid_signature (enforce
// mode), 401 invalid_token with WWW-Authenticate (contact or SSO token
// refused), 401 unknown_install (X-Install-Id not an install of the
// tenant), 401 session_ended with "reason" (X-Session-Id, or the sid of a
// contact token, evicted, logged_out, idle or expired), 401
// unknown_session, 401 identity_mismatch (credentials naming different
// users), 401 authentication_required (anonymous deny), 503
// key_source_unavailable (JWKS down, no key), 503 sso_unavailable
// (token-info URL down), 503
// store_unavailable with Retry-After (store down, fail_closed).
//
// CORS preflight requests (OPTIONS with Access-Control-Request-Method) are
// passed on without authentication (identity headers are still removed).
type Handler struct {
	// Tenant is the name of the tenant in the idlink app. Required.
	Tenant string `json:"tenant"`

	// ForwardCredentials keeps the signature and token headers on the
	// request to the upstream. Default: false (they are removed).
	ForwardCredentials bool `json:"forward_credentials,omitempty"`

	tenant *Tenant
	app    *App
	logger *zap.Logger
	strip  headerSet
	// hop are the names a client may not nominate in Connection (so that
	// reverse_proxy would drop them as hop-by-hop) nor send as trailers:
	// every identity, claim and credential header, whatever
	// forward_credentials says (idlink never reads a trailer, so a
	// credential there was never verified), and, in trailers, Authorization.
	hop, trailers headerSet
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idlink",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision finds the tenant in the idlink app.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	appIface, err := ctx.App("idlink")
	if err != nil {
		return fmt.Errorf("loading idlink app: %v", err)
	}
	return h.provisionWith(appIface.(*App))
}

// provisionWith binds the handler to a provisioned app.
func (h *Handler) provisionWith(app *App) (err error) {
	h.app = app
	if h.Tenant == "" {
		return fmt.Errorf("tenant is required")
	}
	if h.tenant, err = h.app.tenant(h.Tenant); err != nil {
		return err
	}
	if h.ForwardCredentials {
		h.strip = h.tenant.identityStrip
	} else {
		h.strip = h.tenant.strip
	}
	claims := h.tenant.ContactToken.stripHeaders()
	h.hop = newHeaderSet(identityHeaders, credentialHeaders, claims)
	h.trailers = newHeaderSet(identityHeaders, credentialHeaders, claims, []string{hdrAuthorization})
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	repl.Set("idlink.tenant", h.Tenant)

	// Read what the client presented, then delete every identity header
	// (and, unless forwarded, every credential) before anything can fail.
	creds, bad := readCredentials(r.Header)
	h.strip.strip(r.Header)
	h.hop.stripTokens(r.Header, "Connection")
	h.trailers.stripTrailers(r)
	if creds.bearer != "" && h.tenant.ContactToken != nil && !h.ForwardCredentials {
		// The bearer token is this tenant's contact token: a credential.
		delete(r.Header, hdrAuthorization)
	}
	if isPreflight(r) {
		return next.ServeHTTP(w, r)
	}
	if bad != nil {
		return h.refuse(w, repl, bad)
	}

	id, aerr := h.tenant.authenticate(r.Context(), &creds)
	if aerr != nil {
		return h.refuse(w, repl, aerr)
	}
	id.apply(r.Header, repl)
	return next.ServeHTTP(w, r)
}

// refuse answers a refused request and records its code for logs.
func (h *Handler) refuse(w http.ResponseWriter, repl *caddy.Replacer, e *apiError) error {
	repl.Set("idlink.error", e.Code)
	writeError(w, e)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
