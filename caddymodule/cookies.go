package caddymodule

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// Cookie defaults.
const (
	defaultCookiePrefix = "__Secure-idlink-"
	// defaultCookieMaxAge is the longest lifetime browsers keep (Chrome
	// caps Max-Age at 400 days).
	defaultCookieMaxAge = 400 * 24 * time.Hour
	cookieSameSiteLax   = "lax"
	cookieSameSiteStr   = "strict"
	hdrRequestedWith    = "X-Requested-With"
	codeCSRFRefused     = "csrf_refused"
)

// Cookie makes the install id and the session id cookies on a parent
// domain, so that a browser keeps one identity across the tenant's
// subdomains (the landing page on www.acme.com, the app on
// app.acme.com). POST /installs and POST /sessions set them
// (HttpOnly; Secure; SameSite), the idlink handler and the API read them
// when X-Install-Id and X-Session-Id are absent, and DELETE
// /sessions/current clears them.
//
// A cookie is a bearer credential exactly like its header: it must name
// a known install or a live session, and never makes an identity by
// itself. A header beats a cookie; a header and a cookie naming
// different ids are 401 identity_mismatch. A request relying on a
// cookie with a state-changing method (anything but GET, HEAD, OPTIONS)
// must show it comes from a page of the tenant: an Origin that is the
// site's own (https://<Host>) or one of the cors origins, or, without
// Origin, X-Requested-With or a credential header (which a cross-origin
// page cannot send without a preflight); otherwise 403 csrf_refused.
//
// Any subdomain of Domain can write these cookies (cookie tossing): use
// a parent domain whose subdomains are all yours.
type Cookie struct {
	// Domain is the parent domain the cookies are set on, e.g.
	// ".acme.com" (the leading dot is optional). Required.
	Domain string `json:"domain"`
	// NamePrefix starts the cookies' names: <prefix>install and
	// <prefix>session. Default: "__Secure-idlink-" (the __Secure- prefix
	// makes browsers refuse the names from a non-HTTPS page; __Host-
	// cannot be used with a domain).
	NamePrefix string `json:"name_prefix,omitempty"`
	// MaxAge is the install cookie's lifetime, and the session cookie's
	// unless the session's own lifetime ends sooner. Default: 400 days.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
	// SameSite is "lax" (default) or "strict". "none" is refused: it
	// would send the credentials on cross-site requests.
	SameSite string `json:"same_site,omitempty"`

	domain      string
	installName string
	sessionName string
	sameSite    http.SameSite
}

// provision checks the settings and fills the defaults.
func (c *Cookie) provision() error {
	if c == nil {
		return nil
	}
	d := strings.ToLower(strings.TrimPrefix(c.Domain, "."))
	if d == "" || net.ParseIP(d) != nil || !strings.Contains(d, ".") || strings.HasSuffix(d, ".") ||
		strings.ContainsAny(d, " ;,=/:\t") {
		return fmt.Errorf("cookie domain %q must be a parent domain name such as .example.com", c.Domain)
	}
	c.domain = d
	if c.NamePrefix == "" {
		c.NamePrefix = defaultCookiePrefix
	}
	if strings.HasPrefix(strings.ToLower(c.NamePrefix), "__host-") {
		return fmt.Errorf("cookie name_prefix %q: a __Host- cookie cannot have a domain", c.NamePrefix)
	}
	for _, b := range []byte(c.NamePrefix) {
		if b <= ' ' || b >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", b) >= 0 {
			return fmt.Errorf("cookie name_prefix %q must be letters, digits and -_.!#$%%&'*+^`|~ only", c.NamePrefix)
		}
	}
	c.installName, c.sessionName = c.NamePrefix+"install", c.NamePrefix+"session"
	if c.MaxAge == 0 {
		c.MaxAge = caddy.Duration(defaultCookieMaxAge)
	}
	if time.Duration(c.MaxAge) < time.Second {
		return fmt.Errorf("cookie max_age must be at least 1s")
	}
	switch c.SameSite {
	case "", cookieSameSiteLax:
		c.SameSite, c.sameSite = cookieSameSiteLax, http.SameSiteLaxMode
	case cookieSameSiteStr:
		c.sameSite = http.SameSiteStrictMode
	default:
		return fmt.Errorf("cookie same_site must be lax or strict, not %q", c.SameSite)
	}
	return nil
}

// set adds a Set-Cookie of name with value living maxAge (<0: cleared).
func (c *Cookie) set(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	ck := &http.Cookie{Name: name, Value: value, Domain: c.domain, Path: "/",
		HttpOnly: true, Secure: true, SameSite: c.sameSite}
	if maxAge < 0 {
		ck.MaxAge, ck.Value = -1, "" // Max-Age=0
	} else {
		ck.MaxAge = max(1, int(maxAge/time.Second))
	}
	w.Header().Add("Set-Cookie", ck.String())
}

// setInstall sets the install cookie.
func (c *Cookie) setInstall(w http.ResponseWriter, installID string) {
	if c != nil {
		c.set(w, c.installName, installID, time.Duration(c.MaxAge))
	}
}

// setSession sets the session cookie, ending no later than the session.
func (c *Cookie) setSession(w http.ResponseWriter, sessionID string, expires, now time.Time) {
	if c == nil {
		return
	}
	age := time.Duration(c.MaxAge)
	if !expires.IsZero() {
		age = min(age, expires.Sub(now))
	}
	c.set(w, c.sessionName, sessionID, age)
}

// clearSession clears the session cookie (its session has ended).
func (c *Cookie) clearSession(w http.ResponseWriter) {
	if c != nil {
		c.set(w, c.sessionName, "", -1)
	}
}

// clear clears both cookies.
func (c *Cookie) clear(w http.ResponseWriter) {
	if c != nil {
		c.set(w, c.installName, "", -1)
		c.set(w, c.sessionName, "", -1)
	}
}

// merge fills creds' install and session ids from the cookies of the
// Cookie header lines where the headers left them empty, and reports whether it did. A
// cookie sent twice (a sibling's tossed copy beside ours) or with an
// invalid value is 400; a cookie naming another id than its header is
// 401 identity_mismatch.
func (c *Cookie) merge(lines []string, creds *identity.Credentials) (bool, *apiError) {
	if c == nil || len(lines) == 0 {
		return false, nil
	}
	used := false
	for _, f := range []struct {
		name, what string
		v          *string
	}{{c.installName, "install id", &creds.InstallID}, {c.sessionName, "session id", &creds.SessionID}} {
		vals := cookieValues(lines, f.name)
		switch {
		case len(vals) == 0:
			continue
		case len(vals) > 1:
			return false, apierr.InvalidRequest("the " + f.name + " cookie was sent more than once")
		case !verify.HeaderValue(vals[0], maxIDLen):
			return false, apierr.InvalidRequest("the " + f.name + " cookie must be 1 to " + itoa(maxIDLen) + " bytes")
		case *f.v == "":
			*f.v, used = vals[0], true
		case *f.v != vals[0]:
			return false, apierr.IdentityMismatch("the " + f.what + " header and the " + f.name + " cookie differ")
		}
	}
	return used, nil
}

// cookieValues are the values of every cookie called name in the Cookie
// header lines.
func cookieValues(lines []string, name string) []string {
	var out []string
	for _, line := range lines {
		for part := range strings.SplitSeq(line, ";") {
			n, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			if n == name {
				out = append(out, strings.Trim(v, `"`))
			}
		}
	}
	return out
}

// strip removes idlink's cookies (their names in any case) from the
// Cookie header, keeping every other cookie as sent.
func (c *Cookie) strip(h http.Header) {
	lines, ok := h["Cookie"]
	if c == nil || !ok {
		return
	}
	var kept []string
	for _, line := range lines {
		var parts []string
		for part := range strings.SplitSeq(line, ";") {
			n, _, _ := strings.Cut(strings.TrimSpace(part), "=")
			if !strings.EqualFold(n, c.installName) && !strings.EqualFold(n, c.sessionName) {
				parts = append(parts, strings.TrimSpace(part))
			}
		}
		if len(parts) > 0 {
			kept = append(kept, strings.Join(parts, "; "))
		}
	}
	if len(kept) == 0 {
		delete(h, "Cookie")
	} else {
		h["Cookie"] = kept
	}
}

// safeMethod reports a method that changes nothing (RFC 9110 9.2.1).
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// csrfRefused is 403 csrf_refused.
func csrfRefused(why string) *apiError {
	return newError(http.StatusForbidden, codeCSRFRefused, why)
}

// checkOriginOf refuses r when it sends an Origin that is neither the
// site's own (https://<Host>) nor one of the tenant's cors origins.
// It reports whether r sent an Origin.
func (t *Tenant) checkOriginOf(r *http.Request) (bool, *apiError) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false, nil
	}
	o := strings.ToLower(origin)
	if o == "https://"+strings.ToLower(r.Host) {
		return true, nil
	}
	if t.CORS.allows(o) {
		return true, nil
	}
	return true, csrfRefused("the request comes from origin " + o + ", which is neither this site nor a cors origin of the tenant")
}

// checkCSRF refuses a state-changing request that relies on a cookie
// credential (fromCookie) without proof that a page of the tenant made
// it: an allowed Origin (checkOriginOf) or, without Origin,
// X-Requested-With or a credential header in sent (headers a
// cross-origin page can only send after a preflight).
func (t *Tenant) checkCSRF(r *http.Request, fromCookie bool, sent *identity.Credentials) *apiError {
	if !fromCookie || safeMethod(r.Method) {
		return nil
	}
	hasOrigin, e := t.checkOriginOf(r)
	if e != nil || hasOrigin {
		return e
	}
	if r.Header.Get(hdrRequestedWith) != "" || *sent != (identity.Credentials{}) {
		return nil
	}
	return csrfRefused("a " + r.Method + " relying on a cookie needs an Origin header of this site or a cors origin, or X-Requested-With")
}

// credentials reads what r presents to the tenant: the credential
// headers, then the cookies where the headers are absent, refusing a
// cross-site state change that relies on a cookie (checkCSRF).
func (t *Tenant) credentials(r *http.Request) (identity.Credentials, *apiError) {
	creds, bad := readCredentials(r.Header)
	if bad != nil {
		return creds, bad
	}
	sent := creds
	fromCookie, bad := t.Cookie.merge(r.Header["Cookie"], &creds)
	if bad != nil {
		return creds, bad
	}
	return creds, t.checkCSRF(r, fromCookie, &sent)
}

// parseCookie parses
//
//	cookie {
//		domain <parent domain>
//		name_prefix <prefix>
//		max_age <duration>
//		same_site lax|strict
//	}
func parseCookie(d *caddyfile.Dispenser) (*Cookie, error) {
	c := new(Cookie)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "domain":
			if err := oneArg(d, &c.Domain); err != nil {
				return nil, err
			}
		case "name_prefix":
			if err := oneArg(d, &c.NamePrefix); err != nil {
				return nil, err
			}
		case "max_age":
			if err := durationArg(d, &c.MaxAge); err != nil {
				return nil, err
			}
		case "same_site":
			if err := oneArg(d, &c.SameSite); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("unrecognized cookie subdirective '%s' (domain, name_prefix, max_age, same_site)", d.Val())
		}
	}
	if c.Domain == "" {
		return nil, d.Err("cookie needs a domain: domain <parent domain>")
	}
	if err := (*c).provisionCopy(); err != nil {
		return nil, d.Err(err.Error())
	}
	return c, nil
}

// provisionCopy checks c's settings without filling c's defaults (so
// that the adapted JSON holds only what the Caddyfile said).
func (c Cookie) provisionCopy() error { return c.provision() }
