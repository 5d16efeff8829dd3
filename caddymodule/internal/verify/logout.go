package verify

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// BackchannelLogoutEvent is the member of a logout token's "events" claim
// that makes it one (OpenID Connect Back-Channel Logout 1.0 §2.4).
const BackchannelLogoutEvent = "http://schemas.openid.net/event/backchannel-logout"

// Logout-token limits.
const (
	MaxJTILen = 256 // a longer jti is refused
	MaxSIDLen = 256 // a longer sid is refused
)

// LogoutConfig configures a Logout.
type LogoutConfig struct {
	// Tokens holds the keys: the other issuer's keys of the contact
	// tokens (static by kid, then its JWKS). The tenant's own signing
	// keys never verify a logout token.
	Tokens *Tokens
	// Issuer is the iss a logout token must carry; Audience the values
	// one of which its aud must hold (the relying party's client id).
	Issuer   string
	Audience []string
	// MaxAge is how old (now - iat) a logout token may be; Leeway the
	// clock skew allowed on iat and exp.
	MaxAge, Leeway time.Duration
	Now            func() time.Time
}

// Logout verifies the logout tokens an OpenID provider posts to the
// back-channel logout endpoint, per §2.6 of the specification: signed by
// a key of the provider (alg among the allowed ones, never "none"), iss
// and aud as configured, iat no older than MaxAge, exp (if present) not
// past, a jti, the back-channel logout event with a JSON object value, a
// sub and/or a sid, and no nonce. Replays (the jti seen before) are for
// the caller to refuse: it needs the store. Errors are a *Refusal or
// ErrKeySourceUnavailable.
type Logout struct {
	tokens *Tokens
	parser *jwt.Parser
	maxAge time.Duration
	leeway time.Duration
	now    func() time.Time
}

// LogoutToken is what a verified logout token says.
type LogoutToken struct {
	Issuer    string
	Subject   string // "" when absent
	SessionID string // the provider's session id (sid); "" when absent
	JTI       string
	// Until is the moment the token stops being accepted (by iat + MaxAge,
	// or its exp if sooner), leeway included: its jti must be remembered
	// until then.
	Until time.Time
}

// NewLogout returns the verifier of cfg.
func NewLogout(cfg LogoutConfig) (*Logout, error) {
	switch {
	case cfg.Tokens == nil || cfg.Now == nil:
		return nil, errors.New("the contact tokens' keys and a clock are required")
	case cfg.Issuer == "" || len(cfg.Audience) == 0:
		return nil, errors.New("an issuer and an audience are required")
	case cfg.MaxAge <= 0:
		return nil, errors.New("max_age must be positive")
	}
	algs := make([]string, 0, len(cfg.Tokens.algs))
	for a := range cfg.Tokens.algs {
		algs = append(algs, a)
	}
	return &Logout{
		tokens: cfg.Tokens, maxAge: cfg.MaxAge, leeway: cfg.Leeway, now: cfg.Now,
		parser: jwt.NewParser(
			jwt.WithValidMethods(algs), jwt.WithIssuer(cfg.Issuer), jwt.WithAudience(cfg.Audience...),
			jwt.WithIssuedAt(), jwt.WithLeeway(cfg.Leeway), jwt.WithTimeFunc(cfg.Now),
		),
	}, nil
}

// logoutTyp reports whether a typ header may be a logout token's: absent,
// "JWT" (what providers without explicit typing send), or logout+jwt
// (§2.4, recommended), compared as media types are (case-insensitively,
// with or without "application/").
func logoutTyp(raw json.RawMessage) bool {
	if raw == nil {
		return true
	}
	var typ string
	if json.Unmarshal(raw, &typ) != nil {
		return false
	}
	t := strings.ToLower(typ)
	t = strings.TrimPrefix(t, "application/")
	return t == "jwt" || t == "logout+jwt"
}

// Verify checks a logout token and returns what it says.
func (l *Logout) Verify(ctx context.Context, raw string) (*LogoutToken, error) {
	if len(raw) > MaxTokenBytes {
		return nil, refuse("the logout token is longer than " + strconv.Itoa(MaxTokenBytes) + " bytes")
	}
	if !compactJWS(raw) {
		return nil, refuse("the logout token is not a compact JWS: three base64url parts separated by dots")
	}
	h, err := peekHeader(raw)
	if err != nil {
		return nil, err
	}
	switch {
	case h.Alg == "":
		return nil, refuse("the logout token header has no alg")
	case !l.tokens.algs[h.Alg]:
		return nil, refuse("the logout token's algorithm is not accepted")
	case !logoutTyp(h.Typ):
		return nil, refuse("the logout token's typ is not logout+jwt")
	case h.KID == nil || *h.KID == "":
		return nil, refuse("the logout token header has no kid")
	case len(*h.KID) > MaxKIDLen:
		return nil, refuse("the logout token's kid is too long")
	case len(h.Crit) > 0:
		return nil, refuse("the logout token has critical header parameters idlink does not understand")
	}
	key, err := l.tokens.keyFor(ctx, *h.KID)
	if err != nil {
		return nil, err
	}
	switch {
	case key.Own:
		return nil, refuse("no key of the provider has the logout token's kid")
	case h.Alg != key.Alg:
		return nil, refuse("the logout token's algorithm is not the one of its key")
	}
	claims := jwt.MapClaims{}
	keyOf := func(tok *jwt.Token) (any, error) {
		if tok.Method == nil || tok.Method.Alg() != key.Alg {
			return nil, errors.New("the token's algorithm is not the one of its key")
		}
		return key.Pub, nil
	}
	if _, err := l.parser.ParseWithClaims(raw, claims, keyOf); err != nil {
		return nil, refuse("logout token: " + jwtReason(err, claims))
	}
	return l.readClaims(claims)
}

// readClaims checks the claims of a logout token whose signature, iss, aud
// and time claims verified.
func (l *Logout) readClaims(claims jwt.MapClaims) (*LogoutToken, error) {
	now := l.now()
	iat, err := claims.GetIssuedAt()
	if err != nil || iat == nil {
		return nil, refuse("the logout token has no iat claim")
	}
	until := iat.Add(l.maxAge + l.leeway)
	if !now.Before(until) {
		return nil, refuse("the logout token was issued too long ago")
	}
	if exp, _ := claims.GetExpirationTime(); exp != nil && exp.Add(l.leeway).Before(until) {
		until = exp.Add(l.leeway) // not past: the parser checked it
	}
	str := func(name string, max int) (string, error) {
		v, ok := claims[name]
		if !ok {
			return "", nil
		}
		s, isStr := v.(string)
		if !isStr || s == "" || !HeaderValue(s, max) {
			return "", refuse("the logout token's " + name + " claim is not a valid string")
		}
		return s, nil
	}
	lt := &LogoutToken{Until: until}
	lt.Issuer, _ = claims["iss"].(string) // checked by the parser
	if lt.JTI, err = str("jti", MaxJTILen); err != nil {
		return nil, err
	}
	if lt.JTI == "" {
		return nil, refuse("the logout token has no jti claim")
	}
	events, ok := claims["events"].(map[string]any)
	if !ok {
		return nil, refuse("the logout token has no events claim (a JSON object)")
	}
	if _, ok := events[BackchannelLogoutEvent].(map[string]any); !ok {
		return nil, refuse("the logout token's events claim has no " + BackchannelLogoutEvent + " member with a JSON object value")
	}
	if _, has := claims["nonce"]; has {
		return nil, refuse("a logout token must not carry a nonce claim")
	}
	if lt.Subject, err = str("sub", MaxExternalIDLen); err != nil {
		return nil, err
	}
	if lt.SessionID, err = str("sid", MaxSIDLen); err != nil {
		return nil, err
	}
	if lt.Subject == "" && lt.SessionID == "" {
		return nil, refuse("the logout token has neither a sub nor a sid claim")
	}
	return lt, nil
}
