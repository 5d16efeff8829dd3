package caddymodule

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// Contact-token limits and defaults.
const (
	defaultTokenLeeway    = 30 * time.Second
	defaultMaxLifetime    = 24 * time.Hour
	defaultTokenTTL       = 15 * time.Minute
	defaultJWKSRefresh    = 15 * time.Minute
	defaultJWKSRefetchMin = 30 * time.Second
	defaultJWKSTimeout    = 5 * time.Second
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

	// BackchannelLogout, when set, accepts the provider's logout tokens at
	// POST /backchannel-logout (backchannel.go).
	BackchannelLogout *BackchannelLogout `json:"backchannel_logout,omitempty"`

	tenant  *Tenant
	v       *verify.Tokens
	logout  *verify.Logout
	headers []ClaimHeader // with canonical header names
	mapped  []string      // claims of headers that issued tokens may carry
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
		c.Algorithms = append([]string(nil), verify.DefaultAlgorithms...)
	}
	algs := map[string]bool{}
	for _, a := range c.Algorithms {
		if !verify.AsymmetricAlgs[a] {
			return fmt.Errorf("contact_token: algorithm %q is not accepted (use ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512 or EdDSA)", a)
		}
		algs[a] = true
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
	if time.Duration(c.TTL) > time.Duration(c.MaxLifetime) {
		return fmt.Errorf("contact_token: ttl %v is longer than max_lifetime %v", time.Duration(c.TTL), time.Duration(c.MaxLifetime))
	}

	static := map[string]verify.Key{}
	var signers []verify.SignKey
	for _, k := range c.SignKeys {
		if err := checkKID(k.KID); err != nil {
			return fmt.Errorf("contact_token sign_key: %v", err)
		}
		if _, dup := static[k.KID]; dup {
			return fmt.Errorf("contact_token: kid %q is used twice", k.KID)
		}
		path, err := repl.ReplaceOrErr(k.File, true, true)
		if err != nil {
			return fmt.Errorf("contact_token sign_key %q: %v", k.KID, err)
		}
		raw, err := verify.ReadPEMKey(path)
		if err != nil {
			return fmt.Errorf("contact_token sign_key %q: %v", k.KID, err)
		}
		signer, ok := verify.PrivateSigner(raw)
		if !ok {
			return fmt.Errorf("contact_token sign_key %q: %s holds no private key", k.KID, path)
		}
		alg, err := verify.KeyAlg(signer.Public(), k.Alg)
		if err != nil {
			return fmt.Errorf("contact_token sign_key %q: %v", k.KID, err)
		}
		signers = append(signers, verify.SignKey{KID: k.KID, Alg: alg, Signer: signer})
		static[k.KID] = verify.Key{KID: k.KID, Alg: alg, Pub: signer.Public(), Own: true}
	}
	for _, k := range c.Keys {
		if err := checkKID(k.KID); err != nil {
			return fmt.Errorf("contact_token key: %v", err)
		}
		if _, dup := static[k.KID]; dup {
			return fmt.Errorf("contact_token: kid %q is used twice", k.KID)
		}
		path, err := repl.ReplaceOrErr(k.File, true, true)
		if err != nil {
			return fmt.Errorf("contact_token key %q: %v", k.KID, err)
		}
		raw, err := verify.ReadPEMKey(path)
		if err != nil {
			return fmt.Errorf("contact_token key %q: %v", k.KID, err)
		}
		pub := verify.PublicOf(raw)
		alg, err := verify.KeyAlg(pub, k.Alg)
		if err != nil {
			return fmt.Errorf("contact_token key %q: %v", k.KID, err)
		}
		if !algs[alg] {
			return fmt.Errorf("contact_token key %q: its algorithm %s is not in algorithms", k.KID, alg)
		}
		static[k.KID] = verify.Key{KID: k.KID, Alg: alg, Pub: pub}
	}
	var source *verify.JWKSSource
	if c.JWKSURL != "" {
		u, err := repl.ReplaceOrErr(c.JWKSURL, true, true)
		if err != nil {
			return fmt.Errorf("contact_token jwks_url: %v", err)
		}
		logger := t.logger.Named("jwks")
		if _, err := outboundURL("jwks_url", u, "keys fetched over it can be replaced in transit", logger); err != nil {
			return fmt.Errorf("contact_token: %v", err)
		}
		source = verify.NewJWKSSource(verify.JWKSConfig{
			URL: u, Timeout: time.Duration(c.JWKSTimeout), Refresh: time.Duration(c.JWKSRefresh),
			RefetchMin: time.Duration(c.JWKSRefetchMin), Client: outboundClient(time.Duration(c.JWKSTimeout)),
			Logger: logger, Now: t.now,
			Observe: func(ok bool) {
				result := "failure"
				if ok {
					result = "success"
				}
				jwksFetches.WithLabelValues(t.name, result).Inc()
			},
		})
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
		if !verify.RegisteredClaims[m.Claim] && !slices.Contains(c.mapped, m.Claim) {
			c.mapped = append(c.mapped, m.Claim)
		}
	}
	if c.ClaimsURL != nil {
		if err := c.ClaimsURL.provision(t); err != nil {
			return fmt.Errorf("contact_token %v", err)
		}
	}

	ownAud := c.Audience
	if len(ownAud) == 0 {
		ownAud = []string{t.name}
	}
	headers := make([]verify.ClaimHeader, len(c.headers))
	for i, h := range c.headers {
		headers[i] = verify.ClaimHeader{Claim: h.Claim, Header: h.Header}
	}
	var err error
	c.v, err = verify.NewTokens(verify.TokensConfig{
		Static: static, Source: source, Algorithms: c.Algorithms, Issuer: c.Issuer, Audience: c.Audience,
		OwnIssuer: c.SignIssuer, OwnAudience: ownAud, Signers: signers, TTL: time.Duration(c.TTL),
		Leeway: time.Duration(c.Leeway), MaxLifetime: time.Duration(c.MaxLifetime),
		UnknownKIDTTL: time.Duration(c.JWKSRefetchMin), UserClaim: c.UserClaim, Headers: headers,
		UserID:    func(s string) bool { _, err := store.ParseID(store.KindUser, s); return err == nil },
		SessionID: func(s string) bool { _, err := store.ParseID(store.KindSession, s); return err == nil },
		CacheSize: t.CacheSize, CacheTTL: time.Duration(t.CacheTTL), Now: t.now, Debug: t.logger.Debug,
	})
	if err != nil {
		return fmt.Errorf("contact_token: %v", err)
	}
	if b := c.BackchannelLogout; b != nil {
		if c.logout, err = b.provision(t, c); err != nil {
			return err
		}
	}
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
	if b := c.BackchannelLogout; b != nil {
		if err := b.validate(tenant, c); err != nil {
			return err
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

// checkKID validates a configured kid.
func checkKID(kid string) error {
	if !verify.HeaderValue(kid, verify.MaxKIDLen) {
		return fmt.Errorf("kid %q: 1 to %d bytes without control characters", kid, verify.MaxKIDLen)
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
