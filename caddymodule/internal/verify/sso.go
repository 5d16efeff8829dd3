package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sync/semaphore"

	"github.com/idlink/idlink/caddymodule/internal/cache"
)

// Limits of what a verified identity may carry: each value may reach an
// upstream header.
const (
	MaxExternalIDLen = 256
	MaxEmailLen      = 320
)

// SSOFailureTTL is how long a refused SSO token stays refused without
// asking the token-info URL again.
const SSOFailureTTL = 10 * time.Second

// maxTokenInfoBytes bounds a token-info answer.
const maxTokenInfoBytes = 64 << 10

// DefaultMaxConcurrent bounds the token-info calls of one checker in
// flight at once.
const DefaultMaxConcurrent = 64

// Refusal is a credential that does not verify: the client's to fix, not
// a failure of idlink's. Reason is a sentence safe to answer (it never
// holds the credential).
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

func refuse(reason string) error { return &Refusal{Reason: reason} }

// ErrUnavailable wraps the errors of a credential that cannot be checked
// right now (a token-info URL or key source that is down or answers
// nonsense): a technical failure, to retry.
var ErrUnavailable = errors.New("the credential cannot be checked right now")

// SSOUser is what a valid SSO token says.
type SSOUser struct {
	ExternalID string // the answer's sub
	Email      string // only when the answer says email_verified: true
	Exp        int64  // unix seconds
}

// TokenInfo checks opaque SSO tokens by asking the customer's token-info
// URL, as the seed's tokenInfoURL does: a POST of the form
// `<TokenParam>=<token>`, answered 200 with JSON {sub, aud, exp, iat,
// email, email_verified, active} for a valid token. With client
// authentication (ClientAuth) the URL is an RFC 7662 introspection
// endpoint: the same POST, authenticated, with token_type_hint if set.
//
// A wrong aud, an exp in the past, an iat in the future or active false
// is a *Refusal, and so is a non-200 answer of a token-info URL without
// client authentication (unless it asks for client authentication).
// No answer within the timeout, a network error, a 5xx or 429, an answer
// that is not that JSON, max_concurrent calls already in flight (ErrBusy)
// or a refusal of idlink's own request (ErrClientRefused: with client
// authentication, any non-200) wrap ErrUnavailable. Valid answers are
// cached until their exp (bounded by the cache's ttl), refusals for
// SSOFailureTTL, the rest not at all; concurrent checks of one token share
// one call.
type TokenInfo struct {
	url        string
	param      string
	hint       string
	auth       ClientAuth
	authz      string // the Authorization header of every call, "" for none
	slots      *semaphore.Weighted
	max        int
	audience   []string
	leeway     time.Duration
	timeout    time.Duration
	client     *http.Client
	now        func() time.Time
	observe    func(result string)
	unavailErr func(err error)
	cache      *cache.Loader[[sha256.Size]byte, *ssoOutcome]
}

// TokenInfoConfig configures a TokenInfo.
type TokenInfoConfig struct {
	URL        string        // absolute http(s)
	TokenParam string        // the form field of the token
	Audience   []string      // the answer's aud must hold one
	Timeout    time.Duration // one call
	Leeway     time.Duration // clock skew on exp and iat
	Client     *http.Client  // makes the calls (it should not follow redirects)
	CacheSize  int
	CacheTTL   time.Duration
	Now        func() time.Time
	// Auth authenticates idlink to the endpoint. Zero: AuthNone.
	Auth ClientAuth
	// TokenTypeHint, if set, is sent as token_type_hint (RFC 7662 §2.1).
	TokenTypeHint string
	// MaxConcurrent bounds the calls in flight; a check beyond it fails
	// at once with ErrBusy. Zero: DefaultMaxConcurrent.
	MaxConcurrent int
	// Observe, if set, hears each check's result: "valid", "refused",
	// "unavailable", "client_refused" (ErrClientRefused) or "busy"
	// (ErrBusy, no call made).
	Observe func(result string)
	// Unavailable, if set, hears why a call could not be had or was
	// refused for idlink's own request (it names the URL, never the token
	// nor a credential).
	Unavailable func(err error)
}

// ssoOutcome is the cached outcome of one SSO token: a user, or a refusal.
type ssoOutcome struct {
	user    SSOUser
	refused error
}

// NewTokenInfo returns the checker of cfg.
func NewTokenInfo(cfg TokenInfoConfig) (*TokenInfo, error) {
	switch {
	case cfg.URL == "":
		return nil, errors.New("a token-info URL is required")
	case len(cfg.Audience) == 0:
		return nil, errors.New("audience is required (the aud the token-info answer must carry)")
	case cfg.TokenParam == "":
		return nil, errors.New("a token form field is required")
	case cfg.Client == nil || cfg.Now == nil:
		return nil, errors.New("a client and a clock are required")
	case cfg.MaxConcurrent < 0:
		return nil, errors.New("max_concurrent must be positive")
	}
	if cfg.Auth.Method == "" {
		cfg.Auth.Method = AuthNone
	}
	if err := cfg.Auth.Check(); err != nil {
		return nil, err
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	v := &TokenInfo{
		url: cfg.URL, param: cfg.TokenParam, hint: cfg.TokenTypeHint, auth: cfg.Auth, authz: cfg.Auth.authorization(),
		slots: semaphore.NewWeighted(int64(cfg.MaxConcurrent)), max: cfg.MaxConcurrent,
		audience: cfg.Audience, leeway: cfg.Leeway, timeout: cfg.Timeout,
		client: cfg.Client, now: cfg.Now, observe: cfg.Observe, unavailErr: cfg.Unavailable,
		cache: cache.NewLoader[[sha256.Size]byte, *ssoOutcome](cfg.CacheSize, cfg.CacheTTL, cfg.Now,
			func(d [sha256.Size]byte) string { return string(d[:]) }),
	}
	if v.observe == nil {
		v.observe = func(string) {}
	}
	if v.unavailErr == nil {
		v.unavailErr = func(error) {}
	}
	return v, nil
}

// Check returns what an SSO token says: cached, or from one call to the
// token-info URL shared by every concurrent check of the same token. The
// error is a *Refusal or wraps ErrUnavailable.
func (v *TokenInfo) Check(ctx context.Context, token string) (SSOUser, error) {
	digest := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
	if o, ok := v.cache.Get(digest); ok {
		if o.refused != nil {
			return SSOUser{}, o.refused
		}
		if v.now().Before(time.Unix(o.user.Exp, 0).Add(v.leeway)) {
			return o.user, nil
		}
		v.cache.Remove(digest)
		return SSOUser{}, refuse("the SSO token has expired")
	}
	o, err := v.cache.Load(ctx, digest, func(ctx context.Context) (*ssoOutcome, time.Duration, error) {
		// One slot per call: the checks that share it take none. Beyond
		// the bound, no waiting: a flood of unknown tokens must not queue
		// up calls to the provider.
		if !v.slots.TryAcquire(1) {
			v.observe("busy")
			err := fmt.Errorf("%w: max_concurrent %d reached", ErrBusy, v.max)
			v.unavailErr(err)
			return &ssoOutcome{refused: fmt.Errorf("%w: %w", ErrUnavailable, err)}, -1, nil
		}
		o := v.lookup(ctx, token)
		v.slots.Release(1)
		var rf *Refusal
		switch {
		case o.refused == nil:
			return o, time.Unix(o.user.Exp, 0).Sub(v.now()), nil
		case errors.As(o.refused, &rf):
			return o, SSOFailureTTL, nil
		}
		return o, -1, nil // unavailable: asked again next time
	})
	if err != nil {
		return SSOUser{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return o.user, o.refused
}

// ForgetUser drops the cached answers that name an external id (its user
// was logged out): its tokens are asked about again.
func (v *TokenInfo) ForgetUser(externalID string) {
	v.cache.ForgetIf(func(o *ssoOutcome) bool { return o.refused == nil && o.user.ExternalID == externalID })
}

// Flush drops every cached answer.
func (v *TokenInfo) Flush() { v.cache.Flush() }

// lookup calls the token-info URL once.
func (v *TokenInfo) lookup(ctx context.Context, token string) *ssoOutcome {
	// The call is shared by every waiter: it must not die with the first
	// caller's request, only with its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.url, strings.NewReader(v.form(token)))
	if err != nil {
		return v.unavailable(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if v.authz != "" {
		req.Header.Set("Authorization", v.authz)
	}
	resp, err := v.client.Do(req)
	if err != nil {
		return v.unavailable(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenInfoBytes+1))
	if why, ok := v.refusesClient(resp, body); ok {
		return v.clientRefused(why)
	}
	switch {
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return v.unavailable(fmt.Errorf("token-info URL answered %d", resp.StatusCode))
	case resp.StatusCode != http.StatusOK && v.introspection():
		// An introspection endpoint's verdict on a token is a 200: any
		// other answer is about the call.
		return v.unavailable(fmt.Errorf("introspection endpoint answered %d", resp.StatusCode))
	case resp.StatusCode != http.StatusOK:
		return v.refused("the token-info endpoint refused the SSO token")
	case err != nil:
		return v.unavailable(err)
	case len(body) > maxTokenInfoBytes:
		return v.unavailable(errors.New("token-info answer larger than 64 KiB"))
	}
	var info tokenInfo
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&info); err != nil {
		return v.unavailable(fmt.Errorf("token-info answer is not the expected JSON: %v", err))
	}
	return v.judge(&info)
}

// judge checks a 200 answer.
func (v *TokenInfo) judge(info *tokenInfo) *ssoOutcome {
	now := v.now()
	switch {
	case info.Active != nil && !bool(*info.Active):
		return v.refused("the SSO token is not active")
	case info.Active == nil && v.introspection():
		// RFC 7662 §2.2: active is required; without it nothing is known.
		return v.refused("the introspection answer does not say the token is active")
	case !HeaderValue(info.Sub, MaxExternalIDLen):
		return v.refused("the token-info answer has no usable sub")
	case !v.forUs(info):
		return v.refused("the SSO token was issued for another audience")
	case info.Exp == nil:
		return v.refused("the token-info answer has no exp")
	case !now.Before(time.Unix(int64(*info.Exp), 0).Add(v.leeway)):
		return v.refused("the SSO token has expired")
	case info.Iat != nil && now.Add(v.leeway).Before(time.Unix(int64(*info.Iat), 0)):
		return v.refused("the SSO token was issued in the future")
	}
	o := &ssoOutcome{user: SSOUser{ExternalID: info.Sub, Exp: int64(*info.Exp)}}
	// An email counts as verified only when the answer says so.
	verifiedEmail := info.EmailVerified != nil && bool(*info.EmailVerified)
	if verifiedEmail && HeaderValue(info.Email, MaxEmailLen) && strings.Contains(info.Email, "@") {
		o.user.Email = info.Email
	}
	v.observe("valid")
	return o
}

// forUs reports whether the answer's token was issued for this service:
// its aud holds one of the audiences. An introspection answer may leave aud
// out (it is optional in RFC 7662, and Ory Hydra sends it empty); then its
// client_id, the client the token was issued to, must be one of them.
func (v *TokenInfo) forUs(info *tokenInfo) bool {
	if len(info.Aud) == 0 && v.introspection() {
		return slices.Contains(v.audience, info.ClientID)
	}
	return info.Aud.hasAny(v.audience)
}

func (v *TokenInfo) refused(why string) *ssoOutcome {
	v.observe("refused")
	return &ssoOutcome{refused: refuse(why)}
}

func (v *TokenInfo) unavailable(err error) *ssoOutcome {
	v.observe("unavailable")
	v.unavailErr(err)
	return &ssoOutcome{refused: fmt.Errorf("%w: %w", ErrUnavailable, err)}
}

// clientRefused is an answer about idlink's own request: never the user's
// fault, never cached.
func (v *TokenInfo) clientRefused(why string) *ssoOutcome {
	v.observe("client_refused")
	err := fmt.Errorf("%w (auth_method %s): %s", ErrClientRefused, v.auth.Method, why)
	v.unavailErr(err)
	return &ssoOutcome{refused: fmt.Errorf("%w: %w", ErrUnavailable, err)}
}

// tokenInfo is a token-info answer, in the shapes seen in the field
// (Google's tokeninfo sends numbers and booleans as strings).
type tokenInfo struct {
	Sub           string       `json:"sub"`
	Aud           claimStrings `json:"aud"`
	ClientID      string       `json:"client_id"` // RFC 7662: whom the token was issued to
	Exp           *flexNumber  `json:"exp"`
	Iat           *flexNumber  `json:"iat"`
	Email         string       `json:"email"`
	EmailVerified *flexBool    `json:"email_verified"`
	Active        *flexBool    `json:"active"`
}

// claimStrings is a string or an array of strings.
type claimStrings []string

func (c *claimStrings) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*c = claimStrings{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*c = many
	return nil
}

func (c claimStrings) hasAny(want []string) bool {
	for _, have := range c {
		for _, w := range want {
			if have == w {
				return true
			}
		}
	}
	return false
}

// flexNumber is a JSON number or a string holding one (unix seconds).
type flexNumber int64

func (n *flexNumber) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1<<40 {
		return fmt.Errorf("not a time in seconds: %.20q", s)
	}
	*n = flexNumber(f)
	return nil
}

// flexBool is a JSON boolean or the string "true"/"false".
type flexBool bool

func (v *flexBool) UnmarshalJSON(b []byte) error {
	switch strings.Trim(string(b), `"`) {
	case "true":
		*v = true
	case "false":
		*v = false
	default:
		return errors.New("not a boolean")
	}
	return nil
}

// CacheStats are the lookups of the answers' cache.
func (v *TokenInfo) CacheStats() cache.Stats { return v.cache.Stats() }
