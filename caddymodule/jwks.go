package caddymodule

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// JWKS fetch counters, exported to Prometheus through the metrics
// registry of the Caddy context (App.registerMetrics) as
// idlink_jwks_fetches_total.
var jwksFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "idlink",
	Name:      "jwks_fetches_total",
	Help:      "JWKS fetches by tenant and result (success, failure).",
}, []string{"tenant", "result"})

// serveJWKS answers GET /jwks.json: the public keys of the tenant's
// signing keys, the current one first, the previous ones kept for
// overlap while tokens they signed may still be live. A tenant that does
// not issue tokens publishes an empty set.
func (a *API) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	t := a.tenant
	body := []byte(`{"keys":[]}`)
	if t.ContactToken != nil && t.ContactToken.v.Issues() {
		body = t.ContactToken.v.JWKS()
	}
	h := w.Header()
	h.Set(headerContentType, contentTypeJSON)
	h.Set(headerCacheControl, "public, max-age=300")
	h.Set(headerContentTypeOpts, contentTypeOptsNoSniff)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}
