// Package events delivers a tenant's events to its webhook and keeps its
// outbox streams: the engine, without Caddy. The outbox itself (the
// streams, the schedule, the dead letters) is the store's.
package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
	"github.com/idlink/idlink/caddymodule/store"
)

// Limits of the outbox.
const (
	// DefaultRetention is how long a tenant without a webhook keeps its
	// events.
	DefaultRetention = 7 * 24 * time.Hour
	// eventsRedisSlots bounds the store calls the events work of one app
	// makes at a time (all tenants together), so that it never holds more
	// than that many connections of the pool the request path uses.
	eventsRedisSlots = 4
	// breakerFailures consecutive failed attempts put delivery in probe
	// mode: one attempt at a time until one succeeds.
	breakerFailures = 3
)

// Tunables that are not configuration (tests shorten them: Tuning).
const (
	MaintainInterval = 15 * time.Second // outbox trim, consumer clean-up, gauges
	consumerIdle     = time.Hour        // stopped instances' consumers are deleted after that
	stopGrace        = 2 * time.Second  // how long running deliveries may finish after Stop
	errorBodyBytes   = 200              // of a receiver's error answer kept as the last error
	drainBodyBytes   = 64 << 10         // of a receiver's answer read to reuse the connection
)

// Dead-letter reasons.
const (
	ReasonMaxAttempts = "max_attempts"
	ReasonMaxAge      = "max_age"
	ReasonMalformed   = "malformed"
	ReasonGone        = "gone" // the receiver answered 410 Gone
)

// Formats of a delivery: its headers and how it is signed (see package
// webhook).
const (
	// FormatStandard is Standard Webhooks: webhook-id, webhook-timestamp,
	// webhook-signature, signed with the Keys.
	FormatStandard = "standard"
	// FormatIdlink is idlink's own: Idlink-Event-Id, Idlink-Signature,
	// signed with the Secrets.
	FormatIdlink = "idlink"
)

// Webhook is where a tenant's events are delivered, with its defaults
// applied (see the module's Webhook for each option).
type Webhook struct {
	URL          string // absolute http(s), checked by the caller
	Format       string // FormatStandard or FormatIdlink
	Secrets      []string
	Keys         [][]byte // FormatStandard: the decoded Secrets
	MaxAttempts  int
	MaxAge       time.Duration
	Timeout      time.Duration
	Concurrency  int
	BackoffBase  time.Duration // the wait after the first failed attempt, doubled after each next one
	BackoffMax   time.Duration
	PollInterval time.Duration
	ClaimAfter   time.Duration
}

// Store is what the engine needs of the store.
type Store interface {
	EnsureEventsGroup(ctx context.Context, k *store.Keys, shard int) error
	FetchEvents(ctx context.Context, k *store.Keys, shard int, consumer string, now, lease time.Time, n int, claim bool) ([]store.OutboxEntry, error)
	RescheduleEvent(ctx context.Context, k *store.Keys, e *store.OutboxEntry, at time.Time) (bool, error)
	AckEvent(ctx context.Context, k *store.Keys, shard int, id string) error
	DeadLetterEvent(ctx context.Context, k *store.Keys, e *store.OutboxEntry, reason, lastErr string, now time.Time) (string, error)
	MaintainOutbox(ctx context.Context, k *store.Keys, shard int, o store.MaintainOptions) (store.OutboxStats, error)
}

// Config is one tenant's events work.
type Config struct {
	Tenant string
	Keys   *store.Keys
	Store  Store
	// Webhook is nil for a tenant without one: upkeep only.
	Webhook *Webhook
	// Retention trims events older than that (0: the default for tenants
	// without a webhook, none for the others).
	Retention time.Duration
	Now       func() time.Time
	Logger    *zap.Logger
	// StoreError hears every store failure (it rate-limits its own log).
	StoreError func(error)
}

// Tuning holds what tests shorten; New sets the production values.
type Tuning struct {
	PollMin       time.Duration // the least wait between two rounds
	MaintainEvery time.Duration
	StopGrace     time.Duration
	Backoff       func(attempt int) time.Duration // the wait after the attempt-th failed attempt
}

// Outbox is a tenant's events machinery: delivery to its webhook (if
// any), and upkeep of its outbox streams.
type Outbox struct {
	Tuning
	// Logger is the tenant's logger.
	Logger *zap.Logger

	cfg      Config
	wh       *Webhook // nil: no delivery, upkeep only
	client   *http.Client
	origin   string // scheme://host of the webhook, for logs (its URL may hold a token)
	consumer string
	slots    chan struct{} // shared by the app's tenants: see eventsRedisSlots

	inflight atomic.Int32
	failures atomic.Int32    // consecutive failed attempts
	warns    lograte.Limiter // delivery warnings
	wake     chan struct{}
	// holdUntil (unix ns on the config's clock) pauses delivery while the
	// receiver asked for it with Retry-After; gone stops it after a 410.
	holdUntil atomic.Int64
	gone      atomic.Bool

	// Measured by the upkeep, read by the metrics collector.
	oldest      atomic.Int64 // unix ms of the oldest undelivered event; 0: none
	deadLetters atomic.Int64
	length      atomic.Int64
}

// New returns the events machinery of cfg.
func New(cfg Config) *Outbox {
	o := &Outbox{cfg: cfg, wh: cfg.Webhook, Logger: cfg.Logger, wake: make(chan struct{}, 1),
		Tuning: Tuning{MaintainEvery: MaintainInterval, StopGrace: stopGrace}}
	if w := o.wh; w != nil {
		if u, err := url.Parse(w.URL); err == nil {
			o.origin = u.Scheme + "://" + u.Host
		}
		o.Backoff = func(attempt int) time.Duration {
			return Jittered(BackoffDelay(w.BackoffBase, w.BackoffMax, attempt), mrand.Float64())
		}
		o.PollMin = max(w.PollInterval/20, 5*time.Millisecond)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = w.Concurrency
		o.client = &http.Client{
			Transport: tr,
			// A redirect is an answer that is not 2xx: a failure, never followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return o
}

// Run starts the events work of every outbox in wg: upkeep of the outbox,
// and delivery for those with a webhook. It all stops when ctx is done.
func Run(ctx context.Context, wg *sync.WaitGroup, outboxes []*Outbox) {
	slots := make(chan struct{}, eventsRedisSlots)
	for _, o := range outboxes {
		o.consumer, o.slots = newConsumerName(), slots
		wg.Go(func() { o.maintainLoop(ctx) })
		if o.wh != nil {
			wg.Go(func() { o.deliverLoop(ctx) })
		}
	}
}

// Gauges are the last measures of the upkeep: the unix ms of the oldest
// undelivered event (0: none), the dead letters held, and the outbox
// length; hasWebhook tells whether the oldest is meaningful.
func (o *Outbox) Gauges() (oldest, deadLetters, length int64, hasWebhook bool) {
	return o.oldest.Load(), o.deadLetters.Load(), o.length.Load(), o.wh != nil
}

// Disabled reports whether the webhook answered 410 Gone: this instance
// delivers no more events to it until the config is reloaded.
func (o *Outbox) Disabled() bool { return o.gone.Load() }

// BackoffDelay is the wait after the attempt-th failed attempt: base
// doubled for each earlier attempt, capped at max.
func BackoffDelay(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Jittered spreads d over [d/2, d) with r in [0, 1), so that retries of
// events that failed together do not arrive together.
func Jittered(d time.Duration, r float64) time.Duration {
	return d/2 + time.Duration(r*float64(d/2))
}

// newConsumerName names this instance's consumer in the group: unique per
// host, process and start.
func newConsumerName() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
