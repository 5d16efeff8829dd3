package caddymodule

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// SSO defaults and error codes.
const (
	defaultSSOTimeout    = 3 * time.Second
	defaultSSOLeeway     = 30 * time.Second
	defaultSSOTokenParam = "token"
)

// SSO lookups by tenant and outcome, exported as idlink_sso_lookups_total.
var ssoLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "idlink",
	Name:      "sso_lookups_total",
	Help:      "Calls to SSO token-info URLs by tenant and result (valid, refused, unavailable).",
}, []string{"tenant", "result"})

// SSO configures the check of a tenant's opaque SSO tokens (X-Sso-Token),
// done by verify.TokenInfo: it asks the
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
	v      *verify.TokenInfo
	logs   lograte.Limiter // unavailable token-info URL
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
	if s.Timeout <= 0 {
		s.Timeout = caddy.Duration(defaultSSOTimeout)
	}
	if s.Leeway <= 0 {
		s.Leeway = caddy.Duration(defaultSSOLeeway)
	}
	if s.TokenParam == "" {
		s.TokenParam = defaultSSOTokenParam
	}
	s.v, err = verify.NewTokenInfo(verify.TokenInfoConfig{
		URL: u, TokenParam: s.TokenParam, Audience: s.Audience,
		Timeout: time.Duration(s.Timeout), Leeway: time.Duration(s.Leeway),
		Client:    outboundClient(time.Duration(s.Timeout)),
		CacheSize: t.CacheSize, CacheTTL: time.Duration(t.CacheTTL), Now: t.now,
		Observe: func(result string) { ssoLookups.WithLabelValues(t.name, result).Inc() },
		Unavailable: func(err error) {
			if s.logs.Allow(t.now(), time.Second) {
				t.logger.Warn("SSO token-info URL unavailable", zap.Error(err))
			}
		},
	})
	if err != nil {
		return fmt.Errorf("sso: %v", err)
	}
	return nil
}
