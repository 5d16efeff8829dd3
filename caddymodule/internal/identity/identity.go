// Package identity is a tenant's identity domain: which credential of a
// request names the user and whether the others agree (authenticate.go),
// the user of an external id (users.go), installs and links (installs.go),
// sessions and their limit (sessions.go), the contact tokens the tenant
// issues (tokens.go), login, refresh and logout (login.go) and the
// revocation of a user's sessions (revoke.go).
//
// It knows neither Caddy nor HTTP handlers: a Domain is built from a plain
// Config by the Caddy module, takes Credentials read from a request and
// answers an Identity, or an *apierr.Error for a request to refuse; any
// other error is a technical failure (store.ErrUnavailable). Credentials
// are verified by internal/verify; state lives behind the small Store
// interface below, which *store.Store implements.
package identity

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// Platform modes.
const (
	ModeOff     = "off"     // signatures ignored; the external id is taken as claimed, unverified
	ModeReport  = "report"  // signatures checked; failures pass unverified and are logged
	ModeEnforce = "enforce" // signatures checked; failures are 401 invalid_signature
)

// Signed attribute formats (a tenant's signed_attributes).
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

// Identity sources (X-Identity-Source).
const (
	SourceContactToken = "contact_token"
	SourceHMAC         = "hmac"
	SourceSSO          = "sso"
	SourceSession      = "session"
	SourceInstall      = "install"
	SourceAnonymous    = "anonymous"
)

// Invalidation kinds: what every instance drops when the store says it
// changed.
const (
	InvalidateSession = "session"
	InvalidateInstall = "install"
	// InvalidateSSOUser drops the cached SSO answers naming an external
	// id (its user was logged out by the provider).
	InvalidateSSOUser = "sso_user"
)

// Identity is who a request was verified to be.
type Identity struct {
	Source        string
	Verified      bool
	UserID        string
	ExternalID    string
	InstallID     string
	SessionID     string
	VerifiedEmail string
	VerifiedPhone string
	ClaimHeaders  []verify.Header // from a contact token's claim_header mappings
	// WouldRefuse is the code enforce mode would have refused the request
	// with (apierr.CodeInvalidSignature) when report mode let a failed
	// signature pass; "" otherwise. For metrics only: never a header.
	WouldRefuse string
}

// Credentials is what a request presented.
type Credentials struct {
	Platform      string
	ExternalID    string
	ExternalIDSig string
	Email         string
	EmailSig      string
	Phone         string
	PhoneSig      string
	InstallID     string
	SessionID     string
	ContactToken  string // X-Contact-Token, unvalidated: the token check refuses what is not a JWS
	Bearer        string // the token of Authorization: Bearer, unvalidated likewise
	SSOToken      string
}

// Platform is one client platform's HMAC keys and mode.
type Platform struct {
	Mode string
	Keys []*verify.HMACKey
}

// Store is what the domain needs of the identity store (*store.Store).
type Store interface {
	ResolveExternal(ctx context.Context, k *store.Keys, externalID string, now time.Time) (userID string, created bool, err error)
	ResolveUnverified(ctx context.Context, k *store.Keys, externalID string, now time.Time, e store.Expiry) (userID string, created bool, left time.Duration, err error)
	RenewUser(ctx context.Context, k *store.Keys, externalID, userID string, e store.Expiry) (time.Duration, error)
	CreateInstall(ctx context.Context, k *store.Keys, now time.Time, e store.Expiry) (installID, userID string, err error)
	InstallUser(ctx context.Context, k *store.Keys, installID string, e store.Expiry) (string, time.Duration, error)
	Link(ctx context.Context, k *store.Keys, req store.LinkRequest, o store.LinkOptions) (store.LinkResult, error)
	AdmitSession(ctx context.Context, k *store.Keys, p store.SessionPolicy, ns store.NewSession, now time.Time) (evicted []string, err error)
	TouchSession(ctx context.Context, k *store.Keys, p store.SessionPolicy, sessionID string, now time.Time) (store.SessionState, error)
	RecordActivity(ctx context.Context, k *store.Keys, p store.SessionPolicy, acts []store.Activity, now time.Time) (int, error)
	RecordFailure(ctx context.Context, k *store.Keys, fp store.FailurePolicy, sp store.SessionPolicy, subject, sessionID string, now time.Time) (store.Failures, error)
	EndSession(ctx context.Context, k *store.Keys, p store.SessionPolicy, sessionID, reason string, now time.Time) (why string, endedNow, known bool, err error)
	UserSessions(ctx context.Context, k *store.Keys, p store.SessionPolicy, userID string, now time.Time) (attrs string, live []store.LiveSession, err error)
	EndUserSessions(ctx context.Context, k *store.Keys, p store.SessionPolicy, userID, handle, keep, reason string, now time.Time) ([]store.EndedSession, error)
	UserClaims(ctx context.Context, k *store.Keys, userID string) (string, error)
	ExternalUser(ctx context.Context, k *store.Keys, externalID string) (string, error)
	ClaimLogoutJTI(ctx context.Context, k *store.Keys, issuer, jti string, ttl time.Duration) (bool, error)
	ReleaseLogoutJTI(ctx context.Context, k *store.Keys, issuer, jti string) error
	Publish(ctx context.Context, tenant, kind, key string) error
}

// ClaimsSource answers the claims the customer backend vouches for a user
// (a claims_url), or an error: an *apierr.Error to answer as is, or a
// failure.
type ClaimsSource func(ctx context.Context, userID, externalID string) (map[string]string, error)

// Config is a tenant's identity domain, as provisioned. Durations are
// final (defaults applied); a nil verifier means the tenant does not accept
// that credential.
type Config struct {
	Tenant string
	Store  Store
	Now    func() time.Time
	Logger *zap.Logger

	Platforms        map[string]*Platform
	DefaultPlatform  string
	AnonymousDeny    bool   // refuse requests without a credential
	SignedAttributes string // SignedAttributesBound or SignedAttributesPlain
	FailOpen         bool   // a store failure passes the request as anonymous (if allowed)

	// CacheSize and CacheTTL bound every in-process cache.
	CacheSize int
	CacheTTL  time.Duration

	Sessions store.SessionPolicy
	Expiry   store.Expiry
	// Regulation of failed verifications; nil: none.
	Regulation *store.FailurePolicy

	Tokens       *verify.Tokens // contact tokens (verify and/or issue)
	MappedClaims []string       // claims that claim_header mappings carry from issued tokens
	ClaimsURL    ClaimsSource   // nil: no claims resolver
	SSO          *verify.TokenInfo
	// Logout verifies the logout tokens of back-channel logout; nil: the
	// tenant does not accept them.
	Logout *verify.Logout

	// Observe is told of session and link events (metrics).
	Observe Observer
}

// Domain is one tenant's identity domain.
type Domain struct {
	cfg       Config
	keys      *store.Keys
	strictest string // the strictest mode among platforms: used for unknown platforms
	logger    *zap.Logger
	storeLogs lograte.Limiter

	users    users
	installs installs
	sessions sessions
	tokens   tokens
	inval    invalidators

	regulation regulation
}

// New builds a tenant's domain.
func New(cfg Config) *Domain {
	d := &Domain{cfg: cfg, keys: store.NewKeys(cfg.Tenant), logger: cfg.Logger}
	if d.logger == nil {
		d.logger = zap.NewNop()
	}
	for _, p := range cfg.Platforms {
		d.strictest = stricter(d.strictest, p.Mode)
	}
	d.users.init(d)
	d.installs.init(d)
	d.sessions.init(d)
	d.tokens.init(d)
	d.regulation.init(d)
	d.OnInvalidate(InvalidateSession, d.sessions.drop, d.sessions.flush)
	d.OnInvalidate(InvalidateInstall, d.installs.drop, d.installs.flush)
	if cfg.SSO != nil {
		d.OnInvalidate(InvalidateSSOUser, cfg.SSO.ForgetUser, cfg.SSO.Flush)
	}
	return d
}

// Keys are the tenant's store keys.
func (d *Domain) Keys() *store.Keys { return d.keys }

// Sessions is the session policy the domain applies.
func (d *Domain) Sessions() store.SessionPolicy { return d.sessions.policy }

// Expiry is the expiry policy of installs and unverified users.
func (d *Domain) Expiry() store.Expiry { return d.users.expiry }

// LogStoreError logs a store failure at error level, at most once a second
// per tenant, so an outage does not flood the log.
func (d *Domain) LogStoreError(err error) {
	if d.storeLogs.Allow(d.cfg.Now(), time.Second) {
		d.logger.Error("identity store unavailable", zap.Error(err))
	}
}

// debug logs a refused credential at debug level: never at error level,
// never with the credential itself.
func (d *Domain) debug(msg string, fields ...zap.Field) {
	if ce := d.logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(fields...)
	}
}

func stricter(a, b string) string {
	rank := map[string]int{"": 0, ModeOff: 1, ModeReport: 2, ModeEnforce: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// invalidators is what the domain drops when told: a function per kind,
// and the flushes to run when announcements may have been missed.
type invalidators struct {
	mu     sync.RWMutex
	byKind map[string]func(key string)
	flush  []func()
}

// OnInvalidate registers what to drop when the store announces a change
// of kind (store.Listen), and flush, run when the subscription (re)starts
// and announcements may have been missed while it was down.
func (d *Domain) OnInvalidate(kind string, drop func(key string), flush func()) {
	d.inval.mu.Lock()
	defer d.inval.mu.Unlock()
	if d.inval.byKind == nil {
		d.inval.byKind = map[string]func(string){}
	}
	d.inval.byKind[kind] = drop
	if flush != nil {
		d.inval.flush = append(d.inval.flush, flush)
	}
}

// Invalidate drops what this instance cached of key of kind. Unknown kinds
// are ignored.
func (d *Domain) Invalidate(kind, key string) {
	d.inval.mu.RLock()
	drop := d.inval.byKind[kind]
	d.inval.mu.RUnlock()
	if drop != nil {
		drop(key)
	}
}

// Flush runs every registered flush: cached mappings that can change are
// dropped.
func (d *Domain) Flush() {
	d.inval.mu.RLock()
	defer d.inval.mu.RUnlock()
	for _, f := range d.inval.flush {
		f()
	}
}
