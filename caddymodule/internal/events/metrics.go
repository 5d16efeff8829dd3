package events

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the events' counters. They live for the process and are
// registered with the metrics registry of every config that loads (Caddy
// makes a new registry per config), so a reload neither resets them nor
// registers anything twice.
var Metrics = struct {
	Deliveries  *prometheus.CounterVec
	Retries     *prometheus.CounterVec
	DeadLetters *prometheus.CounterVec
	Trimmed     *prometheus.CounterVec
}{
	Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "webhook", Name: "deliveries_total",
		Help: "Webhook delivery attempts by result: delivered (2xx), rejected (another status), error (no answer).",
	}, []string{"tenant", "result"}),
	Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "webhook", Name: "retries_total",
		Help: "Webhook delivery attempts that were retries of an earlier failed one.",
	}, []string{"tenant"}),
	DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "webhook", Name: "dead_letters_total",
		Help: "Events moved to the dead letters, by reason: max_attempts, max_age, malformed, gone (the receiver answered 410).",
	}, []string{"tenant", "reason"}),
	Trimmed: prometheus.NewCounterVec(prometheus.CounterOpts{
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
	disabledDesc = prometheus.NewDesc("idlink_webhook_disabled",
		"1 once the tenant's webhook answered 410 Gone: this instance delivers no more events to it until the config is reloaded.", []string{"tenant"}, nil)
)

// Gauges reports the gauges of the outboxes (by tenant) that outboxes
// returns, as last measured by their upkeep. Register it with a config's
// own registry, so that the tenants of an unloaded config disappear with
// it.
func Gauges(outboxes func() map[string]*Outbox, now func() time.Time) prometheus.Collector {
	return gauges{outboxes, now}
}

type gauges struct {
	outboxes func() map[string]*Outbox
	now      func() time.Time
}

func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- oldestPendingDesc
	ch <- deadLettersDesc
	ch <- outboxLengthDesc
	ch <- disabledDesc
}

func (g gauges) Collect(ch chan<- prometheus.Metric) {
	now := g.now()
	for name, o := range g.outboxes() {
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
		disabled := 0.0
		if o.gone.Load() {
			disabled = 1
		}
		ch <- prometheus.MustNewConstMetric(disabledDesc, prometheus.GaugeValue, disabled, name)
	}
}
