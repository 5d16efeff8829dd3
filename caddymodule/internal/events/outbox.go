package events

import (
	"context"
	mrand "math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/store"
)

// The outbox cap policy. Undelivered events are never dropped silently:
//
//   - A tenant with a webhook keeps every event until the webhook
//     acknowledged it; acknowledged ones are trimmed at the next upkeep.
//     An event that keeps failing leaves the outbox only for the dead
//     letters (after max_attempts or max_age), so the outbox holds at most
//     about max_age of events, however long the receiver is down. Dead
//     letters are kept until replayed (the idlink_webhook_dead_letters
//     gauge shows how many).
//   - A tenant without a webhook keeps its events for events_retention
//     (default 7 days), for a webhook configured later, or a consumer of
//     its own reading the streams; older ones are trimmed.
//   - events_retention set on a tenant with a webhook trims even events not
//     yet delivered once they are that old; each one is counted in
//     idlink_events_trimmed_total{reason="retention"} and logged.

// maintainLoop keeps the tenant's outbox shards trimmed by the policy and
// measures them for the gauges, every maintainEvery (with jitter) until ctx
// is done. Every instance does it; it is idempotent.
func (o *Outbox) maintainLoop(ctx context.Context) {
	for {
		o.maintain(ctx)
		d := o.MaintainEvery
		timer := time.NewTimer(d - d/5 + time.Duration(mrand.Int64N(int64(d/5)+1)))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// maintain runs the upkeep once over the tenant's shards.
func (o *Outbox) maintain(ctx context.Context) {
	opts := store.MaintainOptions{
		TrimAcked:    true,
		Retention:    o.cfg.Retention,
		Consumer:     o.consumer,
		ConsumerIdle: consumerIdle,
		Now:          o.cfg.Now(),
	}
	if opts.Retention == 0 && o.wh == nil {
		opts.Retention = DefaultRetention
	}
	if o.wh != nil {
		opts.OrphanIdle = 2 * o.wh.ClaimAfter
	} else {
		opts.OrphanIdle = consumerIdle
	}
	var oldest, dead, length, dropped int64
	for shard := range store.Shards {
		var st store.OutboxStats
		err := o.call(ctx, func(ctx context.Context) (err error) {
			st, err = o.cfg.Store.MaintainOutbox(ctx, o.cfg.Keys, shard, opts)
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				o.cfg.StoreError(err)
			}
			return // keep the last measures
		}
		if ms := st.Oldest.UnixMilli(); !st.Oldest.IsZero() && (oldest == 0 || ms < oldest) {
			oldest = ms
		}
		dead += st.DeadLetters
		length += st.Length
		if st.AckedTrimmed > 0 {
			Metrics.Trimmed.WithLabelValues(o.cfg.Tenant, "acknowledged").Add(float64(st.AckedTrimmed))
		}
		if st.RetentionTrimmed > 0 {
			Metrics.Trimmed.WithLabelValues(o.cfg.Tenant, "retention").Add(float64(st.RetentionTrimmed))
			if st.Group {
				dropped += st.RetentionTrimmed
			}
		}
	}
	o.oldest.Store(oldest)
	o.deadLetters.Store(dead)
	o.length.Store(length)
	if dropped > 0 {
		o.Logger.Warn("events_retention trimmed events the webhook had not acknowledged",
			zap.Int64("events", dropped), zap.Duration("events_retention", opts.Retention))
	}
}
