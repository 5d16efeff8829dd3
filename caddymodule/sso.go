package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/idlink/idlink/caddymodule/internal/cache"
)

// SSO defaults and limits.
const (
	defaultSSOTimeout    = 3 * time.Second
	defaultSSOLeeway     = 30 * time.Second
	defaultSSOTokenParam = "token"
	ssoFailureTTL        = 10 * time.Second // how long a refused SSO token stays refused without asking again
	maxTokenInfoBytes    = 64 << 10
	retryAfterSSO        = 2 // seconds
	codeSSOUnavailable   = "sso_unavailable"
)

// SSO lookups by tenant and outcome, exported as idlink_sso_lookups_total.
var ssoLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "idlink",
	Name:      "sso_lookups_total",
	Help:      "Calls to SSO token-info URLs by tenant and result (valid, refused, unavailable).",
}, []string{"tenant", "result"})

// SSO checks the opaque SSO tokens of a tenant (X-Sso-Token) by asking the
// customer's token-info URL, as the seed's tokenInfoURL does: a POST of
// the form `<token_param>=<token>`, answered 200 with JSON
// {sub, aud, exp, iat, email, ...} for a valid token.
//
// A non-200 answer, a wrong aud, an exp in the past or an iat in the
// future is 401 invalid_token; no answer within the timeout, a network
// error, a 5xx or 429 is 503 sso_unavailable. Valid answers are cached
// until their exp (bounded by the tenant's cache_ttl), refusals for 10s;
// concurrent checks of one token share one call.
type SSO struct {
	// TokenInfoURL is the customer's token-info endpoint. Required.
	TokenInfoURL string `json:"token_info_url"`

	// Audience lists the accepted "aud" values; the answer's aud must hold
	// one of them. Required.
	Audience []string `json:"audience,omitempty"`

	// Timeout bounds one call to the token-info URL. Default: 3s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// TokenParam is the form field that carries the token. Default:
	// "token" (as RFC 7662 introspection); Google's tokeninfo uses
	// "id_token" or "access_token".
	TokenParam string `json:"token_param,omitempty"`

	// Leeway is the clock skew allowed on exp and iat. Default: 30s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	tenant *Tenant
	url    string
	client *http.Client
	leeway time.Duration
	cache  *cache.TTL[[sha256.Size]byte, *ssoResult]
	flight singleflight.Group
	logs   logLimiter // unavailable token-info URL
}

// ssoResult is the cached outcome of one SSO token: a user, or a refusal.
type ssoResult struct {
	externalID string
	email      string
	exp        int64 // unix seconds
	refused    *apiError
}

func (s *SSO) provision(t *Tenant) error {
	s.tenant = t
	u, err := caddy.NewReplacer().ReplaceOrErr(s.TokenInfoURL, true, true)
	if err != nil {
		return fmt.Errorf("sso token_info_url: %v", err)
	}
	if _, err := outboundURL("sso token_info_url", u, "tokens sent over it can be read in transit", t.logger); err != nil {
		return err
	}
	if len(s.Audience) == 0 {
		return errors.New("sso: audience is required (the aud the token-info answer must carry)")
	}
	if s.Timeout <= 0 {
		s.Timeout = caddy.Duration(defaultSSOTimeout)
	}
	if s.Leeway <= 0 {
		s.Leeway = caddy.Duration(defaultSSOLeeway)
	}
	if s.TokenParam == "" {
		s.TokenParam = defaultSSOTokenParam
	}
	s.url, s.leeway = u, time.Duration(s.Leeway)
	s.client = outboundClient(time.Duration(s.Timeout))
	s.cache = cache.New[[sha256.Size]byte, *ssoResult](t.CacheSize, time.Duration(t.CacheTTL), t.now)
	return nil
}

func errSSOUnavailable() *apiError {
	return &apiError{
		Status:     http.StatusServiceUnavailable,
		Code:       codeSSOUnavailable,
		Message:    "the SSO token cannot be checked right now; retry shortly",
		RetryAfter: retryAfterSSO,
	}
}

// checkSSO verifies X-Sso-Token against the tenant's token-info URL. Its
// sub is the user's external id (resolved like the HMAC path); its email
// counts as verified.
func (t *Tenant) checkSSO(ctx context.Context, c *credentials) (*identity, error) {
	if c.ssoToken == "" {
		return nil, nil
	}
	if t.SSO == nil {
		return nil, tokenError("this tenant does not accept SSO tokens")
	}
	res, aerr := t.SSO.check(ctx, c.ssoToken)
	if aerr != nil {
		return nil, aerr
	}
	userID, err := t.resolveExternal(ctx, res.externalID)
	if err != nil {
		return nil, err
	}
	return &identity{source: SourceSSO, verified: true, userID: userID,
		externalID: res.externalID, verifiedEmail: res.email}, nil
}

// check returns the outcome for an SSO token: cached, or from one call to
// the token-info URL shared by every concurrent check of the same token.
func (s *SSO) check(ctx context.Context, token string) (*ssoResult, *apiError) {
	digest := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
	now := s.tenant.now()
	if r, ok := s.cache.Get(digest); ok {
		if r.refused != nil {
			return nil, r.refused
		}
		if now.Before(time.Unix(r.exp, 0).Add(s.leeway)) {
			return r, nil
		}
		s.cache.Remove(digest)
		return nil, tokenError("the SSO token has expired")
	}
	ch := s.flight.DoChan(string(digest[:]), func() (any, error) {
		r := s.lookup(ctx, token)
		switch {
		case r.refused == nil:
			ttl := time.Unix(r.exp, 0).Sub(s.tenant.now())
			s.cache.AddFor(digest, r, ttl)
		case r.refused.Code == codeInvalidToken:
			s.cache.AddFor(digest, r, ssoFailureTTL)
		}
		return r, nil
	})
	select {
	case v := <-ch:
		r := v.Val.(*ssoResult)
		if r.refused != nil {
			return nil, r.refused
		}
		return r, nil
	case <-ctx.Done():
		return nil, errSSOUnavailable()
	}
}

// lookup calls the token-info URL once.
func (s *SSO) lookup(ctx context.Context, token string) *ssoResult {
	// The call is shared by every waiter: it must not die with the first
	// caller's request, only with its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(s.Timeout))
	defer cancel()
	form := url.Values{s.TokenParam: {token}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, strings.NewReader(form))
	if err != nil {
		return s.unavailable(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return s.unavailable(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenInfoBytes+1))
	switch {
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return s.unavailable(fmt.Errorf("token-info URL answered %d", resp.StatusCode))
	case resp.StatusCode != http.StatusOK:
		return s.refuse("the token-info endpoint refused the SSO token")
	case err != nil:
		return s.unavailable(err)
	case len(body) > maxTokenInfoBytes:
		return s.unavailable(errors.New("token-info answer larger than 64 KiB"))
	}
	var info tokenInfo
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&info); err != nil {
		return s.unavailable(fmt.Errorf("token-info answer is not the expected JSON: %v", err))
	}
	return s.judge(&info)
}

// judge checks a 200 answer.
func (s *SSO) judge(info *tokenInfo) *ssoResult {
	now := s.tenant.now()
	switch {
	case info.Active != nil && !bool(*info.Active):
		return s.refuse("the SSO token is not active")
	case !validHeaderValue(info.Sub, maxExternalIDLen):
		return s.refuse("the token-info answer has no usable sub")
	case !info.Aud.hasAny(s.Audience):
		return s.refuse("the SSO token was issued for another audience")
	case info.Exp == nil:
		return s.refuse("the token-info answer has no exp")
	case !now.Before(time.Unix(int64(*info.Exp), 0).Add(s.leeway)):
		return s.refuse("the SSO token has expired")
	case info.Iat != nil && now.Add(s.leeway).Before(time.Unix(int64(*info.Iat), 0)):
		return s.refuse("the SSO token was issued in the future")
	}
	r := &ssoResult{externalID: info.Sub, exp: int64(*info.Exp)}
	// An email counts as verified only when the answer says so.
	verifiedEmail := info.EmailVerified != nil && bool(*info.EmailVerified)
	if verifiedEmail && validHeaderValue(info.Email, maxEmailLen) && strings.Contains(info.Email, "@") {
		r.email = info.Email
	}
	ssoLookups.WithLabelValues(s.tenant.name, "valid").Inc()
	return r
}

func (s *SSO) refuse(why string) *ssoResult {
	ssoLookups.WithLabelValues(s.tenant.name, "refused").Inc()
	s.tenant.debug("SSO token refused", zap.String("reason", why))
	return &ssoResult{refused: tokenError(why)}
}

func (s *SSO) unavailable(err error) *ssoResult {
	ssoLookups.WithLabelValues(s.tenant.name, "unavailable").Inc()
	// The error names the URL, never the token (it travels in the body).
	if s.logs.allow(s.tenant.now(), time.Second) {
		s.tenant.logger.Warn("SSO token-info URL unavailable", zap.Error(err))
	}
	return &ssoResult{refused: errSSOUnavailable()}
}

// tokenInfo is a token-info answer, in the shapes seen in the field
// (Google's tokeninfo sends numbers and booleans as strings).
type tokenInfo struct {
	Sub           string       `json:"sub"`
	Aud           claimStrings `json:"aud"`
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
