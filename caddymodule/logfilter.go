package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/logging"
)

func init() {
	caddy.RegisterModule(LogEncoder{})
}

// LogEncoder is the log encoder "idlink": Caddy's filter encoder with the
// credential headers idlink reads replaced by "REDACTED" in the logged
// request, so an access log never holds a signature, a token, a session
// id or an API key. Caddy itself redacts only Cookie, Authorization and
// Proxy-Authorization. It takes the filter encoder's options (wrap, and
// more fields); in a Caddyfile the one line
//
//	log {
//		format idlink
//	}
//
// is enough. Like the filter encoder, it wraps json by default (console
// on a terminal).
type LogEncoder struct {
	logging.FilterEncoder
}

// logRedacted are the request headers LogEncoder redacts: every
// credential of the handler and of the API.
var logRedacted = append(append([]string{}, credentialHeaders...),
	hdrSessionID, hdrAPIKey, hdrAuthorization, "Cookie", "Proxy-Authorization")

// CaddyModule returns the Caddy module information.
func (LogEncoder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.logging.encoders.idlink",
		New: func() caddy.Module { return new(LogEncoder) },
	}
}

// Provision adds the credential filters to the configured ones, then
// provisions the filter encoder.
func (e *LogEncoder) Provision(ctx caddy.Context) error {
	if e.Fields == nil {
		e.Fields = map[string]logging.LogFieldFilter{}
	}
	for _, h := range logRedacted {
		e.Fields["request>headers>"+http.CanonicalHeaderKey(h)] = &logging.ReplaceFilter{Value: "REDACTED"}
	}
	// The install and session cookies idlink sets (Caddy redacts
	// Set-Cookie too, unless should_log_credentials).
	e.Fields["resp_headers>Set-Cookie"] = &logging.ReplaceFilter{Value: "REDACTED"}
	return e.FilterEncoder.Provision(ctx)
}

// Interface guards
var (
	_ caddy.Provisioner = (*LogEncoder)(nil)
)
