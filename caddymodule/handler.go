package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/internal/spans"
	"go.opentelemetry.io/otel/attribute"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Identity sources, the values of X-Identity-Source (identity.Source*).
const (
	SourceContactToken = identity.SourceContactToken
	SourceHMAC         = identity.SourceHMAC
	SourceSSO          = identity.SourceSSO
	SourceSession      = identity.SourceSession
	SourceInstall      = identity.SourceInstall
	SourceAnonymous    = identity.SourceAnonymous
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
// contact token, evicted, logged_out, revoked, idle or expired), 401
// unknown_session, 401 identity_mismatch (credentials naming different
// users, or a header and its cookie that differ), 401
// authentication_required (anonymous deny), 403 csrf_refused (a
// state change relying on a cookie without proof of its origin:
// cookies.go), 503
// key_source_unavailable (JWKS down, no key), 503 sso_unavailable
// (token-info URL down), 503
// store_unavailable with Retry-After (store down, fail_closed).
//
// With the tenant's cookie option, the install and session cookies stand
// in for X-Install-Id and X-Session-Id when those are absent, and are
// removed from the Cookie header before the next handler (the other
// cookies stay).
//
// CORS preflight requests (OPTIONS with Access-Control-Request-Method) are
// passed on without authentication (identity headers are still removed).
//
// The Caddyfile orders idlink with Caddy's authentication directives
// (after basic_auth and forward_auth, before handle, handle_path and
// route): at site level it guards every request of the site; inside a
// handle block, just that block. When an inner idlink runs after an outer
// one (a handle block under a site-level idlink), it verifies the
// credentials the client sent, as the outer one read them, for its own
// tenant: both must accept the request, and the inner one sets the
// identity.
//
// With API set (`idlink acme { api /idlink }`), the handler answers the
// tenant's API itself under that prefix: the request reaches the API as
// sent (credentials and all, nothing stripped or verified first), with the
// prefix removed as handle_path would, and the answer is never passed to
// the next handler. Only a clean path at or under the prefix is the API's
// (/idlink, /idlink/...; not /idlinkfoo, and not a path with empty, "."
// or ".." segments such as /idlink/../admin, which is guarded like any
// other path).
type Handler struct {
	// Tenant is the name of the tenant in the idlink app. Required.
	Tenant string `json:"tenant"`

	// ForwardCredentials keeps the signature and token headers on the
	// request to the upstream. Default: false (they are removed).
	ForwardCredentials bool `json:"forward_credentials,omitempty"`

	// API is the path prefix under which the handler serves the tenant's
	// API (the idlink_api endpoints), e.g. "/idlink". A clean absolute
	// path other than "/". Default: "" (no API).
	API string `json:"api,omitempty"`

	api    *API
	tenant *Tenant
	// tenantName is Tenant as the idlink.tenant placeholder's value.
	tenantName any
	app        *App
	logger     *zap.Logger
	strip      headerSet
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
	h.tenantName = h.Tenant // boxed once, not on every request
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
	if h.API != "" {
		if err := validAPIPrefix(h.API); err != nil {
			return fmt.Errorf("api %s: %v", h.API, err)
		}
		h.api = &API{Tenant: h.Tenant, logger: h.logger}
		if err := h.api.provisionWith(app); err != nil {
			return err
		}
	}
	return nil
}

// validAPIPrefix checks the api prefix: a clean absolute path, not "/",
// without pattern or escape characters.
func validAPIPrefix(p string) error {
	switch {
	case !strings.HasPrefix(p, "/") || p == "/":
		return errors.New("the prefix must be an absolute path below /, such as /idlink")
	case path.Clean(p) != p:
		return errors.New("the prefix must be a clean path (no trailing slash, empty, '.' or '..' segments)")
	case strings.ContainsAny(p, "*?#%{} \t"):
		return errors.New("the prefix must be a literal path (no '*', '?', '#', '%', placeholders or spaces)")
	}
	return nil
}

// apiRequest is r for the API, with the prefix removed, if r's path is
// the API's: a clean path (decoded and, when it differs, escaped) at or
// under the prefix.
func (h *Handler) apiRequest(r *http.Request) (*http.Request, bool) {
	p, ok := underPrefix(r.URL.Path, h.API)
	if !ok {
		return nil, false
	}
	rp := ""
	if r.URL.RawPath != "" {
		if rp, ok = underPrefix(r.URL.RawPath, h.API); !ok {
			return nil, false
		}
	}
	// As http.StripPrefix does: a shallow copy with its own URL.
	r2 := new(http.Request)
	*r2 = *r
	r2.URL = new(url.URL)
	*r2.URL = *r.URL
	r2.URL.Path, r2.URL.RawPath = p, rp
	return r2, true
}

// underPrefix returns the rest of p after prefix ("/" at least) when p is
// a clean path equal to prefix or below it.
func underPrefix(p, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok || (rest != "" && rest[0] != '/') {
		return "", false
	}
	if c := path.Clean(p); c != p && c+"/" != p {
		return "", false
	}
	if rest == "" {
		rest = "/"
	}
	return rest, true
}

// presented is what the client sent, as the first idlink handler of the
// request read it (before stripping), for idlink handlers further in: the
// credential headers and the Cookie header (each tenant reads its own
// cookies from it).
//
// It is itself the context that carries it to them: it embeds the
// request's context and answers presentedKey{} (as context.WithValue's
// value would, in one allocation instead of two). The identity header
// values that the handler that read it sets share that allocation too
// (vals).
type presented struct {
	context.Context // the request's context before the first idlink handler
	creds           identity.Credentials
	bad             *apiError
	cookies         []string // the Cookie lines
	// vals backs the identity and claim header values of the handler that
	// made this presented (applyIdentity); handlers further in use arrays
	// of their own, so no handler writes where another's values are.
	vals [12]string
}

type presentedKey struct{}

// Value answers presentedKey{} with p, and every other key from the
// request's context.
func (p *presented) Value(key any) any {
	if _, ok := key.(presentedKey); ok {
		return p
	}
	return p.Context.Value(key)
}

// String describes the context as context.WithValue's does, naming the
// value without printing it: the credentials are never formatted (a %v of
// the struct would print them).
func (p *presented) String() string {
	if s, ok := p.Context.(fmt.Stringer); ok {
		return s.String() + ".WithValue(idlink presented credentials)"
	}
	return "context.WithValue(idlink presented credentials)"
}

// GoString is String, for %#v.
func (p *presented) GoString() string { return p.String() }

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	if h.tenantName != nil {
		repl.Set("idlink.tenant", h.tenantName)
	} else {
		repl.Set("idlink.tenant", h.Tenant)
	}

	// The API's paths go to the API as sent; its answer ends the request.
	if h.api != nil {
		if ar, ok := h.apiRequest(r); ok {
			return h.api.ServeHTTP(w, ar, nil)
		}
	}

	// Read what the client presented (or what it presented to an outer
	// idlink handler, which may have removed it), then delete every
	// identity header (and, unless forwarded, every credential) before
	// anything can fail.
	// Authenticate only reads the credentials, so every idlink handler of
	// the request reads them from the one presented value, unless this
	// tenant adds its own cookies to them.
	p, ok := r.Context().Value(presentedKey{}).(*presented)
	var vals []string // the identity header values' backing array
	if !ok {
		p = &presented{Context: r.Context(), cookies: r.Header["Cookie"]}
		p.creds, p.bad = readCredentials(r.Header)
		r = r.WithContext(p)
		vals = p.vals[:0]
	}
	creds, bad := &p.creds, p.bad
	if bad == nil && h.tenant.Cookie != nil && len(p.cookies) > 0 {
		merged := p.creds
		var fromCookie bool
		if fromCookie, bad = h.tenant.Cookie.merge(p.cookies, &merged); bad == nil {
			bad = h.tenant.checkCSRF(r, fromCookie, &p.creds)
		}
		creds = &merged
	}
	h.strip.strip(r.Header)
	h.tenant.Cookie.strip(r.Header)
	h.hop.stripTokens(r.Header, "Connection")
	h.trailers.stripTrailers(r)
	if creds.Bearer != "" && h.tenant.ContactToken != nil && !h.ForwardCredentials {
		// The bearer token is this tenant's contact token: a credential.
		delete(r.Header, hdrAuthorization)
	}
	if isPreflight(r) {
		return next.ServeHTTP(w, r)
	}
	if bad != nil {
		return h.refuse(w, repl, creds, bad)
	}
	// A banned client is refused before anything is verified; a failed
	// verification is counted (regulation.go).
	subject, banned := checkBan(h.tenant, r)
	if banned != nil {
		return h.refuse(w, repl, creds, banned)
	}
	ctx, span := spans.StartTenant(r.Context(), "idlink.authenticate", h.Tenant)
	id, aerr := h.tenant.id.Authenticate(ctx, creds)
	if aerr != nil {
		aerr = failed(h.tenant, r, subject, creds.SessionID, aerr)
		spans.End(span, aerr.Code, true)
		if aerr.Code == apierr.CodeSessionEnded && p.creds.SessionID == "" && creds.SessionID != "" {
			// The session cookie names an ended session: clear it (a page
			// cannot clear an HttpOnly cookie), so that the browser's next
			// request goes on its install instead of this refusal.
			h.tenant.Cookie.clearSession(w)
		}
		return h.refuse(w, repl, creds, aerr)
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.String("idlink.source", id.Source))
		outcome := "unverified"
		if id.Verified {
			outcome = "verified"
		}
		spans.End(span, outcome, false)
	}
	h.tenant.countAccepted(creds, &id)
	applyIdentity(&id, r.Header, repl, vals)
	return next.ServeHTTP(w, r)
}

// refuse answers a refused request, records its code for logs and counts
// it (idlink_requests_total).
func (h *Handler) refuse(w http.ResponseWriter, repl *caddy.Replacer, creds *identity.Credentials, e *apiError) error {
	h.tenant.countRefused(creds, e.Code)
	repl.Set("idlink.error", e.Code)
	writeError(w, e)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// applyIdentity sets the identity headers on the request to the upstream
// (which were all deleted before) and the placeholders.
//
// It runs on every accepted request, so it allocates little: the header
// values share one backing array (vals, empty and unused by anyone else,
// or a new one when vals is nil), each value a slice of its own element
// with capacity 1 (an append by a later handler copies, never writes into
// a neighbour); the placeholders that can only take a few constant values
// are set from constants (no boxing into an interface), and the user id is
// boxed once for both of its placeholders.
func applyIdentity(id *identity.Identity, h http.Header, repl *caddy.Replacer, vals []string) {
	verified := "false"
	if id.Verified {
		verified = "true"
	}
	if vals == nil {
		vals = make([]string, 0, 8+len(id.ClaimHeaders))
	}
	put := func(name, v string) {
		vals = append(vals, v)
		h[name] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set := func(name, v string) {
		if v != "" {
			put(name, v)
		}
	}
	put(hdrIdentitySource, id.Source)
	put(hdrIdentityVerified, verified)
	set(hdrPlatformUserID, id.UserID)
	set(hdrExternalID, id.ExternalID)
	set(hdrInstallID, id.InstallID)
	set(hdrSessionID, id.SessionID)
	set(hdrVerifiedEmail, id.VerifiedEmail)
	set(hdrVerifiedPhone, id.VerifiedPhone)
	for _, hv := range id.ClaimHeaders {
		put(hv.Name, hv.Value)
	}

	repl.Set("idlink.source", constantSource(id.Source))
	if id.Verified {
		repl.Set("idlink.verified", "true")
	} else {
		repl.Set("idlink.verified", "false")
	}
	userID := any(id.UserID)
	repl.Set("idlink.user_id", userID)
	repl.Set("idlink.external_id", id.ExternalID)
	repl.Set("idlink.install_id", id.InstallID)
	repl.Set("idlink.session_id", id.SessionID)
	if id.UserID != "" {
		repl.Set("http.auth.user.id", userID)
	}
}

// constantSource returns source as an interface value without an
// allocation when it is one of the identity sources (a constant converts
// to an interface statically).
func constantSource(source string) any {
	switch source {
	case identity.SourceContactToken:
		return identity.SourceContactToken
	case identity.SourceHMAC:
		return identity.SourceHMAC
	case identity.SourceSSO:
		return identity.SourceSSO
	case identity.SourceSession:
		return identity.SourceSession
	case identity.SourceInstall:
		return identity.SourceInstall
	case identity.SourceAnonymous:
		return identity.SourceAnonymous
	}
	return source
}
