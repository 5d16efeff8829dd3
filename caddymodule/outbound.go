package caddymodule

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"
)

// Calls idlink makes to URLs the operator configures: a JWKS, a token-info
// or claims endpoint, a webhook.

// outboundURL checks such a URL: absolute http or https, without fragment.
// A plain-http URL to a host other than loopback is logged with risk (what
// an attacker on the path could do), unless risk is empty.
func outboundURL(option, raw, risk string, logger *zap.Logger) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Fragment != "" {
		return nil, fmt.Errorf("%s %q: an absolute http(s) URL without fragment is required", option, raw)
	}
	if risk != "" && u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		logger.Warn(option+" is plain http: "+risk+"; use https", zap.String(option, raw))
	}
	return u, nil
}

func isLoopbackHost(h string) bool {
	return h == "localhost" || h == "127.0.0.1" || h == "::1"
}

// outboundClient is the HTTP client of such calls: each bounded by
// timeout, and never following a redirect (the URL is operator
// configuration: an answer elsewhere is not the one configured).
func outboundClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
