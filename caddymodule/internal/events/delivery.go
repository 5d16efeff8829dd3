package events

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/webhook"
)

// Delivery of a tenant's events to its webhook: the loop that takes them
// from the outbox shards, one attempt, and what follows it (acknowledged,
// retried or dead-lettered). The upkeep is in outbox.go.

// deliverLoop takes events from the tenant's 16 outbox shards and hands
// them to Concurrency workers, until ctx is done; then it lets running
// attempts finish for stopGrace, and releases what it still holds so that
// another instance takes it at once.
//
// It reads without BLOCK: one short script per shard and round, round-robin
// over the shards, going again at once while events flow and waiting up to
// PollInterval when idle. No connection is ever parked in a blocking read,
// so the store's connection pool stays free for requests.
func (o *Outbox) deliverLoop(ctx context.Context) {
	w := o.wh
	defer o.client.CloseIdleConnections()
	for shard := range store.Shards {
		err := o.call(ctx, func(ctx context.Context) error { return o.cfg.Store.EnsureEventsGroup(ctx, o.cfg.Keys, shard) })
		if err != nil && ctx.Err() == nil {
			// The first fetch creates it as well.
			o.cfg.StoreError(err)
			break
		}
	}

	attemptCtx, cancelAttempts := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAttempts()
	jobs := make(chan store.OutboxEntry)
	var workers sync.WaitGroup
	for range w.Concurrency {
		workers.Go(func() {
			for e := range jobs {
				o.deliver(attemptCtx, &e)
				o.inflight.Add(-1)
				select {
				case o.wake <- struct{}{}:
				default:
				}
			}
		})
	}
	defer func() {
		close(jobs)
		grace := time.AfterFunc(o.StopGrace, cancelAttempts)
		workers.Wait()
		grace.Stop()
	}()

	next, delay := 0, o.PollMin
	for {
		if o.gone.Load() {
			// 410 Gone: nothing more until the config is reloaded.
			<-ctx.Done()
			return
		}
		limit := int32(w.Concurrency)
		if o.failures.Load() >= breakerFailures {
			limit = 1 // the receiver is failing: one probe at a time
		}
		free := int(limit - o.inflight.Load())
		now := o.cfg.Now()
		if o.heldAt(now) {
			free = 0 // the receiver asked to be left alone (Retry-After)
		}
		fetched, storeErr := 0, false
		if free > 0 {
			lease := now.Add(w.ClaimAfter)
			for i := 0; i < store.Shards && free > 0; i++ {
				shard := (next + i) % store.Shards
				var entries []store.OutboxEntry
				err := o.call(ctx, func(ctx context.Context) (err error) {
					entries, err = o.cfg.Store.FetchEvents(ctx, o.cfg.Keys, shard, o.consumer, now, lease, free, true)
					return err
				})
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					// Other shards may live on nodes that answer.
					o.cfg.StoreError(err)
					storeErr = true
					continue
				}
				for _, e := range entries {
					o.inflight.Add(1)
					jobs <- e
				}
				fetched += len(entries)
				free -= len(entries)
			}
			next = (next + 1) % store.Shards
		}
		var wait time.Duration
		switch {
		case storeErr:
			wait, delay = delay, min(2*delay, w.PollInterval)
		case free <= 0:
			// Busy: go again when a worker is free.
			wait, delay = w.PollInterval, o.PollMin
		case fetched > 0:
			wait, delay = o.PollMin, o.PollMin
		default:
			wait, delay = delay, min(2*delay, w.PollInterval)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-o.wake:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// deliver makes one attempt at delivering e, then acknowledges it, or
// schedules its retry, or moves it to the dead letters.
func (o *Outbox) deliver(ctx context.Context, e *store.OutboxEntry) {
	w := o.wh
	if now := o.cfg.Now(); o.gone.Load() || o.heldAt(now) {
		// Taken just before the receiver asked for a pause or said it is
		// gone: give it back, due when the pause ends.
		at := now
		if !o.gone.Load() {
			at = time.Unix(0, o.holdUntil.Load())
		}
		o.finish(func(ctx context.Context) error {
			_, err := o.cfg.Store.RescheduleEvent(ctx, o.cfg.Keys, e, at)
			return err
		})
		return
	}
	if e.Attempts > 1 {
		Metrics.Retries.WithLabelValues(o.cfg.Tenant).Inc()
	}
	body, err := o.payload(e)
	if err != nil {
		o.deadLetter(e, ReasonMalformed, err.Error())
		return
	}
	out := o.post(ctx, e.EventID(), body)
	result, lastErr := out.result, out.lastErr
	if result != resultDelivered && ctx.Err() != nil {
		// Stopping: not the receiver's fault. Release the event so that
		// another instance takes it now rather than when the lease ends.
		o.finish(func(ctx context.Context) error {
			_, err := o.cfg.Store.RescheduleEvent(ctx, o.cfg.Keys, e, o.cfg.Now())
			return err
		})
		return
	}
	Metrics.Deliveries.WithLabelValues(o.cfg.Tenant, result).Inc()
	if result == resultDelivered {
		o.failures.Store(0)
		o.finish(func(ctx context.Context) error { return o.cfg.Store.AckEvent(ctx, o.cfg.Keys, e.Shard, e.ID) })
		return
	}

	// Failed. While the receiver keeps failing, attempts go one at a time.
	now := o.cfg.Now()
	o.failures.Add(1)
	o.debugDelivery("webhook attempt failed", e, lastErr)
	age := now.Sub(store.EntryTime(e.ID))
	if out.status == http.StatusGone {
		o.deadLetter(e, ReasonGone, lastErr)
		o.disable(e)
		return
	}
	var retryAfter time.Duration
	if out.retryAfter > 0 {
		retryAfter = min(out.retryAfter, w.BackoffMax)
		o.hold(now.Add(retryAfter))
	}
	switch {
	case e.Attempts >= w.MaxAttempts:
		o.deadLetter(e, ReasonMaxAttempts, lastErr)
	case age >= w.MaxAge:
		o.deadLetter(e, ReasonMaxAge, lastErr)
	default:
		retryAt := now.Add(max(o.Backoff(e.Attempts), retryAfter))
		o.finish(func(ctx context.Context) error {
			_, err := o.cfg.Store.RescheduleEvent(ctx, o.cfg.Keys, e, retryAt)
			return err
		})
	}
}

func (o *Outbox) deadLetter(e *store.OutboxEntry, reason, lastErr string) {
	var id string
	o.finish(func(ctx context.Context) (err error) {
		id, err = o.cfg.Store.DeadLetterEvent(ctx, o.cfg.Keys, e, reason, lastErr, o.cfg.Now())
		return err
	})
	if id == "" {
		return // lease lost or store down: the event stays in the outbox
	}
	Metrics.DeadLetters.WithLabelValues(o.cfg.Tenant, reason).Inc()
	if o.warnNow() {
		o.Logger.Warn("webhook event moved to the dead letters",
			zap.String("event_id", e.EventID()), zap.String("deadletter_id", id), zap.String("reason", reason),
			zap.Int("attempts", e.Attempts), zap.String("last_error", lastErr), zap.String("webhook", o.origin))
	}
}

// hold pauses delivery until t (on the config's clock), or later if an
// earlier answer asked for longer.
func (o *Outbox) hold(t time.Time) {
	for {
		cur := o.holdUntil.Load()
		if t.UnixNano() <= cur || o.holdUntil.CompareAndSwap(cur, t.UnixNano()) {
			return
		}
	}
}

// heldAt reports whether delivery is paused at now by a Retry-After.
func (o *Outbox) heldAt(now time.Time) bool {
	return now.UnixNano() < o.holdUntil.Load()
}

// disable stops this instance's deliveries to the webhook after it
// answered 410 Gone to e, and says so once: the Standard Webhooks
// recommendation for an endpoint that wants no more events. Events stay in
// the outbox (the oldest-pending gauge grows); a config reload starts
// delivering again.
func (o *Outbox) disable(e *store.OutboxEntry) {
	if o.gone.CompareAndSwap(false, true) {
		o.Logger.Warn("webhook answered 410 Gone: this instance delivers no more events to it until the config is reloaded",
			zap.String("event_id", e.EventID()), zap.String("webhook", o.origin))
	}
}

// finish runs a store step that concludes an attempt, retrying it briefly
// (within the lease) if the store fails: if it never succeeds, the event
// is simply attempted again once its lease ends.
func (o *Outbox) finish(step func(ctx context.Context) error) {
	var err error
	for i := range 3 {
		if i > 0 {
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
		}
		if err = o.call(context.Background(), step); err == nil {
			return
		}
	}
	o.cfg.StoreError(err)
}

// call runs one store call of the events work in one of the app's
// eventsRedisSlots.
func (o *Outbox) call(ctx context.Context, fn func(ctx context.Context) error) error {
	select {
	case o.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-o.slots }()
	return fn(ctx)
}

// warnNow rate-limits delivery warnings to one a minute per tenant.
func (o *Outbox) warnNow() bool {
	return o.warns.Allow(o.cfg.Now(), time.Minute)
}

func (o *Outbox) debugDelivery(msg string, e *store.OutboxEntry, lastErr string) {
	if ce := o.Logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(zap.String("event_id", e.EventID()), zap.Int("attempt", e.Attempts), zap.String("error", lastErr))
	}
}

// payload is the JSON body of an event.
func (o *Outbox) payload(e *store.OutboxEntry) ([]byte, error) {
	typ, data := e.Fields[store.FieldType], e.Fields[store.FieldData]
	ms, err := strconv.ParseInt(e.Fields[store.FieldOccurredAt], 10, 64)
	if typ == "" || err != nil || !json.Valid([]byte(data)) || !strings.HasPrefix(strings.TrimSpace(data), "{") {
		return nil, errors.New("outbox entry without a type, an occurred_at in unix ms, or a JSON object as data")
	}
	return json.Marshal(webhook.Event{
		ID:         e.EventID(),
		Type:       typ,
		Tenant:     o.cfg.Tenant,
		OccurredAt: time.UnixMilli(ms).UTC(),
		Data:       json.RawMessage(data),
	})
}
