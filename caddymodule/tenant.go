package caddymodule

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"

	"github.com/idlink/idlink/caddymodule/internal/events"
)

// Platform modes (identity.Mode*).
const (
	ModeOff     = identity.ModeOff     // signatures ignored; the external id is taken as claimed, unverified
	ModeReport  = identity.ModeReport  // signatures checked; failures pass unverified and are logged
	ModeEnforce = identity.ModeEnforce // signatures checked; failures are 401 invalid_signature
)

// Signed attribute formats (identity.SignedAttributes*).
const (
	SignedAttributesBound = identity.SignedAttributesBound
	SignedAttributesPlain = identity.SignedAttributesPlain
)

// Anonymous policies.
const (
	AnonymousAllow = "allow"
	AnonymousDeny  = "deny"
)

var tenantNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Tenant is one customer app: all of its state is its own.
type Tenant struct {
	// Platforms by name (e.g. "ios", "android", "web"), each with its HMAC
	// secrets and mode.
	Platforms map[string]*Platform `json:"platforms,omitempty"`

	// DefaultPlatform is used when a request has no X-Platform header.
	// Default: none, in which case a request without X-Platform is treated
	// as naming an unknown platform.
	DefaultPlatform string `json:"default_platform,omitempty"`

	// Anonymous is the policy for requests without any credential: "allow"
	// (default) passes them with X-Identity-Source: anonymous, "deny"
	// answers 401 authentication_required.
	Anonymous string `json:"anonymous,omitempty"`

	// ContactToken configures verification of contact tokens (JWTs by kid)
	// and their issuance. Default: none (contact tokens are refused and
	// Authorization is left alone).
	ContactToken *ContactToken `json:"contact_token,omitempty"`

	// SSO configures SSO tokens (X-Sso-Token) checked against a token-info
	// URL. Default: none (SSO tokens are refused).
	SSO *SSO `json:"sso,omitempty"`

	// SignedAttributes is the format of X-User-Email-Signature and
	// X-User-Phone-Signature: "bound" (default), HMAC(secret, field "\n"
	// external id "\n" value), or "plain", HMAC(secret, value), which a
	// captured pair lets anyone replay beside their own verified id.
	// Either way they count only beside a verified external id.
	SignedAttributes string `json:"signed_attributes,omitempty"`

	// APIKeys are the tenant's server-to-server keys with their scopes.
	APIKeys []APIKey `json:"api_keys,omitempty"`

	// CacheSize bounds each in-process cache of the tenant (entries).
	// Default: 100000.
	CacheSize int `json:"cache_size,omitempty"`

	// CacheTTL is how long a resolved external id stays in the in-process
	// cache. The mapping never changes once made, so this only bounds
	// memory turnover. Default: 10m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	// Sessions is the session policy: at most max live sessions per user
	// (default 1), ended after idle (default 72h) or lifetime (default
	// none). See sessions.go.
	Sessions *Sessions `json:"sessions,omitempty"`

	// CORS lets pages on the listed origins call the tenant's API (see
	// cors.go). Default: none (browsers refuse cross-origin calls).
	CORS *CORS `json:"cors,omitempty"`

	// Cookie sets and reads the install and session ids as cookies on a
	// parent domain, for one identity across subdomains (see cookies.go).
	// Default: none (headers only).
	Cookie *Cookie `json:"cookie,omitempty"`

	// Regulation limits failed verifications per client and per session
	// (see regulation.go). Default: none.
	Regulation *Regulation `json:"regulation,omitempty"`

	// Webhook receives the tenant's events. Default: none (events stay in
	// the outbox for EventsRetention).
	Webhook *Webhook `json:"webhook,omitempty"`

	// InstallTTL is how long an install made by POST /installs and its
	// anonymous user, and a user made for an external id that did not
	// verify (report or off mode), live without being used; a use renews
	// them (once a tenth of it has passed since the last renewal), and a
	// link or a verified credential naming the user makes them permanent.
	// Default: 30 days. A negative value (Caddyfile: `install_ttl off`):
	// they never expire.
	InstallTTL caddy.Duration `json:"install_ttl,omitempty"`

	// EventsRetention trims outbox events older than that, delivered or
	// not. Default: 7 days for a tenant without a webhook; none for one
	// with a webhook (only delivered events are trimmed; failing ones move
	// to the dead letters after the webhook's max_age).
	EventsRetention caddy.Duration `json:"events_retention,omitempty"`

	name          string
	app           *App
	now           func() time.Time
	logger        *zap.Logger
	strip         headerSet // identity, claim and credential headers
	identityStrip headerSet // identity and claim headers (forward_credentials)
	outbox        *events.Outbox
	// id is the tenant's identity domain, built at provision from the
	// config above.
	id *identity.Domain
	// requests are the tenant's idlink_requests_total series.
	requests *requestCounters
}

// Platform is one client platform's trusted-identity settings.
type Platform struct {
	// Secrets are the HMAC-SHA256 secrets; a signature made with any of
	// them verifies (several while a secret rotates). Use {env.*} or
	// {file.*} placeholders: they are replaced at provision time.
	Secrets []string `json:"secrets,omitempty"`

	// Mode is "off", "report" or "enforce" (default).
	Mode string `json:"mode,omitempty"`
}

func (t *Tenant) provision(ctx caddy.Context, app *App, name string) error {
	if err := checkTenantName(name); err != nil {
		return err
	}
	t.name, t.app = name, app
	t.now = app.now
	t.logger = app.logger.With(zap.String("tenant", name))
	if t.Anonymous == "" {
		t.Anonymous = AnonymousAllow
	}
	if t.SignedAttributes == "" {
		t.SignedAttributes = SignedAttributesBound
	}
	if t.CacheSize <= 0 {
		t.CacheSize = 100_000
	}
	if t.CacheTTL <= 0 {
		t.CacheTTL = caddy.Duration(10 * time.Minute)
	}
	if t.Sessions == nil {
		t.Sessions = new(Sessions)
	}
	sessions, expiry := t.Sessions.provision(), t.provisionExpiry()
	if t.ContactToken != nil {
		if err := t.ContactToken.provision(t); err != nil {
			return err
		}
	}
	if t.SSO != nil {
		if err := t.SSO.provision(t); err != nil {
			return err
		}
	}
	claimHeaders := t.ContactToken.stripHeaders()
	t.strip = newHeaderSet(identityHeaders, credentialHeaders, claimHeaders)
	t.identityStrip = newHeaderSet(identityHeaders, claimHeaders)

	for i := range t.APIKeys {
		if err := t.APIKeys[i].provision(); err != nil {
			return err
		}
		if t.APIKeys[i].disabled {
			t.logger.Warn("api_key disabled: its digest placeholder is empty",
				zap.String("api_key", t.APIKeys[i].SHA256))
		}
	}

	platforms, err := t.provisionPlatforms()
	if err != nil {
		return err
	}
	if err := t.Cookie.provision(); err != nil {
		return err
	}
	regulation, err := t.Regulation.provision()
	if err != nil {
		return err
	}
	if err := t.CORS.provision(); err != nil {
		return err
	}
	cfg := identity.Config{
		Tenant: name, Store: app.store, Now: t.now, Logger: t.logger,
		Platforms: platforms, DefaultPlatform: t.DefaultPlatform,
		AnonymousDeny:    t.Anonymous == AnonymousDeny,
		SignedAttributes: t.SignedAttributes,
		FailOpen:         app.OnStoreError == FailOpen,
		CacheSize:        t.CacheSize, CacheTTL: time.Duration(t.CacheTTL),
		Sessions: sessions, Expiry: expiry, Regulation: regulation,
		Observe: t.observer(),
	}
	if c := t.ContactToken; c != nil {
		cfg.Tokens, cfg.MappedClaims, cfg.Logout = c.v, c.mapped, c.logout
		if c.ClaimsURL != nil {
			cfg.ClaimsURL = c.ClaimsURL.claims
		}
	}
	if t.SSO != nil {
		cfg.SSO = t.SSO.v
	}
	t.id = identity.New(cfg)
	names := make([]string, 0, len(platforms))
	for p := range platforms {
		names = append(names, p)
	}
	t.requests = newRequestCounters(name, names)
	return t.provisionEvents()
}

// provisionExpiry fills install_ttl's default and answers the expiry
// policy of installs and of users made for unverified ids.
func (t *Tenant) provisionExpiry() store.Expiry {
	if t.InstallTTL == 0 {
		t.InstallTTL = caddy.Duration(defaultInstallTTL)
	}
	if t.InstallTTL > 0 {
		return store.Expiry{TTL: time.Duration(t.InstallTTL)}
	}
	return store.Expiry{}
}

// provisionPlatforms fills the platforms' default mode and reads their
// secrets (placeholders replaced).
func (t *Tenant) provisionPlatforms() (map[string]*identity.Platform, error) {
	out := make(map[string]*identity.Platform, len(t.Platforms))
	repl := caddy.NewReplacer()
	for _, pname := range slices.Sorted(maps.Keys(t.Platforms)) {
		p := t.Platforms[pname]
		if p == nil {
			return nil, fmt.Errorf("platform %q: empty", pname)
		}
		if p.Mode == "" {
			p.Mode = ModeEnforce
		}
		ip := &identity.Platform{Mode: p.Mode}
		for i, s := range p.Secrets {
			secret, err := repl.ReplaceOrErr(s, true, true)
			if err != nil {
				return nil, fmt.Errorf("platform %q: secret %d: %v", pname, i+1, err)
			}
			if secret == "" {
				return nil, fmt.Errorf("platform %q: secret %d is empty", pname, i+1)
			}
			if len(secret) < 16 {
				t.logger.Warn("platform secret is shorter than 16 bytes; use a long random secret",
					zap.String("platform", pname), zap.Int("secret", i+1))
			}
			ip.Keys = append(ip.Keys, verify.NewHMACKey([]byte(secret)))
		}
		out[pname] = ip
	}
	return out, nil
}

func (t *Tenant) validate() error {
	for pname, p := range t.Platforms {
		if err := oneOf("mode", p.Mode, ModeOff, ModeReport, ModeEnforce); err != nil {
			return fmt.Errorf("tenant %q platform %q: %v", t.name, pname, err)
		}
		if p.Mode != ModeOff && len(p.Secrets) == 0 {
			return fmt.Errorf("tenant %q platform %q: mode %s needs at least one secret", t.name, pname, p.Mode)
		}
	}
	if t.DefaultPlatform != "" && t.Platforms[t.DefaultPlatform] == nil {
		return fmt.Errorf("tenant %q: default_platform %q is not a configured platform", t.name, t.DefaultPlatform)
	}
	if err := oneOf("anonymous", t.Anonymous, AnonymousAllow, AnonymousDeny); err != nil {
		return fmt.Errorf("tenant %q: %v", t.name, err)
	}
	if err := oneOf("signed_attributes", t.SignedAttributes, SignedAttributesBound, SignedAttributesPlain); err != nil {
		return fmt.Errorf("tenant %q: %v", t.name, err)
	}
	if t.ContactToken != nil {
		if err := t.ContactToken.validate(t.name); err != nil {
			return err
		}
	}
	if err := t.Sessions.validate(t.name); err != nil {
		return err
	}
	if t.InstallTTL > 0 && time.Duration(t.InstallTTL) < minInstallTTL {
		return fmt.Errorf("tenant %q: install_ttl must be at least %v (or off)", t.name, minInstallTTL)
	}
	return t.validateEvents()
}

// start starts the tenant's background work (session-activity writes,
// the JWKS refresh), which stops when ctx is done.
func (t *Tenant) start(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() { t.id.Run(ctx) })
	if t.ContactToken != nil && t.ContactToken.v.Source() != nil {
		t.ContactToken.v.Source().Start(ctx, wg)
	}
}

// oneOf checks an option that takes one of a few words. The Caddyfile
// parser and the config's validation both call it, so a value is refused
// alike (and worded alike) whichever way it was written.
func oneOf(option, value string, allowed ...string) error {
	for _, a := range allowed {
		if value == a {
			return nil
		}
	}
	list := strings.Join(allowed[:len(allowed)-1], ", ") + " or " + allowed[len(allowed)-1]
	return fmt.Errorf("%s must be %s, not %q", option, list, value)
}

// checkTenantName checks a tenant's name, which is part of every key of
// its data: 1 to 63 of a-z, 0-9, '_' and '-', starting with a letter or
// digit.
func checkTenantName(name string) error {
	if !tenantNameRE.MatchString(name) {
		return fmt.Errorf("tenant name %q: use 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit", name)
	}
	return nil
}
