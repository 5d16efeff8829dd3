package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("idlink", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("idlink", parseHandler)
	httpcaddyfile.RegisterHandlerDirective("idlink_api", parseAPI)
	// idlink_api, then idlink, both just before reverse_proxy and so after
	// handle/handle_path/route: a handle_path block holding idlink_api
	// answers API calls before a site-level idlink sees them, and idlink
	// inside a handle block guards just that block. No `order` line needed.
	httpcaddyfile.RegisterDirectiveOrder("idlink_api", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterDirectiveOrder("idlink", httpcaddyfile.Before, "reverse_proxy")
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
			if a.OnStoreError != FailClosed && a.OnStoreError != FailOpen {
				return d.Errf("on_store_error must be fail_closed or fail_open, not '%s'", a.OnStoreError)
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
			if !tenantNameRE.MatchString(name) {
				return d.Errf("tenant name '%s': use 1-63 of a-z, 0-9, '_' and '-'", name)
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
					switch p.Mode {
					case ModeOff, ModeReport, ModeEnforce:
					default:
						return d.Errf("mode must be off, report or enforce, not '%s'", p.Mode)
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
			if t.Anonymous != AnonymousAllow && t.Anonymous != AnonymousDeny {
				return d.Errf("anonymous must be allow or deny, not '%s'", t.Anonymous)
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
		case "webhook":
			if t.Webhook != nil {
				return d.Err("webhook already specified")
			}
			w, err := parseWebhook(d)
			if err != nil {
				return err
			}
			t.Webhook = w
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
