package verify

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
)

// Contact-token limits.
const (
	MaxTokenBytes       = 8192 // longer tokens are refused before any parsing
	MaxKIDLen           = 256
	MaxClaimHeaderValue = 1024
)

// ErrKeySourceUnavailable is a token whose key cannot be had because the
// JWKS URL is down (or was never reached).
var ErrKeySourceUnavailable = fmt.Errorf("%w: the JWKS cannot be fetched", ErrUnavailable)

// ErrNoSigningKey is asked of a verifier that issues no tokens.
var ErrNoSigningKey = errors.New("no signing key")

// ClaimHeader names the header a claim is passed on in.
type ClaimHeader struct{ Claim, Header string }

// Header is a header set on the request to the upstream.
type Header struct{ Name, Value string }

// Token is what a verified contact token says.
type Token struct {
	Exp, Nbf   int64 // unix seconds; Nbf 0 when absent
	Own        bool  // signed by one of the tenant's own keys
	UserID     string
	ExternalID string
	SessionID  string
	Headers    []Header // the mapped claims
}

// TokensConfig configures a Tokens.
type TokensConfig struct {
	// Static are the keys by kid: the own signing keys (Own) and the
	// static public keys of other issuers.
	Static map[string]Key
	// Source is another issuer's JWKS, or nil.
	Source *JWKSSource
	// Algorithms is the allow-list for other issuers' tokens.
	Algorithms []string
	// Issuer and Audience are what other issuers' tokens must carry.
	Issuer   string
	Audience []string
	// OwnIssuer and OwnAudience are what tokens idlink issues carry, and
	// must carry to verify.
	OwnIssuer   string
	OwnAudience []string
	// Signers are the own signing keys; the first signs.
	Signers []SignKey
	// TTL is the lifetime of issued tokens.
	TTL time.Duration
	// Leeway is the clock skew allowed on exp, nbf and iat; MaxLifetime
	// bounds exp - iat (or exp - now).
	Leeway, MaxLifetime time.Duration
	// UnknownKIDTTL is how long a kid no key has is remembered as
	// unknown (no fetch for it meanwhile).
	UnknownKIDTTL time.Duration
	// UserClaim holds the external id in other issuers' tokens.
	UserClaim string
	// Headers are the claims passed on as headers.
	Headers []ClaimHeader
	// UserID and SessionID tell what the sub and sid of an own token
	// must be.
	UserID, SessionID func(string) bool
	CacheSize         int
	CacheTTL          time.Duration
	Now               func() time.Time
	// Debug, if set, hears why a key could not be used.
	Debug func(msg string, fields ...zap.Field)
}

// Tokens verifies contact tokens and issues the tenant's own. A token is
// verified against exactly one key, the one its kid names, and only with
// that key's own algorithm. Verified tokens are cached by digest until
// they expire (their time claims are checked again on every hit); a kid
// no key has is remembered as unknown for a while. Errors are a *Refusal
// or ErrKeySourceUnavailable.
type Tokens struct {
	static     map[string]Key
	source     *JWKSSource
	algs       map[string]bool
	ext, own   *jwt.Parser
	ownIssuer  string
	ownAud     []string
	signers    []SignKey
	ttl        time.Duration
	leeway     time.Duration
	maxLife    time.Duration
	userClaim  string
	headers    []ClaimHeader
	userID     func(string) bool
	sessionID  func(string) bool
	now        func() time.Time
	debug      func(msg string, fields ...zap.Field)
	cache      *cache.TTL[[sha256.Size]byte, *Token]
	unknownKID *cache.TTL[string, struct{}]
	jwks       []byte
}

// NewTokens returns the verifier of cfg.
func NewTokens(cfg TokensConfig) (*Tokens, error) {
	if cfg.Now == nil || cfg.UserID == nil || cfg.SessionID == nil {
		return nil, errors.New("a clock and the id checks are required")
	}
	c := &Tokens{
		static: cfg.Static, source: cfg.Source, algs: map[string]bool{}, ownIssuer: cfg.OwnIssuer, ownAud: cfg.OwnAudience,
		signers: cfg.Signers, ttl: cfg.TTL, leeway: cfg.Leeway, maxLife: cfg.MaxLifetime, userClaim: cfg.UserClaim,
		headers: cfg.Headers, userID: cfg.UserID, sessionID: cfg.SessionID, now: cfg.Now, debug: cfg.Debug,
		cache:      cache.New[[sha256.Size]byte, *Token](cfg.CacheSize, cfg.CacheTTL, cfg.Now),
		unknownKID: cache.New[string, struct{}](4096, cfg.UnknownKIDTTL, cfg.Now),
	}
	if c.debug == nil {
		c.debug = func(string, ...zap.Field) {}
	}
	for _, a := range cfg.Algorithms {
		if !AsymmetricAlgs[a] {
			return nil, fmt.Errorf("algorithm %q is not accepted", a)
		}
		c.algs[a] = true
	}
	var err error
	if c.jwks, err = BuildJWKS(cfg.Signers); err != nil {
		return nil, err
	}
	common := []jwt.ParserOption{
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Now),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	ext := append(common[:len(common):len(common)], jwt.WithValidMethods(cfg.Algorithms))
	if cfg.Issuer != "" {
		ext = append(ext, jwt.WithIssuer(cfg.Issuer))
	}
	if len(cfg.Audience) > 0 {
		ext = append(ext, jwt.WithAudience(cfg.Audience...))
	}
	c.ext = jwt.NewParser(ext...)
	ownAlgs := []string{}
	for _, s := range cfg.Signers {
		ownAlgs = append(ownAlgs, s.Alg)
	}
	c.own = jwt.NewParser(append(common[:len(common):len(common)],
		jwt.WithValidMethods(ownAlgs), jwt.WithIssuer(cfg.OwnIssuer), jwt.WithAudience(cfg.OwnAudience...))...)
	return c, nil
}

// Issues reports whether the verifier has a signing key.
func (c *Tokens) Issues() bool { return len(c.signers) > 0 }

// JWKS is the public JWK Set of the signing keys, the current one first.
func (c *Tokens) JWKS() []byte { return c.jwks }

// Source is the JWKS of another issuer, or nil.
func (c *Tokens) Source() *JWKSSource { return c.source }

// Verify returns what a token says, from the cache when it was verified
// before (time claims are checked again on every hit), else by verifying
// its signature with the one key its kid names.
func (c *Tokens) Verify(ctx context.Context, raw string) (*Token, error) {
	if len(raw) > MaxTokenBytes {
		return nil, refuse("the token is longer than " + strconv.Itoa(MaxTokenBytes) + " bytes")
	}
	if !compactJWS(raw) {
		return nil, refuse("the token is not a compact JWS: three base64url parts separated by dots")
	}
	digest := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	now := c.now()
	if vt, ok := c.cache.Get(digest); ok {
		if err := c.checkTimes(vt, now); err != nil {
			c.cache.Remove(digest)
			return nil, err
		}
		return vt, nil
	}
	vt, err := c.verifyFresh(ctx, raw, now)
	if err != nil {
		return nil, err
	}
	if ttl := time.Unix(vt.Exp, 0).Add(c.leeway).Sub(now); ttl > 0 {
		c.cache.AddFor(digest, vt, ttl)
	}
	return vt, nil
}

// checkTimes re-checks exp and nbf of a cached token.
func (c *Tokens) checkTimes(vt *Token, now time.Time) error {
	if !now.Before(time.Unix(vt.Exp, 0).Add(c.leeway)) {
		return refuse("the token has expired")
	}
	if vt.Nbf != 0 && now.Before(time.Unix(vt.Nbf, 0).Add(-c.leeway)) {
		return refuse("the token is not valid yet")
	}
	return nil
}

// verifyFresh verifies a token not in the cache.
func (c *Tokens) verifyFresh(ctx context.Context, raw string, now time.Time) (*Token, error) {
	h, err := peekHeader(raw)
	if err != nil {
		return nil, err
	}
	switch {
	case h.Alg == "":
		return nil, refuse("the token header has no alg")
	case !AsymmetricAlgs[h.Alg]:
		return nil, refuse("the token's algorithm is not accepted")
	case h.KID == nil || *h.KID == "":
		return nil, refuse("the token header has no kid")
	case len(*h.KID) > MaxKIDLen:
		return nil, refuse("the token's kid is too long")
	case len(h.Crit) > 0:
		return nil, refuse("the token has critical header parameters idlink does not understand")
	}
	key, err := c.keyFor(ctx, *h.KID)
	if err != nil {
		return nil, err
	}
	switch {
	case !key.Own && !c.algs[h.Alg]:
		return nil, refuse("the token's algorithm is not accepted")
	case h.Alg != key.Alg:
		return nil, refuse("the token's algorithm is not the one of its key")
	}
	parser := c.ext
	if key.Own {
		parser = c.own
	}
	claims := jwt.MapClaims{}
	keyOf := func(tok *jwt.Token) (any, error) {
		// The header as golang-jwt read it must name the key's own
		// algorithm too (peekHeader reads it the same way).
		if tok.Method == nil || tok.Method.Alg() != key.Alg {
			return nil, errors.New("the token's algorithm is not the one of its key")
		}
		return key.Pub, nil
	}
	if _, err := parser.ParseWithClaims(raw, claims, keyOf); err != nil {
		return nil, refuse(jwtReason(err, claims))
	}
	exp, _ := claims.GetExpirationTime() // present: the parser requires it
	vt := &Token{Exp: exp.Unix(), Own: key.Own}
	if nbf, _ := claims.GetNotBefore(); nbf != nil {
		vt.Nbf = nbf.Unix()
	}
	from := now
	if iat, _ := claims.GetIssuedAt(); iat != nil {
		from = iat.Time
	}
	if exp.Sub(from) > c.maxLife+c.leeway {
		return nil, refuse("the token lives longer than max_lifetime allows")
	}
	if err := c.readClaims(claims, vt); err != nil {
		return nil, err
	}
	return vt, nil
}

// keyFor returns the one key a kid names: the tenant's own signing keys and
// static keys first, then the JWKS. An unknown kid is remembered, so that
// a stream of tokens naming it costs no fetch.
func (c *Tokens) keyFor(ctx context.Context, kid string) (Key, error) {
	if k, ok := c.static[kid]; ok {
		return k, nil
	}
	if c.source == nil {
		return Key{}, refuse("no key has the token's kid")
	}
	if _, unknown := c.unknownKID.Get(kid); unknown {
		return Key{}, refuse("no key has the token's kid")
	}
	jwk, err := c.source.lookup(ctx, kid)
	if err != nil {
		if ctx.Err() != nil || !c.source.Healthy() {
			c.debug("no key for a token: JWKS unavailable")
			return Key{}, ErrKeySourceUnavailable
		}
		c.unknownKID.Add(kid, struct{}{})
		return Key{}, refuse("no key has the token's kid")
	}
	k, err := jwkKey(kid, jwk)
	if err != nil {
		c.debug("JWKS key refused", zap.Error(err))
		return Key{}, refuse("the key the token's kid names cannot verify it")
	}
	return k, nil
}

// readClaims fills vt from the claims of a verified token.
func (c *Tokens) readClaims(claims jwt.MapClaims, vt *Token) error {
	str := func(name string) (string, bool, error) {
		v, ok := claims[name]
		if !ok {
			return "", false, nil
		}
		s, isStr := v.(string)
		if !isStr {
			return "", true, refuse("the token's " + name + " claim is not a string")
		}
		return s, true, nil
	}
	if vt.Own {
		sub, _, err := str("sub")
		if err != nil {
			return err
		}
		if !c.userID(sub) {
			return refuse("the token's sub claim is not a user id")
		}
		vt.UserID = sub
		sid, has, err := str("sid")
		if err != nil {
			return err
		}
		if has {
			if !c.sessionID(sid) {
				return refuse("the token's sid claim is not a session id")
			}
			vt.SessionID = sid
		}
		ext, has, err := str("external_id")
		if err != nil {
			return err
		}
		if has {
			if !HeaderValue(ext, MaxExternalIDLen) {
				return refuse("the token's external_id claim is not a valid external id")
			}
			vt.ExternalID = ext
		}
	} else {
		ext, has, err := str(c.userClaim)
		if err != nil {
			return err
		}
		if !has {
			return refuse("the token has no " + c.userClaim + " claim")
		}
		if !HeaderValue(ext, MaxExternalIDLen) {
			return refuse("the token's " + c.userClaim + " claim is not a valid external id")
		}
		vt.ExternalID = ext
	}
	for _, m := range c.headers {
		v, ok := claims[m.Claim]
		if !ok || v == nil {
			continue
		}
		s, ok := ClaimString(v)
		if !ok || !HeaderValue(s, MaxClaimHeaderValue) {
			return refuse("the token's " + m.Claim + " claim cannot be passed on as a header")
		}
		vt.Headers = append(vt.Headers, Header{m.Header, s})
	}
	return nil
}

// CacheStats are the lookups of the verified-token cache.
func (c *Tokens) CacheStats() cache.Stats { return c.cache.Stats() }
