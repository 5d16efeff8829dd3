package caddymodule

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// Contact-token limits and defaults.
const (
	maxTokenBytes         = 8192 // longer tokens are refused before any parsing
	maxKIDLen             = 256
	maxClaimHeaderValue   = 1024
	defaultTokenLeeway    = 30 * time.Second
	defaultMaxLifetime    = 24 * time.Hour
	defaultTokenTTL       = 15 * time.Minute
	defaultJWKSRefresh    = 15 * time.Minute
	defaultJWKSRefetchMin = 30 * time.Second
	defaultJWKSTimeout    = 5 * time.Second
	retryAfterKeySource   = 5 // seconds
	codeInvalidToken      = "invalid_token"
	codeKeySourceDown     = "key_source_unavailable"
	bearerInvalidToken    = `Bearer error="invalid_token"`
	defaultUserClaim      = "sub"
)

// ContactToken configures a tenant's contact tokens (short-lived JWTs that
// carry a user's identity): verifying tokens issued by someone else (a
// JWKS URL and/or static keys, by kid), and issuing them (sign_key).
//
// A token is verified against exactly one key, the one its kid names, and
// only with that key's own algorithm. Refusals are 401 invalid_token with
// `WWW-Authenticate: Bearer error="invalid_token"`; when the key cannot be
// had because the JWKS URL is down, 503 key_source_unavailable.
type ContactToken struct {
	// JWKSURL is the URL of the issuer's JWK Set. It is fetched when the
	// app starts, every JWKSRefresh, and on an unknown kid at most once per
	// JWKSRefetchMin; when a fetch fails the last good keys stay in use.
	JWKSURL string `json:"jwks_url,omitempty"`

	// Keys are static public keys (PEM files) by kid.
	Keys []TokenKey `json:"keys,omitempty"`

	// Algorithms is the allow-list for tokens of other issuers. Default:
	// ES256, RS256, EdDSA. Accepted: ES256/384/512, RS256/384/512,
	// PS256/384/512, EdDSA; never "none" nor an HMAC algorithm.
	Algorithms []string `json:"algorithms,omitempty"`

	// Issuer is the "iss" a token of another issuer must carry. Required
	// with jwks_url or key.
	Issuer string `json:"issuer,omitempty"`

	// Audience lists accepted "aud" values (one must be present). Required
	// with jwks_url or key. Tokens idlink issues carry them too.
	Audience []string `json:"audience,omitempty"`

	// Leeway is the clock skew allowed on exp, nbf and iat. Default: 30s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// MaxLifetime refuses tokens whose exp is further than this from their
	// iat (or from now when they have no iat). Default: 24h.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// UserClaim is the claim of another issuer's token that holds the
	// user's external id, resolved like an HMAC-verified X-External-Id.
	// Default: "sub". (In tokens idlink issues, "sub" is the platform user
	// id.)
	UserClaim string `json:"user_claim,omitempty"`

	// ClaimHeaders copy claims into upstream headers (e.g. contact_id →
	// X-Contact-Id). Those headers are deleted from every client request,
	// in every spelling, like every identity header.
	ClaimHeaders []ClaimHeader `json:"claim_headers,omitempty"`

	// ClaimsURL is the customer backend's claims endpoint
	// (claims_url), asked for the mapped claims of every token idlink
	// issues. Optional: without it, issued tokens carry the claims the
	// backend wrote (PUT /users/{user_id}/claims).
	ClaimsURL *ClaimsResolver `json:"claims_url,omitempty"`

	// SignKeys make idlink an issuer: the first signs new tokens, the
	// others are still published and accepted (rotation overlap). The
	// algorithm follows the key type (RSA: RS256 unless given).
	SignKeys []TokenKey `json:"sign_keys,omitempty"`

	// SignIssuer is the "iss" of tokens idlink issues. Default:
	// "idlink/<tenant>".
	SignIssuer string `json:"sign_issuer,omitempty"`

	// TTL is the lifetime of tokens idlink issues. Default: 15m.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// JWKSRefresh is the interval of the periodic JWKS fetch. Default: 15m.
	JWKSRefresh caddy.Duration `json:"jwks_refresh,omitempty"`

	// JWKSRefetchMin is the least time between two fetches caused by an
	// unknown kid, and how long a kid still unknown after one is
	// remembered as unknown. Default: 30s.
	JWKSRefetchMin caddy.Duration `json:"jwks_refetch_min,omitempty"`

	// JWKSTimeout bounds one JWKS fetch. Default: 5s.
	JWKSTimeout caddy.Duration `json:"jwks_timeout,omitempty"`

	tenant     *Tenant
	algs       map[string]bool
	static     map[string]verifyKey // kid → static or own key
	source     *jwksSource
	signers    []signKey
	jwks       []byte
	ext, own   *jwt.Parser
	ownAud     []string
	leeway     time.Duration
	maxLife    time.Duration
	verified   *cache.TTL[[sha256.Size]byte, *verifiedToken]
	unknownKID *cache.TTL[string, struct{}]
	headers    []ClaimHeader // with canonical header names
	mapped     []string      // claims of headers that issued tokens may carry
}

// TokenKey is a key by kid, read from a PEM file.
type TokenKey struct {
	// KID is the key id tokens name in their header.
	KID string `json:"kid"`
	// File is the path of the PEM file. Placeholders are replaced.
	File string `json:"file"`
	// Alg is the key's one algorithm. Default: from the key type (EC curve
	// → ES256/384/512, Ed25519 → EdDSA, RSA → RS256).
	Alg string `json:"alg,omitempty"`
}

// ClaimHeader copies a claim into an upstream header.
type ClaimHeader struct {
	// Claim is the claim's name, e.g. "contact_id".
	Claim string `json:"claim"`
	// Header is the header's name, e.g. "X-Contact-Id".
	Header string `json:"header"`
}

// verifiedToken is what a verified token says, cached by the token's
// digest until it expires.
type verifiedToken struct {
	exp, nbf   int64 // unix seconds; nbf 0 when absent
	own        bool  // signed by one of the tenant's own keys
	userID     string
	externalID string
	sessionID  string
	headers    []headerValue
}

// headerValue is a header set on the request to the upstream.
type headerValue struct{ name, value string }

// headers that no claim may set: identity and credential headers, and
// those that change how the request is routed or framed.
var reservedClaimHeaders = newHeaderSet(identityHeaders, credentialHeaders, []string{
	hdrPlatform, hdrAuthorization, "Host", "Content-Length", "Transfer-Encoding", "Connection",
	"Cookie", "Upgrade", "Te", "Trailer", "Proxy-Authorization", "Keep-Alive", "Expect",
})

func (c *ContactToken) provision(t *Tenant) error {
	c.tenant = t
	repl := caddy.NewReplacer()
	if len(c.Algorithms) == 0 {
		c.Algorithms = append([]string(nil), defaultAlgorithms...)
	}
	c.algs = map[string]bool{}
	for _, a := range c.Algorithms {
		if !asymmetricAlgs[a] {
			return fmt.Errorf("contact_token: algorithm %q is not accepted (use ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512 or EdDSA)", a)
		}
		c.algs[a] = true
	}
	if c.Leeway <= 0 {
		c.Leeway = caddy.Duration(defaultTokenLeeway)
	}
	if c.MaxLifetime <= 0 {
		c.MaxLifetime = caddy.Duration(defaultMaxLifetime)
	}
	if c.TTL <= 0 {
		c.TTL = caddy.Duration(defaultTokenTTL)
	}
	if c.UserClaim == "" {
		c.UserClaim = defaultUserClaim
	}
	if c.SignIssuer == "" {
		c.SignIssuer = "idlink/" + t.name
	}
	if c.JWKSRefresh <= 0 {
		c.JWKSRefresh = caddy.Duration(defaultJWKSRefresh)
	}
	if c.JWKSRefetchMin <= 0 {
		c.JWKSRefetchMin = caddy.Duration(defaultJWKSRefetchMin)
	}
	if c.JWKSTimeout <= 0 {
		c.JWKSTimeout = caddy.Duration(defaultJWKSTimeout)
	}
	c.leeway, c.maxLife = time.Duration(c.Leeway), time.Duration(c.MaxLifetime)
	if time.Duration(c.TTL) > c.maxLife {
		return fmt.Errorf("contact_token: ttl %v is longer than max_lifetime %v", time.Duration(c.TTL), c.maxLife)
	}

	c.static = map[string]verifyKey{}
	c.signers = c.signers[:0]
	for _, k := range c.SignKeys {
		if err := checkKID(k.KID); err != nil {
			return fmt.Errorf("contact_token sign_key: %v", err)
		}
		if _, dup := c.static[k.KID]; dup {
			return fmt.Errorf("contact_token: kid %q is used twice", k.KID)
		}
		path, err := repl.ReplaceOrErr(k.File, true, true)
		if err != nil {
			return fmt.Errorf("contact_token sign_key %q: %v", k.KID, err)
		}
		raw, err := readPEMKey(path)
		if err != nil {
			return fmt.Errorf("contact_token sign_key %q: %v", k.KID, err)
		}
		signer, ok := privateSigner(raw)
		if !ok {
			return fmt.Errorf("contact_token sign_key %q: %s holds no private key", k.KID, path)
		}
		alg, err := keyAlg(signer.Public(), k.Alg)
		if err != nil {
			return fmt.Errorf("contact_token sign_key %q: %v", k.KID, err)
		}
		c.signers = append(c.signers, signKey{kid: k.KID, alg: alg, signer: signer})
		c.static[k.KID] = verifyKey{kid: k.KID, alg: alg, pub: signer.Public(), own: true}
	}
	for _, k := range c.Keys {
		if err := checkKID(k.KID); err != nil {
			return fmt.Errorf("contact_token key: %v", err)
		}
		if _, dup := c.static[k.KID]; dup {
			return fmt.Errorf("contact_token: kid %q is used twice", k.KID)
		}
		path, err := repl.ReplaceOrErr(k.File, true, true)
		if err != nil {
			return fmt.Errorf("contact_token key %q: %v", k.KID, err)
		}
		raw, err := readPEMKey(path)
		if err != nil {
			return fmt.Errorf("contact_token key %q: %v", k.KID, err)
		}
		pub := publicOf(raw)
		alg, err := keyAlg(pub, k.Alg)
		if err != nil {
			return fmt.Errorf("contact_token key %q: %v", k.KID, err)
		}
		if !c.algs[alg] {
			return fmt.Errorf("contact_token key %q: its algorithm %s is not in algorithms", k.KID, alg)
		}
		c.static[k.KID] = verifyKey{kid: k.KID, alg: alg, pub: pub}
	}
	var err error
	if c.jwks, err = buildJWKS(c.signers); err != nil {
		return fmt.Errorf("contact_token: %v", err)
	}
	if c.JWKSURL != "" {
		u, err := repl.ReplaceOrErr(c.JWKSURL, true, true)
		if err != nil {
			return fmt.Errorf("contact_token jwks_url: %v", err)
		}
		c.source, err = newJWKSSource(u, t.name, time.Duration(c.JWKSTimeout), time.Duration(c.JWKSRefresh),
			time.Duration(c.JWKSRefetchMin), t.logger.Named("jwks"), t.now)
		if err != nil {
			return fmt.Errorf("contact_token: %v", err)
		}
	}

	c.headers = c.headers[:0]
	seen := map[string]bool{}
	for _, m := range c.ClaimHeaders {
		if m.Claim == "" || !validHeaderName(m.Header) {
			return fmt.Errorf("contact_token claim_header %q %q: a claim name and a valid header name are required", m.Claim, m.Header)
		}
		if reservedClaimHeaders.has(m.Header) {
			return fmt.Errorf("contact_token claim_header: %s is reserved and cannot be set from a claim", m.Header)
		}
		canon := http.CanonicalHeaderKey(m.Header)
		if seen[foldHeader(canon)] {
			return fmt.Errorf("contact_token claim_header: header %s is mapped twice", canon)
		}
		seen[foldHeader(canon)] = true
		c.headers = append(c.headers, ClaimHeader{Claim: m.Claim, Header: canon})
	}
	c.mapped = c.mapped[:0]
	for _, m := range c.headers {
		if !registeredClaims[m.Claim] && !slices.Contains(c.mapped, m.Claim) {
			c.mapped = append(c.mapped, m.Claim)
		}
	}
	if c.ClaimsURL != nil {
		if err := c.ClaimsURL.provision(t); err != nil {
			return fmt.Errorf("contact_token %v", err)
		}
	}

	common := []jwt.ParserOption{
		jwt.WithLeeway(c.leeway),
		jwt.WithTimeFunc(t.now),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	ext := append(common[:len(common):len(common)], jwt.WithValidMethods(c.Algorithms))
	if c.Issuer != "" {
		ext = append(ext, jwt.WithIssuer(c.Issuer))
	}
	if len(c.Audience) > 0 {
		ext = append(ext, jwt.WithAudience(c.Audience...))
	}
	c.ext = jwt.NewParser(ext...)
	c.ownAud = c.Audience
	if len(c.ownAud) == 0 {
		c.ownAud = []string{t.name}
	}
	ownAlgs := []string{}
	for _, s := range c.signers {
		ownAlgs = append(ownAlgs, s.alg)
	}
	c.own = jwt.NewParser(append(common[:len(common):len(common)],
		jwt.WithValidMethods(ownAlgs), jwt.WithIssuer(c.SignIssuer), jwt.WithAudience(c.ownAud...))...)

	c.verified = cache.New[[sha256.Size]byte, *verifiedToken](t.CacheSize, time.Duration(t.CacheTTL), t.now)
	c.unknownKID = cache.New[string, struct{}](4096, time.Duration(c.JWKSRefetchMin), t.now)
	return nil
}

func (c *ContactToken) validate(tenant string) error {
	if c.JWKSURL == "" && len(c.Keys) == 0 && len(c.SignKeys) == 0 {
		return fmt.Errorf("tenant %q contact_token: configure jwks_url, key or sign_key", tenant)
	}
	// A key source may sign for other relying parties too (a shared JWKS
	// signs for every customer): tokens of other issuers are accepted only
	// for a named issuer and audience (RFC 8725, sections 3.8 and 3.9).
	if c.JWKSURL != "" || len(c.Keys) > 0 {
		if c.Issuer == "" {
			return fmt.Errorf("tenant %q contact_token: jwks_url or key needs issuer (the iss its tokens must carry)", tenant)
		}
		if len(c.Audience) == 0 {
			return fmt.Errorf("tenant %q contact_token: jwks_url or key needs audience (the aud its tokens must carry)", tenant)
		}
	}
	if r := c.ClaimsURL; r != nil {
		switch {
		case r.URL == "":
			return fmt.Errorf("tenant %q contact_token: claims_url needs a URL", tenant)
		case len(c.SignKeys) == 0:
			return fmt.Errorf("tenant %q contact_token: claims_url needs sign_key (it fills the tokens idlink issues)", tenant)
		case len(c.ClaimHeaders) == 0:
			return fmt.Errorf("tenant %q contact_token: claims_url needs a claim_header (only mapped claims reach a token)", tenant)
		}
	}
	return nil
}

// privateSigner returns a private key read from a PEM file as a signer.
func privateSigner(k any) (crypto.Signer, bool) {
	switch p := k.(type) {
	case *rsa.PrivateKey:
		return p, true
	case *ecdsa.PrivateKey:
		return p, true
	case ed25519.PrivateKey:
		return p, true
	}
	return nil, false
}

// checkKID validates a configured kid.
func checkKID(kid string) error {
	if !verify.HeaderValue(kid, maxKIDLen) {
		return fmt.Errorf("kid %q: 1 to %d bytes without control characters", kid, maxKIDLen)
	}
	return nil
}

// validHeaderName reports whether s is an HTTP token (RFC 9110 field name).
func validHeaderName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// stripHeaders are the claim headers, deleted from every client request.
func (c *ContactToken) stripHeaders() []string {
	if c == nil {
		return nil
	}
	names := make([]string, len(c.headers))
	for i, h := range c.headers {
		names[i] = h.Header
	}
	return names
}

// tokenError is a refused token: 401 invalid_token with the reason.
func tokenError(reason string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Code: codeInvalidToken, Message: reason, Challenge: bearerInvalidToken}
}

func errKeySourceUnavailable() *apiError {
	return &apiError{
		Status:     http.StatusServiceUnavailable,
		Code:       codeKeySourceDown,
		Message:    "the key that signed this token cannot be fetched right now; retry shortly",
		RetryAfter: retryAfterKeySource,
	}
}

// checkContactToken verifies the contact token of a request, if any: from
// X-Contact-Token, or Authorization: Bearer when the tenant verifies
// contact tokens. A token signed by the tenant's own key names the platform
// user in "sub" and its session in "sid"; another issuer's token names an
// external id (user_claim), resolved like the HMAC path.
func (t *Tenant) checkContactToken(ctx context.Context, c *credentials) (*identity, error) {
	raw := c.contactToken
	if c.bearer != "" && t.ContactToken != nil {
		if raw != "" && raw != c.bearer {
			return nil, errInvalidRequest("Authorization and X-Contact-Token carry different tokens")
		}
		raw = c.bearer
	}
	if raw == "" {
		return nil, nil
	}
	if t.ContactToken == nil {
		return nil, tokenError("this tenant does not accept contact tokens")
	}
	vt, err := t.ContactToken.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	return t.ContactToken.identityOf(ctx, vt)
}

// identityOf turns a verified token into an identity.
func (c *ContactToken) identityOf(ctx context.Context, vt *verifiedToken) (*identity, error) {
	id := &identity{
		source: SourceContactToken, verified: true,
		userID: vt.userID, externalID: vt.externalID, sessionID: vt.sessionID,
		claimHeaders: vt.headers,
	}
	if !vt.own {
		u, err := c.tenant.resolveExternal(ctx, vt.externalID)
		if err != nil {
			return nil, err
		}
		id.userID = u
	}
	if vt.sessionID != "" {
		e, err := c.tenant.checkTokenSession(ctx, vt)
		if err != nil {
			return nil, err
		}
		id.installID = e.installID
		// A token says no more than its session knows.
		id.verified = e.verified
	}
	return id, nil
}

// errSessionUnverified refuses a contact token for a session an
// unverified (report or off mode) login started.
func errSessionUnverified() *apiError {
	return newError(http.StatusForbidden, "session_unverified",
		"this session's login was not verified (report or off mode): it gets no contact token; log in with a signed credential")
}

// checkTokenSession refuses a token bound to a session (sid) that has
// ended, through the sessions' liveness check: warm, it costs no Redis
// round trip, and an end (logout, eviction) reaches every instance over
// the invalidation channel. It counts as activity on the session.
func (t *Tenant) checkTokenSession(ctx context.Context, vt *verifiedToken) (*sessionEntry, error) {
	e, err := t.liveSession(ctx, vt.sessionID)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			withChallenge := *ae
			withChallenge.Challenge = bearerInvalidToken
			return nil, &withChallenge
		}
		return nil, err
	}
	if e.userID != vt.userID {
		return nil, tokenError("the token's session belongs to another user")
	}
	return e, nil
}

// verify returns what a token says, from the cache when it was verified
// before (time claims are checked again on every hit), else by verifying
// its signature with the one key its kid names.
func (c *ContactToken) verify(ctx context.Context, raw string) (*verifiedToken, error) {
	if len(raw) > maxTokenBytes {
		return nil, tokenError("the token is longer than " + strconv.Itoa(maxTokenBytes) + " bytes")
	}
	if !compactJWS(raw) {
		return nil, tokenError("the token is not a compact JWS: three base64url parts separated by dots")
	}
	digest := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	now := c.tenant.now()
	if vt, ok := c.verified.Get(digest); ok {
		if err := c.checkTimes(vt, now); err != nil {
			c.verified.Remove(digest)
			return nil, err
		}
		return vt, nil
	}
	vt, err := c.verifyFresh(ctx, raw, now)
	if err != nil {
		return nil, err
	}
	if ttl := time.Unix(vt.exp, 0).Add(c.leeway).Sub(now); ttl > 0 {
		c.verified.AddFor(digest, vt, ttl)
	}
	return vt, nil
}

// checkTimes re-checks exp and nbf of a cached token.
func (c *ContactToken) checkTimes(vt *verifiedToken, now time.Time) *apiError {
	if !now.Before(time.Unix(vt.exp, 0).Add(c.leeway)) {
		return tokenError("the token has expired")
	}
	if vt.nbf != 0 && now.Before(time.Unix(vt.nbf, 0).Add(-c.leeway)) {
		return tokenError("the token is not valid yet")
	}
	return nil
}

// compactJWS reports whether s is three non-empty base64url parts joined by
// two dots (no padding, no spaces), without decoding anything.
func compactJWS(s string) bool {
	dots, partLen := 0, 0
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '.':
			if partLen == 0 {
				return false
			}
			dots++
			if dots > 2 {
				return false
			}
			partLen = 0
		case ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_':
			partLen++
		default:
			return false
		}
	}
	return dots == 2 && partLen > 0
}

// joseHeader is the part of a token's header read before choosing a key.
type joseHeader struct {
	Alg  string
	KID  *string
	Crit json.RawMessage
}

// peekHeader decodes a token's header (the token passed compactJWS).
func peekHeader(raw string) (joseHeader, *apiError) {
	var h joseHeader
	seg := raw[:strings.IndexByte(raw, '.')]
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return h, tokenError("the token header is not base64url")
	}
	// Read exactly as golang-jwt reads it: a map, whose keys match case
	// by case. (Decoding into the struct would match "ALG" or "Kid" too,
	// and a header with both "alg" and "ALG" would name one algorithm here
	// and another to the verifier.)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return h, tokenError("the token header is not a JSON object")
	}
	if v, ok := m["alg"]; ok && json.Unmarshal(v, &h.Alg) != nil {
		return h, tokenError("the token header is not a JSON object")
	}
	if v, ok := m["kid"]; ok && json.Unmarshal(v, &h.KID) != nil {
		return h, tokenError("the token header is not a JSON object")
	}
	h.Crit = m["crit"]
	return h, nil
}

// verifyFresh verifies a token not in the cache.
func (c *ContactToken) verifyFresh(ctx context.Context, raw string, now time.Time) (*verifiedToken, error) {
	h, aerr := peekHeader(raw)
	if aerr != nil {
		return nil, aerr
	}
	switch {
	case h.Alg == "":
		return nil, tokenError("the token header has no alg")
	case !asymmetricAlgs[h.Alg]:
		return nil, tokenError("the token's algorithm is not accepted")
	case h.KID == nil || *h.KID == "":
		return nil, tokenError("the token header has no kid")
	case len(*h.KID) > maxKIDLen:
		return nil, tokenError("the token's kid is too long")
	case len(h.Crit) > 0:
		return nil, tokenError("the token has critical header parameters idlink does not understand")
	}
	key, err := c.keyFor(ctx, *h.KID)
	if err != nil {
		return nil, err
	}
	switch {
	case !key.own && !c.algs[h.Alg]:
		return nil, tokenError("the token's algorithm is not accepted")
	case h.Alg != key.alg:
		return nil, tokenError("the token's algorithm is not the one of its key")
	}
	parser := c.ext
	if key.own {
		parser = c.own
	}
	claims := jwt.MapClaims{}
	keyOf := func(tok *jwt.Token) (any, error) {
		// The header as golang-jwt read it must name the key's own
		// algorithm too (peekHeader reads it the same way).
		if tok.Method == nil || tok.Method.Alg() != key.alg {
			return nil, errors.New("the token's algorithm is not the one of its key")
		}
		return key.pub, nil
	}
	if _, err := parser.ParseWithClaims(raw, claims, keyOf); err != nil {
		return nil, tokenError(jwtReason(err, claims))
	}
	exp, _ := claims.GetExpirationTime() // present: the parser requires it
	vt := &verifiedToken{exp: exp.Unix(), own: key.own}
	if nbf, _ := claims.GetNotBefore(); nbf != nil {
		vt.nbf = nbf.Unix()
	}
	from := now
	if iat, _ := claims.GetIssuedAt(); iat != nil {
		from = iat.Time
	}
	if exp.Sub(from) > c.maxLife+c.leeway {
		return nil, tokenError("the token lives longer than max_lifetime allows")
	}
	if err := c.readClaims(claims, vt); err != nil {
		return nil, err
	}
	return vt, nil
}

// keyFor returns the one key a kid names: the tenant's own signing keys and
// static keys first, then the JWKS. An unknown kid is remembered, so that
// a stream of tokens naming it costs no fetch.
func (c *ContactToken) keyFor(ctx context.Context, kid string) (verifyKey, error) {
	if k, ok := c.static[kid]; ok {
		return k, nil
	}
	if c.source == nil {
		return verifyKey{}, tokenError("no key has the token's kid")
	}
	if _, unknown := c.unknownKID.Get(kid); unknown {
		return verifyKey{}, tokenError("no key has the token's kid")
	}
	jwk, err := c.source.lookup(ctx, kid)
	if err != nil {
		if ctx.Err() != nil || !c.source.healthy() {
			c.tenant.debug("no key for a token: JWKS unavailable")
			return verifyKey{}, errKeySourceUnavailable()
		}
		c.unknownKID.Add(kid, struct{}{})
		return verifyKey{}, tokenError("no key has the token's kid")
	}
	k, err := jwkVerifyKey(kid, jwk)
	if err != nil {
		c.tenant.debug("JWKS key refused", zap.Error(err))
		return verifyKey{}, tokenError("the key the token's kid names cannot verify it")
	}
	return k, nil
}

// jwtReason words a golang-jwt error for the client (never with the token).
func jwtReason(err error, claims jwt.MapClaims) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the token is malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "the token's signature does not verify"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		for _, name := range []string{"exp", "iss", "aud"} {
			if _, ok := claims[name]; !ok {
				return "the token has no " + name + " claim"
			}
		}
		return "the token lacks a required claim"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "the token is not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the token was issued in the future"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the token's issuer is not accepted"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the token's audience is not accepted"
	case errors.Is(err, jwt.ErrInvalidType):
		return "a claim of the token has the wrong type"
	}
	return "the token cannot be verified"
}

// readClaims fills vt from the claims of a verified token.
func (c *ContactToken) readClaims(claims jwt.MapClaims, vt *verifiedToken) *apiError {
	str := func(name string) (string, bool, *apiError) {
		v, ok := claims[name]
		if !ok {
			return "", false, nil
		}
		s, isStr := v.(string)
		if !isStr {
			return "", true, tokenError("the token's " + name + " claim is not a string")
		}
		return s, true, nil
	}
	if vt.own {
		sub, _, err := str("sub")
		if err != nil {
			return err
		}
		if _, perr := store.ParseID(store.KindUser, sub); perr != nil {
			return tokenError("the token's sub claim is not a user id")
		}
		vt.userID = sub
		sid, has, err := str("sid")
		if err != nil {
			return err
		}
		if has {
			if _, perr := store.ParseID(store.KindSession, sid); perr != nil {
				return tokenError("the token's sid claim is not a session id")
			}
			vt.sessionID = sid
		}
		ext, has, err := str("external_id")
		if err != nil {
			return err
		}
		if has {
			if !verify.HeaderValue(ext, verify.MaxExternalIDLen) {
				return tokenError("the token's external_id claim is not a valid external id")
			}
			vt.externalID = ext
		}
	} else {
		ext, has, err := str(c.UserClaim)
		if err != nil {
			return err
		}
		if !has {
			return tokenError("the token has no " + c.UserClaim + " claim")
		}
		if !verify.HeaderValue(ext, verify.MaxExternalIDLen) {
			return tokenError("the token's " + c.UserClaim + " claim is not a valid external id")
		}
		vt.externalID = ext
	}
	for _, m := range c.headers {
		v, ok := claims[m.Claim]
		if !ok || v == nil {
			continue
		}
		s, ok := claimString(v)
		if !ok || !verify.HeaderValue(s, maxClaimHeaderValue) {
			return tokenError("the token's " + m.Claim + " claim cannot be passed on as a header")
		}
		vt.headers = append(vt.headers, headerValue{m.Header, s})
	}
	return nil
}

// claimString renders a scalar claim for a header.
func claimString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return strconv.FormatInt(int64(x), 10), true
		}
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case json.Number:
		return x.String(), true
	}
	return "", false
}

// Issuance.

func init() {
	apiRoutes["POST /contact-token"] = (*API).refreshContactToken
	// POST /sessions hands out a contact token with each new session.
	sessionToken = func(t *Tenant, ctx context.Context, id identity) (func(sessionID string, sessionEnd time.Time) (string, error), error) {
		if !t.issues() || !id.verified {
			// No token says more than its session knows: an unverified
			// session gets none.
			return nil, nil
		}
		claims, err := t.tokenClaims(ctx, id.userID, id.externalID)
		if err != nil {
			return nil, err
		}
		return func(sessionID string, sessionEnd time.Time) (string, error) {
			tok, _, err := t.issueToken(id.userID, sessionID, id.externalID, claims, sessionEnd)
			return tok, err
		}, nil
	}
}

// registeredClaims are set by idlink itself: extra identifiers never
// replace them.
var registeredClaims = map[string]bool{
	"iss": true, "aud": true, "sub": true, "sid": true, "iat": true, "exp": true,
	"nbf": true, "jti": true, "external_id": true,
}

// issueForSession issues a token for a live session: its extra claims
// are the user's claims, read now (tokenClaims), and it never outlives the
// session's absolute lifetime (sessionEnd; zero: none).
func (t *Tenant) issueForSession(ctx context.Context, userID, sessionID, externalID string, sessionEnd time.Time) (string, time.Time, error) {
	claims, err := t.tokenClaims(ctx, userID, externalID)
	if err != nil {
		return "", time.Time{}, err
	}
	return t.issueToken(userID, sessionID, externalID, claims, sessionEnd)
}

// refreshContactToken is POST /contact-token: a fresh token for a live
// session, named by the current token (Authorization: Bearer or
// X-Contact-Token; it must still verify) or by X-Session-Id.
func (a *API) refreshContactToken(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if !t.issues() {
		writeError(w, errNoSigningKey)
		return
	}
	creds, bad := readCredentials(r.Header)
	if bad != nil {
		writeError(w, bad)
		return
	}
	raw := creds.bearer
	if raw == "" {
		raw = creds.contactToken
	} else if creds.contactToken != "" && creds.contactToken != raw {
		writeError(w, errInvalidRequest("Authorization and X-Contact-Token carry different tokens"))
		return
	}
	sid, userID := "", ""
	if raw != "" {
		vt, err := t.ContactToken.verify(r.Context(), raw)
		if err != nil {
			a.fail(w, err)
			return
		}
		if !vt.own || vt.sessionID == "" {
			writeError(w, tokenError("only a contact token idlink issued for a session can be refreshed"))
			return
		}
		sid, userID = vt.sessionID, vt.userID
	}
	if creds.sessionID != "" {
		if sid != "" && sid != creds.sessionID {
			writeError(w, newError(http.StatusUnauthorized, codeIdentityMismatch,
				"the token and X-Session-Id name different sessions"))
			return
		}
		sid = creds.sessionID
	}
	if sid == "" {
		writeError(w, newError(http.StatusUnauthorized, codeAuthRequired,
			"send the current contact token (Authorization: Bearer) or X-Session-Id"))
		return
	}
	e, err := t.liveSession(r.Context(), sid)
	if err != nil {
		a.fail(w, err)
		return
	}
	if userID != "" && e.userID != userID {
		writeError(w, tokenError("the token's session belongs to another user"))
		return
	}
	if !e.verified {
		writeError(w, errSessionUnverified())
		return
	}
	var end time.Time
	if lt := t.sess.policy.Lifetime; lt > 0 {
		end = time.UnixMilli(e.started).Add(lt)
	}
	tok, exp, err := t.issueForSession(r.Context(), e.userID, sid, e.externalID, end)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		ContactToken string `json:"contact_token"`
		ExpiresAt    string `json:"expires_at"`
		UserID       string `json:"user_id"`
		SessionID    string `json:"session_id"`
	}{tok, exp.UTC().Format(time.RFC3339), e.userID, sid})
}

// errNoSigningKey is returned when a tenant that has no sign_key is asked
// to issue a token.
var errNoSigningKey = newError(http.StatusNotFound, "contact_tokens_disabled",
	"this tenant does not issue contact tokens (no sign_key)")

// issues reports whether the tenant issues contact tokens.
func (t *Tenant) issues() bool { return t.ContactToken != nil && len(t.ContactToken.signers) > 0 }

// issueContactToken signs a contact token for a user's session with the
// tenant's current signing key. Claims: iss, aud, sub (platform user id),
// sid, iat, exp, external_id (when the user has one) and extra, the
// tenant's extra identifiers (e.g. contact_id, predict_external_id).
// extra cannot override the registered claims.
func (t *Tenant) issueContactToken(ctx context.Context, userID, sessionID, externalID string, extra map[string]string) (string, time.Time, error) {
	return t.issueToken(userID, sessionID, externalID, extra, time.Time{})
}

// issueToken signs a token that expires after the ttl, or at notAfter if
// that is sooner (zero: no bound).
func (t *Tenant) issueToken(userID, sessionID, externalID string, extra map[string]string, notAfter time.Time) (string, time.Time, error) {
	if !t.issues() {
		return "", time.Time{}, errNoSigningKey
	}
	c := t.ContactToken
	now := t.now().Truncate(time.Second)
	exp := now.Add(time.Duration(c.TTL))
	if !notAfter.IsZero() && notAfter.Before(exp) {
		exp = notAfter.Truncate(time.Second)
	}
	claims := jwt.MapClaims{}
	for k, v := range extra {
		if !registeredClaims[k] {
			claims[k] = v
		}
	}
	claims["iss"] = c.SignIssuer
	if len(c.ownAud) == 1 {
		claims["aud"] = c.ownAud[0]
	} else {
		claims["aud"] = c.ownAud
	}
	claims["sub"] = userID
	claims["iat"] = now.Unix()
	claims["exp"] = exp.Unix()
	if sessionID != "" {
		claims["sid"] = sessionID
	}
	if externalID != "" {
		claims["external_id"] = externalID
	}
	k := c.signers[0]
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.alg), claims)
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.signer)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing a contact token: %w", err)
	}
	return s, exp, nil
}
