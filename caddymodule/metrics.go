package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// eventMetrics are idlink's counters. They live for the process and are
// registered with the metrics registry of every config that loads (Caddy
// makes a new registry per config), so a reload neither resets them nor
// registers anything twice.
var eventMetrics = struct {
	deliveries  *prometheus.CounterVec
	retries     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	trimmed     *prometheus.CounterVec
}{
	deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "webhook", Name: "deliveries_total",
		Help: "Webhook delivery attempts by result: delivered (2xx), rejected (another status), error (no answer).",
	}, []string{"tenant", "result"}),
	retries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "webhook", Name: "retries_total",
		Help: "Webhook delivery attempts that were retries of an earlier failed one.",
	}, []string{"tenant"}),
	deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "webhook", Name: "dead_letters_total",
		Help: "Events moved to the dead letters, by reason: max_attempts, max_age, malformed.",
	}, []string{"tenant", "reason"}),
	trimmed: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "events", Name: "trimmed_total",
		Help: "Outbox entries trimmed, by reason: acknowledged (delivered), retention (older than events_retention, delivered or not).",
	}, []string{"tenant", "reason"}),
}

var (
	oldestPendingDesc = prometheus.NewDesc("idlink_webhook_oldest_pending_seconds",
		"Age of the oldest event of the tenant not yet delivered to its webhook (0 if none).", []string{"tenant"}, nil)
	deadLettersDesc = prometheus.NewDesc("idlink_webhook_dead_letters",
		"Dead letters the tenant holds.", []string{"tenant"}, nil)
	outboxLengthDesc = prometheus.NewDesc("idlink_events_outbox_entries",
		"Entries in the tenant's outbox streams.", []string{"tenant"}, nil)
)

// registerMetrics registers the counters and this app's gauges with the
// config's registry.
func (a *App) registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		eventMetrics.deliveries, eventMetrics.retries, eventMetrics.deadLetters, eventMetrics.trimmed,
		jwksFetches, ssoLookups, claimsLookups,
		appGauges{a},
	} {
		if err := reg.Register(c); err != nil {
			if are := (prometheus.AlreadyRegisteredError{}); !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// appGauges reports the gauges of one app's tenants, as last measured by
// the outbox upkeep. It is registered with the config's own registry, so
// that tenants of an unloaded config disappear with it.
type appGauges struct{ a *App }

func (g appGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- oldestPendingDesc
	ch <- deadLettersDesc
	ch <- outboxLengthDesc
}

func (g appGauges) Collect(ch chan<- prometheus.Metric) {
	now := g.a.now()
	for name, t := range g.a.Tenants {
		o := t.outbox
		if o == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(outboxLengthDesc, prometheus.GaugeValue, float64(o.length.Load()), name)
		ch <- prometheus.MustNewConstMetric(deadLettersDesc, prometheus.GaugeValue, float64(o.deadLetters.Load()), name)
		if o.wh == nil {
			continue
		}
		age := 0.0
		if ms := o.oldest.Load(); ms > 0 {
			age = max(0, now.Sub(time.UnixMilli(ms)).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(oldestPendingDesc, prometheus.GaugeValue, age, name)
	}
}
