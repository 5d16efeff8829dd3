package caddymodule

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/idlink/idlink/caddymodule/internal/events"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("idlink", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("idlink", parseHandler)
	httpcaddyfile.RegisterHandlerDirective("idlink_api", parseAPI)
	// idlink sits with Caddy's own authentication directives (right after
	// basic_auth and forward_auth), so before handle/handle_path/route: a
	// site-level idlink guards every request of the site, and idlink inside
	// a handle block guards just that block. Its `api` subdirective mounts
	// the tenant's API on the same site. idlink_api (API-only sites) answers
	// every request, so it goes with the responding handlers. No `order`
	// line needed.
	httpcaddyfile.RegisterDirectiveOrder("idlink", httpcaddyfile.After, "forward_auth")
	httpcaddyfile.RegisterDirectiveOrder("idlink_api", httpcaddyfile.Before, "reverse_proxy")
}

// parseGlobalOption parses the idlink global option into the idlink app.
//
// Syntax:
//
//	idlink {
//		redis <url>
//		redis_timeout <duration>
//		on_store_error fail_closed|fail_open
//		durability replicas <n> [timeout <duration>]
//		tenant <name> {
//			platform <name> {
//				secret <secret>...
//				mode off|report|enforce
//			}
//			default_platform <name>
//			anonymous allow|deny
//			signed_attributes bound|plain
//			contact_token {
//				jwks_url <url>
//				key <kid> <pem-file> [<alg>]     # repeatable
//				algorithms <alg>...
//				issuer <iss>
//				audience <aud>...
//				leeway <duration>
//				max_lifetime <duration>
//				user_claim <claim>
//				claim_header <claim> <header>    # repeatable
//				claims_url <url> {               # the backend's claims of issued tokens
//					header <name> <value>        # repeatable: e.g. its credential
//					timeout <duration>
//					cache_ttl <duration>
//				}
//				sign_key <kid> <pem-file> [<alg>] # repeatable: the first signs
//				sign_issuer <iss>
//				ttl <duration>
//				jwks_refresh <duration>
//				jwks_refetch_min <duration>
//				jwks_timeout <duration>
//				backchannel_logout {             # POST /backchannel-logout (OIDC)
//					issuer <iss>                 # default: the issuer above
//					audience <aud>...            # default: the audience above
//					max_age <duration>           # oldest iat accepted; default 5m
//				}
//			}
//			sso {
//				token_info_url <url>
//				audience <aud>...
//				timeout <duration>
//				token_param <name>
//				leeway <duration>
//				client_id <id>                   # RFC 7662 introspection: idlink's client
//				client_secret <secret>           # {env.*} / {file.*}
//				auth_method client_secret_basic|client_secret_post|bearer|none
//				bearer_token <token>             # auth_method bearer
//				token_type_hint <hint>
//				max_concurrent <n>
//			}
//			sessions {
//				max <n>
//				idle <duration>|off
//				lifetime <duration>|off
//			}
//			api_key <sha256-hex-of-key> <scope>...
//			cache_size <entries>
//			cache_ttl <duration>
//			webhook <url> {
//				secret <secret>...
//				format standard|idlink
//				max_attempts <n>
//				max_age <duration>
//				timeout <duration>
//				concurrency <n>
//				backoff <base> [<max>]
//				poll_interval <duration>
//				claim_after <duration>
//			}
//			events_retention <duration>
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if existing != nil {
		return nil, d.Err("the idlink global option may appear only once")
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "idlink", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens (see
// parseGlobalOption for the syntax).
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "redis":
			if a.Redis != "" {
				return d.Err("redis already specified")
			}
			if err := oneArg(d, &a.Redis); err != nil {
				return err
			}
		case "redis_timeout":
			if err := durationArg(d, &a.RedisTimeout); err != nil {
				return err
			}
		case "on_store_error":
			if err := oneArg(d, &a.OnStoreError); err != nil {
				return err
			}
			if err := oneOf("on_store_error", a.OnStoreError, FailClosed, FailOpen); err != nil {
				return d.Err(err.Error())
			}
		case "durability":
			if a.Durability != nil {
				return d.Err("durability already specified")
			}
			dur, err := unmarshalDurability(d)
			if err != nil {
				return err
			}
			a.Durability = dur
		case "tenant":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := checkTenantName(name); err != nil {
				return d.Err(err.Error())
			}
			if a.Tenants == nil {
				a.Tenants = map[string]*Tenant{}
			}
			if a.Tenants[name] != nil {
				return d.Errf("tenant '%s' already defined", name)
			}
			t := new(Tenant)
			if err := t.unmarshalCaddyfile(d); err != nil {
				return err
			}
			a.Tenants[name] = t
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

func (t *Tenant) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "platform":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if t.Platforms == nil {
				t.Platforms = map[string]*Platform{}
			}
			if t.Platforms[name] != nil {
				return d.Errf("platform '%s' already defined", name)
			}
			p := new(Platform)
			for pn := d.Nesting(); d.NextBlock(pn); {
				switch d.Val() {
				case "secret":
					args := d.RemainingArgs()
					if len(args) == 0 {
						return d.ArgErr()
					}
					p.Secrets = append(p.Secrets, args...)
				case "mode":
					if err := oneArg(d, &p.Mode); err != nil {
						return err
					}
					if err := oneOf("mode", p.Mode, ModeOff, ModeReport, ModeEnforce); err != nil {
						return d.Err(err.Error())
					}
				default:
					return d.Errf("unrecognized platform subdirective '%s'", d.Val())
				}
			}
			t.Platforms[name] = p
		case "default_platform":
			if err := oneArg(d, &t.DefaultPlatform); err != nil {
				return err
			}
		case "anonymous":
			if err := oneArg(d, &t.Anonymous); err != nil {
				return err
			}
			if err := oneOf("anonymous", t.Anonymous, AnonymousAllow, AnonymousDeny); err != nil {
				return d.Err(err.Error())
			}
		case "signed_attributes":
			if t.SignedAttributes != "" {
				return d.Err("signed_attributes already specified")
			}
			if err := oneArg(d, &t.SignedAttributes); err != nil {
				return err
			}
			if err := oneOf("signed_attributes", t.SignedAttributes, SignedAttributesBound, SignedAttributesPlain); err != nil {
				return d.Err(err.Error())
			}
		case "api_key":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Err("api_key needs the key's SHA-256 and at least one scope: api_key <sha256-hex> <scope>...")
			}
			k := APIKey{SHA256: strings.ToLower(args[0]), Scopes: args[1:]}
			if strings.Contains(args[0], "{") {
				// A placeholder ({env.*}, {file.*}): checked at provision.
				k.SHA256 = args[0]
			} else if err := k.provision(); err != nil {
				return d.Err(err.Error())
			}
			t.APIKeys = append(t.APIKeys, k)
		case "contact_token":
			if t.ContactToken != nil {
				return d.Err("contact_token already specified")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			t.ContactToken = new(ContactToken)
			if err := t.ContactToken.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "sso":
			if t.SSO != nil {
				return d.Err("sso already specified")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			t.SSO = new(SSO)
			if err := t.SSO.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "cache_size":
			var s string
			if err := oneArg(d, &s); err != nil {
				return err
			}
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return d.Errf("cache_size must be a positive number of entries, not '%s'", s)
			}
			t.CacheSize = n
		case "cache_ttl":
			if err := durationArg(d, &t.CacheTTL); err != nil {
				return err
			}
		case "sessions":
			if t.Sessions != nil {
				return d.Err("sessions already specified")
			}
			t.Sessions = new(Sessions)
			if err := t.Sessions.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "cors":
			if t.CORS != nil {
				return d.Err("cors already specified")
			}
			c, err := parseCORS(d)
			if err != nil {
				return err
			}
			t.CORS = c
		case "cookie":
			if t.Cookie != nil {
				return d.Err("cookie already specified")
			}
			c, err := parseCookie(d)
			if err != nil {
				return err
			}
			t.Cookie = c
		case "regulation":
			if t.Regulation != nil {
				return d.Err("regulation already specified")
			}
			g, err := parseRegulation(d)
			if err != nil {
				return err
			}
			t.Regulation = g
		case "webhook":
			if t.Webhook != nil {
				return d.Err("webhook already specified")
			}
			w, err := parseWebhook(d)
			if err != nil {
				return err
			}
			t.Webhook = w
		case "install_ttl":
			if t.InstallTTL != 0 {
				return d.Err("install_ttl already specified")
			}
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			if v == "off" {
				t.InstallTTL = -1
				break
			}
			x, err := caddy.ParseDuration(v)
			if err != nil || x < minInstallTTL {
				return d.Errf("install_ttl must be a duration of at least %v, or off, not '%s'", minInstallTTL, v)
			}
			t.InstallTTL = caddy.Duration(x)
		case "events_retention":
			if t.EventsRetention != 0 {
				return d.Err("events_retention already specified")
			}
			if err := durationArg(d, &t.EventsRetention); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized tenant subdirective '%s'", d.Val())
		}
	}
	return nil
}

func (c *ContactToken) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	seen := map[string]bool{}
	once := func(name string) error {
		if seen[name] {
			return d.Errf("%s already specified", name)
		}
		seen[name] = true
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		switch name {
		case "jwks_url", "issuer", "user_claim", "sign_issuer":
			if err := once(name); err != nil {
				return err
			}
			dst := map[string]*string{"jwks_url": &c.JWKSURL, "issuer": &c.Issuer,
				"user_claim": &c.UserClaim, "sign_issuer": &c.SignIssuer}[name]
			if err := oneArg(d, dst); err != nil {
				return err
			}
		case "key", "sign_key":
			args := d.RemainingArgs()
			if len(args) < 2 || len(args) > 3 {
				return d.Errf("%s needs a kid and a PEM file, and optionally an algorithm: %s <kid> <pem-file> [<alg>]", name, name)
			}
			k := TokenKey{KID: args[0], File: args[1]}
			if len(args) == 3 {
				k.Alg = args[2]
				if !verify.AsymmetricAlgs[k.Alg] {
					return d.Errf("%s %s: algorithm '%s' is not accepted", name, k.KID, k.Alg)
				}
			}
			if name == "key" {
				c.Keys = append(c.Keys, k)
			} else {
				c.SignKeys = append(c.SignKeys, k)
			}
		case "algorithms":
			if err := once(name); err != nil {
				return err
			}
			c.Algorithms = d.RemainingArgs()
			if len(c.Algorithms) == 0 {
				return d.ArgErr()
			}
			for _, a := range c.Algorithms {
				if !verify.AsymmetricAlgs[a] {
					return d.Errf("algorithm '%s' is not accepted (use ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512 or EdDSA)", a)
				}
			}
		case "audience":
			if err := once(name); err != nil {
				return err
			}
			c.Audience = d.RemainingArgs()
			if len(c.Audience) == 0 {
				return d.ArgErr()
			}
		case "leeway", "max_lifetime", "ttl", "jwks_refresh", "jwks_refetch_min", "jwks_timeout":
			if err := once(name); err != nil {
				return err
			}
			dst := map[string]*caddy.Duration{"leeway": &c.Leeway, "max_lifetime": &c.MaxLifetime, "ttl": &c.TTL,
				"jwks_refresh": &c.JWKSRefresh, "jwks_refetch_min": &c.JWKSRefetchMin, "jwks_timeout": &c.JWKSTimeout}[name]
			if err := durationArg(d, dst); err != nil {
				return err
			}
		case "claim_header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Err("claim_header needs a claim and a header: claim_header <claim> <header>")
			}
			if !validHeaderName(args[1]) {
				return d.Errf("claim_header: '%s' is not a valid header name", args[1])
			}
			if reservedClaimHeaders.has(args[1]) {
				return d.Errf("claim_header: %s is reserved and cannot be set from a claim", args[1])
			}
			c.ClaimHeaders = append(c.ClaimHeaders, ClaimHeader{Claim: args[0], Header: args[1]})
		case "backchannel_logout":
			if c.BackchannelLogout != nil {
				return d.Err("backchannel_logout already specified")
			}
			c.BackchannelLogout = new(BackchannelLogout)
			if err := c.BackchannelLogout.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "claims_url":
			if c.ClaimsURL != nil {
				return d.Err("claims_url already specified")
			}
			c.ClaimsURL = new(ClaimsResolver)
			if err := c.ClaimsURL.unmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized contact_token subdirective '%s'", name)
		}
	}
	if c.JWKSURL == "" && len(c.Keys) == 0 && len(c.SignKeys) == 0 {
		return d.Err("contact_token needs jwks_url, key or sign_key")
	}
	return nil
}

func (r *ClaimsResolver) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := oneArg(d, &r.URL); err != nil {
		return err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		switch name {
		case "header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Err("header needs a name and a value: header <name> <value>")
			}
			if !validHeaderName(args[0]) {
				return d.Errf("header: '%s' is not a valid header name", args[0])
			}
			if r.Headers == nil {
				r.Headers = map[string]string{}
			}
			canon := http.CanonicalHeaderKey(args[0])
			if _, dup := r.Headers[canon]; dup {
				return d.Errf("header %s already specified", canon)
			}
			r.Headers[canon] = args[1]
		case "timeout", "cache_ttl":
			if seen[name] {
				return d.Errf("%s already specified", name)
			}
			seen[name] = true
			dst := map[string]*caddy.Duration{"timeout": &r.Timeout, "cache_ttl": &r.CacheTTL}[name]
			if err := durationArg(d, dst); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized claims_url subdirective '%s'", name)
		}
	}
	return nil
}

func (s *SSO) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("%s already specified", name)
		}
		seen[name] = true
		switch name {
		case "token_info_url":
			if err := oneArg(d, &s.TokenInfoURL); err != nil {
				return err
			}
		case "token_param", "client_id", "client_secret", "auth_method", "bearer_token", "token_type_hint":
			dst := map[string]*string{"token_param": &s.TokenParam, "client_id": &s.ClientID,
				"client_secret": &s.ClientSecret, "auth_method": &s.AuthMethod, "bearer_token": &s.BearerToken,
				"token_type_hint": &s.TokenTypeHint}[name]
			read := oneArg
			if name == "client_secret" || name == "bearer_token" {
				read = secretArg
			}
			if err := read(d, dst); err != nil {
				return err
			}
		case "max_concurrent":
			if err := positiveIntArg(d, &s.MaxConcurrent); err != nil {
				return err
			}
		case "audience":
			s.Audience = d.RemainingArgs()
			if len(s.Audience) == 0 {
				return d.ArgErr()
			}
		case "timeout":
			if err := durationArg(d, &s.Timeout); err != nil {
				return err
			}
		case "leeway":
			if err := durationArg(d, &s.Leeway); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized sso subdirective '%s'", name)
		}
	}
	if s.TokenInfoURL == "" || len(s.Audience) == 0 {
		return d.Err("sso needs token_info_url and audience")
	}
	if _, err := s.clientAuth(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// parseWebhook parses a tenant's webhook block (see parseGlobalOption).
func parseWebhook(d *caddyfile.Dispenser) (*Webhook, error) {
	w := new(Webhook)
	if err := oneArg(d, &w.URL); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub != "secret" {
			if seen[sub] {
				return nil, d.Errf("webhook %s already specified", sub)
			}
			seen[sub] = true
		}
		switch sub {
		case "secret":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			w.Secrets = append(w.Secrets, args...)
		case "format":
			if err := oneArg(d, &w.Format); err != nil {
				return nil, err
			}
			if w.Format != events.FormatStandard && w.Format != events.FormatIdlink {
				return nil, d.Errf("webhook format must be standard or idlink, not '%s'", w.Format)
			}
		case "max_attempts":
			if err := positiveIntArg(d, &w.MaxAttempts); err != nil {
				return nil, err
			}
		case "concurrency":
			if err := positiveIntArg(d, &w.Concurrency); err != nil {
				return nil, err
			}
			if w.Concurrency > maxConcurrency {
				return nil, d.Errf("concurrency must be at most %d", maxConcurrency)
			}
		case "max_age":
			if err := durationArg(d, &w.MaxAge); err != nil {
				return nil, err
			}
		case "timeout":
			if err := durationArg(d, &w.Timeout); err != nil {
				return nil, err
			}
		case "poll_interval":
			if err := durationArg(d, &w.PollInterval); err != nil {
				return nil, err
			}
		case "claim_after":
			if err := durationArg(d, &w.ClaimAfter); err != nil {
				return nil, err
			}
		case "backoff":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return nil, d.Err("backoff needs a base and optionally a maximum: backoff <base> [<max>]")
			}
			for i, a := range args {
				v, err := caddy.ParseDuration(a)
				if err != nil || v <= 0 {
					return nil, d.Errf("'%s' is not a positive duration", a)
				}
				if i == 0 {
					w.BackoffBase = caddy.Duration(v)
				} else {
					w.BackoffMax = caddy.Duration(v)
				}
			}
		default:
			return nil, d.Errf("unrecognized webhook subdirective '%s'", sub)
		}
	}
	if len(w.Secrets) == 0 {
		return nil, d.Err("webhook needs at least one secret (secret {env.NAME})")
	}
	return w, nil
}

// positiveIntArg reads exactly one positive integer into dst.
func positiveIntArg(d *caddyfile.Dispenser, dst *int) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return d.Errf("'%s' is not a positive number", s)
	}
	*dst = n
	return nil
}

// parseHandler parses the idlink handler directive.
//
// Syntax:
//
//	idlink <tenant> {
//		forward_credentials
//		api <path-prefix>
//	}
func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if !d.NextArg() {
		return d.Err("idlink needs a tenant name: idlink <tenant>")
	}
	h.Tenant = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "forward_credentials":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.ForwardCredentials = true
		case "api":
			if h.API != "" {
				return d.Err("api already specified")
			}
			if err := oneArg(d, &h.API); err != nil {
				return err
			}
			if err := validAPIPrefix(h.API); err != nil {
				return d.Errf("api %s: %v", h.API, err)
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// parseAPI parses the idlink_api handler directive.
//
// Syntax:
//
//	idlink_api <tenant>
func parseAPI(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(API)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the API handler from Caddyfile tokens.
func (a *API) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if !d.NextArg() {
		return d.Err("idlink_api needs a tenant name: idlink_api <tenant>")
	}
	a.Tenant = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		return d.Errf("unrecognized subdirective '%s'", d.Val())
	}
	return nil
}

// secretArg reads exactly one argument into dst, like oneArg, but its
// error never quotes a token (Caddy's argument errors do: here, a secret).
func secretArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s needs a value", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s takes exactly one value (quote it if it has spaces)", name)
	}
	return nil
}

// oneArg reads exactly one argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// durationArg reads exactly one positive duration into dst.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil || v <= 0 {
		return d.Errf("'%s' is not a positive duration", s)
	}
	*dst = caddy.Duration(v)
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*API)(nil)
)

// unmarshalCaddyfile parses a tenant's sessions block:
//
//	sessions {
//		max <n>
//		idle <duration>|off
//		lifetime <duration>|off
//	}
func (s *Sessions) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("sessions %s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "max":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxSessionMax {
				return d.Errf("sessions max must be a number of sessions from 1 to %d, not '%s'", maxSessionMax, v)
			}
			s.Max = n
		case "idle", "lifetime":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			var dur caddy.Duration
			if v == "off" {
				dur = -1
				if sub == "lifetime" {
					dur = 0 // none is the default
				}
			} else {
				x, err := caddy.ParseDuration(v)
				if err != nil || x < minSessionTimeout {
					return d.Errf("sessions %s must be a duration of at least %v, or off, not '%s'", sub, minSessionTimeout, v)
				}
				dur = caddy.Duration(x)
			}
			if sub == "idle" {
				s.Idle = dur
			} else {
				s.Lifetime = dur
			}
		default:
			return d.Errf("unrecognized sessions subdirective '%s'", sub)
		}
	}
	return nil
}
