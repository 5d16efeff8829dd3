package caddymodule

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
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
	Help: "Checks of SSO tokens against token-info URLs by tenant and result (valid, refused, unavailable, " +
		"client_refused: the provider refused idlink's client credentials, busy: max_concurrent reached, no call).",
}, []string{"tenant", "result"})

// SSO configures the check of a tenant's opaque SSO tokens (X-Sso-Token),
// done by verify.TokenInfo: it asks the
// customer's token-info URL, as the seed's tokenInfoURL does: a POST of
// the form `<token_param>=<token>`, answered 200 with JSON
// {sub, aud, exp, iat, email, ...} for a valid token. With client_id and
// client_secret (or bearer_token) the URL is an RFC 7662 introspection
// endpoint and the POST authenticates idlink (auth_method).
//
// A wrong aud, an exp in the past, an iat in the future or active false
// is 401 invalid_token, and so is a non-200 answer of a token-info URL
// without client authentication. No answer within the timeout, a network
// error, a 5xx or 429, max_concurrent calls already in flight, or a
// refusal of idlink's own request (its credentials; with client
// authentication, any non-200) is 503 sso_unavailable. Valid answers are
// cached until their exp (bounded by the tenant's cache_ttl), refusals for
// 10s, the rest not at all; concurrent checks of one token share one call.
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

	// ClientID and ClientSecret authenticate idlink to an introspection
	// endpoint (RFC 7662 §2.1). Use {env.*} or {file.*} placeholders:
	// they are replaced at provision time.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`

	// AuthMethod is how they are sent: client_secret_basic (RFC 6749
	// §2.3.1), client_secret_post (in the form), bearer (BearerToken in
	// Authorization) or none. Default: client_secret_basic with a
	// client_id, bearer with a bearer_token, else none.
	AuthMethod string `json:"auth_method,omitempty"`

	// BearerToken is idlink's own token for auth_method bearer;
	// placeholders replaced at provision time.
	BearerToken string `json:"bearer_token,omitempty"`

	// TokenTypeHint, if set, is sent as token_type_hint (RFC 7662 §2.1),
	// e.g. access_token.
	TokenTypeHint string `json:"token_type_hint,omitempty"`

	// MaxConcurrent bounds the tenant's token-info calls in flight; a
	// check beyond it is answered 503 sso_unavailable at once, so a flood
	// of unknown tokens cannot turn idlink against the provider.
	// Default: 64.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	tenant *Tenant
	v      *verify.TokenInfo
	logs   lograte.Limiter // unavailable token-info URL
	refuse lograte.Limiter // the provider refuses idlink's credentials
	busy   lograte.Limiter // max_concurrent reached
}

// clientAuth is the client authentication the options ask for, the
// method defaulted, its values as written (placeholders not replaced).
func (s *SSO) clientAuth() (verify.ClientAuth, error) {
	a := verify.ClientAuth{Method: s.AuthMethod, ClientID: s.ClientID, ClientSecret: s.ClientSecret, BearerToken: s.BearerToken}
	switch {
	case a.Method != "":
	case a.ClientID != "" || a.ClientSecret != "":
		a.Method = verify.AuthBasic
	case a.BearerToken != "":
		a.Method = verify.AuthBearer
	default:
		a.Method = verify.AuthNone
	}
	if s.AuthMethod == "" && a.ClientSecret != "" && a.ClientID == "" {
		return a, errors.New("sso client_secret needs client_id")
	}
	if s.MaxConcurrent < 0 {
		return a, errors.New("sso max_concurrent must be positive")
	}
	if err := a.Check(); err != nil {
		return a, fmt.Errorf("sso: %v", err)
	}
	return a, nil
}

// resolveAuth replaces the placeholders of a's credentials; an unknown or
// empty one is an error that names the option, never a value.
func resolveAuth(a verify.ClientAuth) (verify.ClientAuth, error) {
	repl := caddy.NewReplacer()
	for _, f := range []struct {
		option string
		v      *string
	}{{"client_id", &a.ClientID}, {"client_secret", &a.ClientSecret}, {"bearer_token", &a.BearerToken}} {
		if *f.v == "" {
			continue
		}
		v, err := repl.ReplaceOrErr(*f.v, true, true)
		if err != nil {
			return a, fmt.Errorf("sso %s: %v", f.option, err)
		}
		*f.v = v
	}
	if err := a.Check(); err != nil {
		return a, fmt.Errorf("sso: %v", err)
	}
	return a, nil
}

// tokenInfoURL checks the token_info_url: it must not carry credentials
// (they would reach logs and errors as part of the URL), and the errors
// never show it when it might.
func tokenInfoURL(raw, risk string, logger *zap.Logger) error {
	u, err := url.Parse(raw)
	if err != nil {
		if strings.Contains(raw, "@") {
			return errors.New("sso token_info_url is not a URL")
		}
		return fmt.Errorf("sso token_info_url %q: an absolute http(s) URL without fragment is required", raw)
	}
	if u.User != nil {
		return errors.New("sso token_info_url must not carry credentials (user:password@host): " +
			"use client_id and client_secret (or bearer_token) instead")
	}
	_, err = outboundURL("sso token_info_url", raw, risk, logger)
	return err
}

func (s *SSO) provision(t *Tenant) error {
	s.tenant = t
	u, err := caddy.NewReplacer().ReplaceOrErr(s.TokenInfoURL, true, true)
	if err != nil {
		return fmt.Errorf("sso token_info_url: %v", err)
	}
	auth, err := s.clientAuth()
	if err != nil {
		return err
	}
	risk := "tokens sent over it can be read in transit"
	if auth.Method != verify.AuthNone {
		risk = "tokens and idlink's client credentials sent over it can be read in transit"
	}
	if err := tokenInfoURL(u, risk, t.logger); err != nil {
		return err
	}
	if auth, err = resolveAuth(auth); err != nil {
		return err
	}
	if s.MaxConcurrent == 0 {
		s.MaxConcurrent = verify.DefaultMaxConcurrent
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
		Auth: auth, TokenTypeHint: s.TokenTypeHint, MaxConcurrent: s.MaxConcurrent,
		Timeout: time.Duration(s.Timeout), Leeway: time.Duration(s.Leeway),
		Client:    outboundClient(time.Duration(s.Timeout)),
		CacheSize: t.CacheSize, CacheTTL: time.Duration(t.CacheTTL), Now: t.now,
		Observe: func(result string) { ssoLookups.WithLabelValues(t.name, result).Inc() },
		Unavailable: func(err error) {
			switch {
			case errors.Is(err, verify.ErrClientRefused):
				if s.refuse.Allow(t.now(), time.Second) {
					t.logger.Warn("SSO token-info URL refuses idlink's client credentials; answering 503 sso_unavailable",
						zap.Error(err))
				}
			case errors.Is(err, verify.ErrBusy):
				if s.busy.Allow(t.now(), time.Second) {
					t.logger.Warn("SSO token-info calls at max_concurrent; answering 503 sso_unavailable",
						zap.Int("max_concurrent", s.MaxConcurrent))
				}
			default:
				if s.logs.Allow(t.now(), time.Second) {
					t.logger.Warn("SSO token-info URL unavailable", zap.Error(err))
				}
			}
		},
	})
	if err != nil {
		return fmt.Errorf("sso: %v", err)
	}
	return nil
}
