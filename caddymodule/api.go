package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/rs/cors"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(API{})
}

// maxBodyBytes bounds every API request body.
const maxBodyBytes = 16 << 10

// API is the "idlink_api" HTTP handler: idlink's JSON API for one tenant,
// served at paths relative to where it is mounted. It answers every
// request itself and never calls the next handler. On a site guarded by
// idlink, mount the API through the handler instead (`idlink acme { api
// /idlink }`), which hands it the request before removing credentials;
// idlink_api is for sites that serve only the API (e.g. inside
// `handle_path /idlink/*` with no idlink in front).
//
// Endpoints: apiRoutes.
//
// Every error is {"error": "<code>", "message": "<sentence>"}: 400
// invalid_request, 401 invalid_api_key, 403 csrf_refused (cookies.go),
// 403 insufficient_scope, 403
// install_wrong_tenant, 403 session_unverified, 404 not_found, 404
// install_not_found, 404 user_not_found, 404 unknown_session, 405 method_not_allowed, 409 link_in_progress (with
// Retry-After), 413 body_too_large, 415 unsupported_media_type, 503
// store_unavailable (with Retry-After).
type API struct {
	// Tenant is the name of the tenant in the idlink app. Required.
	Tenant string `json:"tenant"`

	tenant *Tenant
	app    *App
	logger *zap.Logger
	mux    *http.ServeMux
	cors   *cors.Cors // nil: no cross-origin calls
}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idlink_api",
		New: func() caddy.Module { return new(API) },
	}
}

// apiRoutes is the API: every endpoint, as an http.ServeMux pattern, and
// the method that answers it (in the file of its concern).
var apiRoutes = map[string]func(a *API, w http.ResponseWriter, r *http.Request){
	"POST /installs":                            (*API).createInstall,       // links.go
	"POST /users/{install_id}/link":             (*API).link,                // links.go
	"GET /users/{user_id}":                      (*API).getUser,             // links.go
	"PUT /users/{user_id}/claims":               (*API).putClaims,           // claims.go
	"POST /sessions":                            (*API).startSession,        // login.go
	"DELETE /sessions/current":                  (*API).endCurrentSession,   // login.go
	"GET /sessions":                             (*API).listOwnSessions,     // sessions_manage.go
	"DELETE /sessions":                          (*API).endOwnSessions,      // sessions_manage.go
	"DELETE /sessions/{handle}":                 (*API).endOwnSession,       // sessions_manage.go
	"GET /users/{user_id}/sessions":             (*API).listUserSessions,    // sessions_manage.go
	"DELETE /users/{user_id}/sessions":          (*API).endUserSessions,     // sessions_manage.go
	"DELETE /users/{user_id}/sessions/{handle}": (*API).endUserSession,      // sessions_manage.go
	"POST /contact-token":                       (*API).refreshContactToken, // tokens_issue.go
	"GET /jwks.json":                            (*API).serveJWKS,           // jwks.go
	"GET /deadletters":                          (*API).listDeadLetters,     // deadletters.go
	"POST /deadletters/replay":                  (*API).replayDeadLetters,   // deadletters.go
	"POST /backchannel-logout":                  (*API).backchannelLogout,   // backchannel.go
}

// Provision finds the tenant and builds the routes.
func (a *API) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	appIface, err := ctx.App("idlink")
	if err != nil {
		return fmt.Errorf("loading idlink app: %v", err)
	}
	return a.provisionWith(appIface.(*App))
}

// provisionWith binds the API to a provisioned app and builds the routes.
func (a *API) provisionWith(app *App) (err error) {
	a.app = app
	if a.Tenant == "" {
		return fmt.Errorf("tenant is required")
	}
	if a.tenant, err = a.app.tenant(a.Tenant); err != nil {
		return err
	}
	if a.tenant.CORS != nil {
		a.cors = a.tenant.CORS.handler
	}
	a.mux = http.NewServeMux()
	for pattern, h := range apiRoutes {
		a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { h(a, w, r) })
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("idlink.tenant", a.Tenant)
	}
	if a.cors != nil {
		// Answers preflights itself; marks the answers of allowed origins.
		a.cors.ServeHTTP(w, r, a.route)
		return nil
	}
	a.route(w, r)
	return nil
}

// route answers a request by the route table.
func (a *API) route(w http.ResponseWriter, r *http.Request) {
	if _, pattern := a.mux.Handler(r); pattern == "" {
		writeError(w, a.unmatched(r))
		return
	}
	// Through the mux itself, so that r.PathValue is set.
	a.mux.ServeHTTP(w, r)
}

// unmatched tells a path that exists under another method from one that
// does not exist.
func (a *API) unmatched(r *http.Request) *apiError {
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut, http.MethodPatch} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := a.mux.Handler(probe); p != "" {
			return newError(http.StatusMethodNotAllowed, codeMethodNotAllowed, "this endpoint does not accept "+r.Method)
		}
	}
	return newError(http.StatusNotFound, codeNotFound, "no such endpoint")
}

// fail answers an error from the tenant's logic: an *apiError as it is,
// anything else as a store failure (503 with Retry-After; the cause is
// logged, never answered).
func (a *API) fail(w http.ResponseWriter, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae)
		return
	}
	a.tenant.id.LogStoreError(err)
	writeError(w, apierr.StoreUnavailable())
}

// readJSON decodes a JSON object body of at most maxBodyBytes into v.
func readJSON(w http.ResponseWriter, r *http.Request, v any) *apiError {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return newError(http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return newError(http.StatusRequestEntityTooLarge, "body_too_large",
				fmt.Sprintf("the body must be at most %d bytes", maxBodyBytes))
		}
		return apierr.InvalidRequest("the body could not be read")
	}
	if len(body) == 0 {
		return apierr.InvalidRequest("a JSON object body is required")
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	if err := dec.Decode(v); err != nil {
		return apierr.InvalidRequest("the body is not a valid JSON object of the expected shape")
	}
	// Only white space may follow (dec.More is false before a stray '}'
	// or ']', which a second Token call reports).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return apierr.InvalidRequest("the body holds more than one JSON value")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*API)(nil)
	_ caddyhttp.MiddlewareHandler = (*API)(nil)
)
