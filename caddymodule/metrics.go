package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idlink/idlink/caddymodule/internal/events"
	"github.com/idlink/idlink/caddymodule/store"
)

// registerMetrics registers the counters and this app's gauges with the
// config's registry.
func (a *App) registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		events.Metrics.Deliveries, events.Metrics.Retries, events.Metrics.DeadLetters, events.Metrics.Trimmed,
		jwksFetches, ssoLookups, claimsLookups,
		requestsTotal, sessionsTotal, linksTotal, cacheCollector{a},
		store.Metrics.Duration, store.Metrics.Errors,
		events.Gauges(func() map[string]*events.Outbox {
			m := make(map[string]*events.Outbox, len(a.Tenants))
			for name, t := range a.Tenants {
				m[name] = t.outbox
			}
			return m
		}, a.now),
	} {
		if err := reg.Register(c); err != nil {
			if are := (prometheus.AlreadyRegisteredError{}); !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
