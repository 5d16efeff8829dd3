package caddymodule

import (
	"sort"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/internal/identity"
)

// Request outcomes besides the refusal codes (idlink_requests_total).
const (
	outcomeVerified    = "verified"     // accepted, verified
	outcomeUnverified  = "unverified"   // accepted, not verified (anonymous, install, off mode, ...)
	outcomeWouldRefuse = "would_refuse" // accepted by report mode; enforce would refuse it
	outcomeOther       = "other"        // a refusal code not in the list below
	platformUnknown    = "unknown"      // no platform, or one the tenant does not have
)

// requestOutcomes are the fixed values of the outcome label.
var requestOutcomes = []string{
	outcomeVerified, outcomeUnverified, outcomeWouldRefuse,
	apierr.CodeInvalidRequest, apierr.CodeInvalidSignature, apierr.CodeAuthRequired,
	apierr.CodeStoreUnavailable, apierr.CodeIdentityMismatch, apierr.CodeInvalidToken,
	apierr.CodeKeySourceUnavailable, apierr.CodeSSOUnavailable, apierr.CodeSessionEnded,
	apierr.CodeSessionUnverified, apierr.CodeUnknownSession, apierr.CodeUnknownInstall,
	apierr.CodeTooManyFailures, outcomeOther,
}

// requestSources are the fixed values of the source label.
var requestSources = []string{
	SourceContactToken, SourceHMAC, SourceSSO, SourceSession, SourceInstall, SourceAnonymous,
}

var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Name: "requests_total",
		Help: "Requests the idlink handler authenticated, by platform (a configured one or unknown), source (the credential that named the user, or for a refusal the strongest one presented) and outcome: verified, unverified, would_refuse (report mode let a failed signature pass: enforce would refuse it), or the refusal code.",
	}, []string{"tenant", "platform", "source", "outcome"})
	cacheRequestsDesc = prometheus.NewDesc("idlink_cache_requests_total",
		"Lookups of the tenant's in-process caches by cache and result (hit, miss), since the config loaded.",
		[]string{"tenant", "cache", "result"}, nil)
	sessionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Name: "sessions_total",
		Help: "Sessions started (reason verified, unverified) and ended by this instance (reason evicted, logged_out, revoked).",
	}, []string{"tenant", "event", "reason"})
	linksTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Name: "links_total",
		Help: "Links of an install to an external id (API link and login), by outcome: created, merged, linked, repeat, not_found, in_progress, error.",
	}, []string{"tenant", "outcome"})
)

// requestCounters are a tenant's idlink_requests_total series, indexed by
// (platform, source, outcome) and resolved on first use, so that counting
// a request costs an atomic load and an increment: no label lookup, no
// allocation. Series appear once they count something.
type requestCounters struct {
	tenant    string
	platforms []string       // the tenant's, sorted, then platformUnknown
	platform  map[string]int // name -> index in platforms
	outcome   map[string]int // outcome -> index in requestOutcomes
	slots     []atomic.Pointer[counterSlot]
}

type counterSlot struct{ c prometheus.Counter }

func newRequestCounters(tenant string, platforms []string) *requestCounters {
	sort.Strings(platforms)
	rc := &requestCounters{tenant: tenant, platform: map[string]int{}, outcome: map[string]int{}}
	for i, p := range platforms {
		rc.platform[p] = i
	}
	rc.platforms = append(platforms, platformUnknown)
	for i, o := range requestOutcomes {
		rc.outcome[o] = i
	}
	rc.slots = make([]atomic.Pointer[counterSlot], len(rc.platforms)*len(requestSources)*len(requestOutcomes))
	return rc
}

// inc counts one request.
func (rc *requestCounters) inc(platform, source, outcome string) {
	if rc == nil {
		return // a tenant not provisioned (tests that build one by hand)
	}
	p, ok := rc.platform[platform]
	if !ok {
		p = len(rc.platforms) - 1
	}
	s := sourceIndex(source)
	o, ok := rc.outcome[outcome]
	if !ok {
		o = len(requestOutcomes) - 1
	}
	i := (p*len(requestSources)+s)*len(requestOutcomes) + o
	slot := rc.slots[i].Load()
	if slot == nil {
		slot = &counterSlot{requestsTotal.WithLabelValues(rc.tenant, rc.platforms[p], requestSources[s], requestOutcomes[o])}
		rc.slots[i].Store(slot) // a racing store holds the same series
	}
	slot.c.Inc()
}

func sourceIndex(source string) int {
	for i, s := range requestSources {
		if s == source {
			return i
		}
	}
	return len(requestSources) - 1 // anonymous
}

// countAccepted counts a request the handler let through.
func (t *Tenant) countAccepted(c *identity.Credentials, id *identity.Identity) {
	outcome := outcomeUnverified
	switch {
	case id.WouldRefuse != "":
		outcome = outcomeWouldRefuse
	case id.Verified:
		outcome = outcomeVerified
	}
	t.requests.inc(t.id.PlatformOf(c), id.Source, outcome)
}

// countRefused counts a refused request under the strongest credential it
// presented.
func (t *Tenant) countRefused(c *identity.Credentials, code string) {
	t.requests.inc(t.id.PlatformOf(c), t.presentedSource(c), code)
}

// presentedSource is the credential a request leads with, in the order of
// precedence.
func (t *Tenant) presentedSource(c *identity.Credentials) string {
	switch {
	case c.ContactToken != "" || (c.Bearer != "" && t.ContactToken != nil):
		return SourceContactToken
	case c.ExternalID != "" && len(t.Platforms) > 0:
		return SourceHMAC
	case c.SSOToken != "":
		return SourceSSO
	case c.SessionID != "":
		return SourceSession
	case c.InstallID != "":
		return SourceInstall
	}
	return SourceAnonymous
}

// observer is what the tenant's domain tells its session and link
// counters.
func (t *Tenant) observer() identity.Observer {
	name := t.name
	return identity.Observer{
		Session: func(event, reason string, n int) {
			sessionsTotal.WithLabelValues(name, event, reason).Add(float64(n))
		},
		Link: func(outcome string) { linksTotal.WithLabelValues(name, outcome).Inc() },
	}
}

// cacheCollector reports the cache lookups of the app's tenants at
// scrape time, from the caches' own atomic counters.
type cacheCollector struct{ app *App }

func (c cacheCollector) Describe(ch chan<- *prometheus.Desc) { ch <- cacheRequestsDesc }

func (c cacheCollector) Collect(ch chan<- prometheus.Metric) {
	for name, t := range c.app.Tenants {
		if t == nil || t.id == nil {
			continue
		}
		t.id.CacheStats(func(cacheName string, s cache.Stats) {
			ch <- prometheus.MustNewConstMetric(cacheRequestsDesc, prometheus.CounterValue, float64(s.Hits), name, cacheName, "hit")
			ch <- prometheus.MustNewConstMetric(cacheRequestsDesc, prometheus.CounterValue, float64(s.Misses), name, cacheName, "miss")
		})
	}
}
