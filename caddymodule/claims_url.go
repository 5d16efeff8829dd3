package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/internal/lograte"
	"github.com/idlink/idlink/caddymodule/internal/spans"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// --- claims_url --------------------------------------------------------------

// ClaimsResolver is the customer backend's claims endpoint (claims_url),
// which idlink calls synchronously when it issues or refreshes a token: a
// POST of {"tenant", "user_id", "external_id"} (external_id null for an
// anonymous user) with the configured headers, answered 200
// {"claims": {...}} or 404 for a user the backend knows nothing of (no
// claims). Answers are cached per user for cache_ttl, in a cache bounded
// by the tenant's cache_size; concurrent lookups of one user share one
// call. No answer within the timeout, a network error, any other status,
// an answer that is not that JSON or a mapped claim that is not a scalar
// usable as a header value: 503 claims_unavailable with Retry-After, and
// no token is issued.
type ClaimsResolver struct {
	// URL is the endpoint. Required. Placeholders are replaced.
	URL string `json:"url"`

	// Headers are sent with every call, e.g. its own credential
	// (Authorization: Bearer {env.CLAIMS_TOKEN}). Placeholders are
	// replaced.
	Headers map[string]string `json:"headers,omitempty"`

	// Timeout bounds one call. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// CacheTTL is how long an answer is used before asking again.
	// Default: 1m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	tenant  *Tenant
	url     string
	headers http.Header
	client  *http.Client
	cache   *cache.Loader[string, map[string]string]
	logs    lograte.Limiter // unavailable resolver
}

func (c *ClaimsResolver) provision(t *Tenant) error {
	c.tenant = t
	repl := caddy.NewReplacer()
	u, err := repl.ReplaceOrErr(c.URL, true, true)
	if err != nil {
		return fmt.Errorf("claims_url: %v", err)
	}
	if _, err := outboundURL("claims_url", u, "its credential and answers can be read and changed in transit", t.logger); err != nil {
		return err
	}
	c.headers = http.Header{}
	for name, v := range c.Headers {
		if !validHeaderName(name) {
			return fmt.Errorf("claims_url header %q: not a valid header name", name)
		}
		val, err := repl.ReplaceOrErr(v, true, true)
		if err != nil {
			return fmt.Errorf("claims_url header %s: %v", name, err)
		}
		if !verify.HeaderValue(val, 8192) {
			return fmt.Errorf("claims_url header %s: the value is empty or holds control characters", name)
		}
		c.headers.Set(name, val)
	}
	if c.Timeout <= 0 {
		c.Timeout = caddy.Duration(defaultClaimsTimeout)
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = caddy.Duration(defaultClaimsCacheTTL)
	}
	c.url = u
	c.client = outboundClient(time.Duration(c.Timeout))
	c.cache = cache.NewLoader[string, map[string]string](t.CacheSize, time.Duration(c.CacheTTL), t.now,
		func(userID string) string { return userID })
	return nil
}

// claims returns the mapped claims the resolver answers for a user:
// cached, or from one call shared by every concurrent lookup of the user.
func (c *ClaimsResolver) claims(ctx context.Context, userID, externalID string) (map[string]string, error) {
	m, err := c.cache.Load(ctx, userID, func(ctx context.Context) (map[string]string, time.Duration, error) {
		ctx, span := spans.StartTenant(ctx, "idlink.claims_url", c.tenant.name)
		m, err := c.lookup(ctx, userID, externalID)
		if err != nil {
			spans.End(span, "unavailable", true)
		} else {
			spans.End(span, "ok", false)
		}
		if err != nil {
			claimsLookups.WithLabelValues(c.tenant.name, "unavailable").Inc()
			if c.logs.Allow(c.tenant.now(), time.Second) {
				c.tenant.logger.Warn("claims_url unavailable: no token is issued until it answers", zap.Error(err))
			}
		}
		return m, 0, err
	})
	if err != nil {
		return nil, errClaimsUnavailable()
	}
	return m, nil
}

// lookup calls the resolver once.
func (c *ClaimsResolver) lookup(ctx context.Context, userID, externalID string) (map[string]string, error) {
	// Shared by every waiter: it must not die with the first caller's
	// request, only with its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(c.Timeout))
	defer cancel()
	body := struct {
		Tenant     string  `json:"tenant"`
		UserID     string  `json:"user_id"`
		ExternalID *string `json:"external_id"`
	}{Tenant: c.tenant.name, UserID: userID}
	if externalID != "" {
		body.ExternalID = &externalID
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	for name, v := range c.headers {
		req.Header[name] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxClaimsAnswerBytes+1))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		claimsLookups.WithLabelValues(c.tenant.name, "none").Inc()
		return map[string]string{}, nil
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("claims_url answered %d", resp.StatusCode)
	case err != nil:
		return nil, err
	case len(raw) > maxClaimsAnswerBytes:
		return nil, errors.New("claims_url answer larger than 64 KiB")
	}
	var answer struct {
		Claims map[string]any `json:"claims"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil || answer.Claims == nil {
		return nil, errors.New(`claims_url answer is not {"claims": {...}}`)
	}
	out := map[string]string{}
	for _, n := range c.tenant.ContactToken.mapped {
		v, ok := answer.Claims[n]
		if !ok || v == nil {
			continue
		}
		s, ok := verify.ClaimString(v)
		if !ok || !verify.HeaderValue(s, verify.MaxClaimHeaderValue) {
			return nil, fmt.Errorf("claims_url answer: claim %q is not a string, number or boolean usable as a header value", n)
		}
		out[n] = s
	}
	claimsLookups.WithLabelValues(c.tenant.name, "found").Inc()
	return out, nil
}
