package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/webhook"
)

// Defaults of a webhook and of the outbox.
const (
	defaultMaxAttempts     = 10
	defaultMaxAge          = 24 * time.Hour
	defaultWebhookTimeout  = 10 * time.Second
	defaultConcurrency     = 4
	defaultBackoffBase     = 30 * time.Second
	defaultBackoffMax      = time.Hour
	defaultPollInterval    = time.Second
	defaultEventsRetention = 7 * 24 * time.Hour // tenants without a webhook
	minSecretLen           = 16
	maxConcurrency         = 64
	// eventsRedisSlots bounds the store calls the events work of one app
	// makes at a time (all tenants together), so that it never holds more
	// than that many connections of the pool the request path uses.
	eventsRedisSlots = 4
	// breakerFailures consecutive failed attempts put delivery in probe
	// mode: one attempt at a time until one succeeds.
	breakerFailures = 3
)

// Tunables that are not configuration (tests shorten them).
const (
	maintainInterval = 15 * time.Second // outbox trim, consumer clean-up, gauges
	consumerIdle     = time.Hour        // stopped instances' consumers are deleted after that
	stopGrace        = 2 * time.Second  // how long running deliveries may finish after Stop
	errorBodyBytes   = 200              // of a receiver's error answer kept as the last error
	drainBodyBytes   = 64 << 10         // of a receiver's answer read to reuse the connection
)

// Dead-letter reasons.
const (
	reasonMaxAttempts = "max_attempts"
	reasonMaxAge      = "max_age"
	reasonMalformed   = "malformed"
)

// Webhook is where a tenant's events are delivered: each event is POSTed
// as JSON {id, type, tenant, occurred_at, data} with Content-Type
// application/json, Idlink-Event-Id and Idlink-Signature
// (t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>, one v1= per
// secret). A 2xx answer acknowledges it; anything else, a redirect, or no
// answer within Timeout is retried with exponential back-off and jitter,
// until MaxAttempts attempts were made or the event is older than MaxAge,
// when it moves to the tenant's dead letters (GET /deadletters of
// idlink_api). Delivery is at least once: the same event (same id) may
// arrive more than once, and events are not ordered.
type Webhook struct {
	// URL is the receiver, http:// or https://. Placeholders such as
	// {env.*} are replaced at provision time. Required.
	URL string `json:"url"`

	// Secrets sign every delivery, one v1= signature each (several while a
	// secret rotates). Use {env.*} or {file.*} placeholders: they are
	// replaced at provision time. At least one is required.
	Secrets []string `json:"secrets,omitempty"`

	// MaxAttempts is the number of attempts after which a failing event
	// becomes a dead letter. Default: 10.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// MaxAge is the age (since the event entered the outbox) after which a
	// failing event becomes a dead letter. Default: 24h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Timeout bounds one attempt, from connecting to reading the status.
	// Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Concurrency is the number of attempts one instance runs at a time
	// for the tenant (1 while the receiver is failing). Default: 4.
	Concurrency int `json:"concurrency,omitempty"`

	// BackoffBase is the wait before the first retry; each next one waits
	// twice as long, up to BackoffMax, each drawn between half and all of
	// that. Default: 30s.
	BackoffBase caddy.Duration `json:"backoff_base,omitempty"`

	// BackoffMax caps the wait between retries. Default: 1h.
	BackoffMax caddy.Duration `json:"backoff_max,omitempty"`

	// PollInterval is the longest an idle instance waits before it looks
	// for new events again (it looks sooner while events flow). Default: 1s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// ClaimAfter is how long an event taken by an instance stays reserved
	// to it: if the instance stops during the attempt, another one takes
	// the event over after that. At least twice Timeout. Default: 3 times
	// Timeout.
	ClaimAfter caddy.Duration `json:"claim_after,omitempty"`

	url     string
	secrets []string
}

// outbox is a tenant's events machinery: delivery to its webhook (if
// any), and upkeep of its outbox streams.
type outbox struct {
	t        *Tenant
	wh       *Webhook // nil: no delivery, upkeep only
	client   *http.Client
	origin   string // scheme://host of the webhook, for logs
	consumer string
	slots    chan struct{} // shared by the app's tenants: see eventsRedisSlots

	// Set at provision; tests shorten them.
	backoff       func(attempt int) time.Duration
	pollMin       time.Duration
	maintainEvery time.Duration
	stopGrace     time.Duration
	crash         bool // tests: stop without releasing leases, as a killed process would

	inflight  atomic.Int32
	failures  atomic.Int32    // consecutive failed attempts
	warns     lograte.Limiter // delivery warnings
	attempted atomic.Int64    // attempts made by this instance
	wake      chan struct{}

	// Measured by the upkeep, read by the metrics collector.
	oldest      atomic.Int64 // unix ms of the oldest undelivered event; 0: none
	deadLetters atomic.Int64
	length      atomic.Int64
}

func (t *Tenant) provisionEvents() error {
	o := &outbox{t: t, maintainEvery: maintainInterval, stopGrace: stopGrace, wake: make(chan struct{}, 1)}
	t.outbox = o
	if t.EventsRetention < 0 {
		return fmt.Errorf("events_retention must not be negative")
	}
	w := t.Webhook
	if w == nil {
		return nil
	}
	o.wh = w
	repl := caddy.NewReplacer()
	u, err := repl.ReplaceOrErr(w.URL, true, true)
	if err != nil {
		return fmt.Errorf("webhook url: %v", err)
	}
	pu, err := outboundURL("webhook url", u, "", t.logger)
	if err != nil {
		return err
	}
	w.url, o.origin = u, pu.Scheme+"://"+pu.Host
	w.secrets = w.secrets[:0]
	for i, s := range w.Secrets {
		secret, err := repl.ReplaceOrErr(s, true, true)
		if err != nil {
			return fmt.Errorf("webhook secret %d: %v", i+1, err)
		}
		if secret == "" {
			return fmt.Errorf("webhook secret %d is empty", i+1)
		}
		if len(secret) < minSecretLen {
			t.logger.Warn("webhook secret is shorter than 16 bytes; use a long random secret", zap.Int("secret", i+1))
		}
		w.secrets = append(w.secrets, secret)
	}
	if w.MaxAttempts <= 0 {
		w.MaxAttempts = defaultMaxAttempts
	}
	if w.MaxAge <= 0 {
		w.MaxAge = caddy.Duration(defaultMaxAge)
	}
	if w.Timeout <= 0 {
		w.Timeout = caddy.Duration(defaultWebhookTimeout)
	}
	if w.Concurrency <= 0 {
		w.Concurrency = defaultConcurrency
	}
	if w.BackoffBase <= 0 {
		w.BackoffBase = caddy.Duration(defaultBackoffBase)
	}
	if w.BackoffMax <= 0 {
		w.BackoffMax = caddy.Duration(max(defaultBackoffMax, time.Duration(w.BackoffBase)))
	}
	if w.PollInterval <= 0 {
		w.PollInterval = caddy.Duration(defaultPollInterval)
	}
	if w.ClaimAfter <= 0 {
		w.ClaimAfter = 3 * w.Timeout
	}
	o.pollMin = max(time.Duration(w.PollInterval)/20, 5*time.Millisecond)
	o.backoff = func(attempt int) time.Duration {
		return jittered(backoffDelay(time.Duration(w.BackoffBase), time.Duration(w.BackoffMax), attempt), mrand.Float64())
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = w.Concurrency
	o.client = &http.Client{
		Transport: tr,
		// A redirect is an answer that is not 2xx: a failure, never followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

func (t *Tenant) validateEvents() error {
	w := t.Webhook
	if w == nil {
		return nil
	}
	switch {
	case w.URL == "":
		return fmt.Errorf("tenant %q: webhook url is required", t.name)
	case len(w.Secrets) == 0:
		return fmt.Errorf("tenant %q: webhook needs at least one secret", t.name)
	case w.Concurrency > maxConcurrency:
		return fmt.Errorf("tenant %q: webhook concurrency must be at most %d", t.name, maxConcurrency)
	case w.BackoffMax < w.BackoffBase:
		return fmt.Errorf("tenant %q: webhook backoff max must not be below its base", t.name)
	case w.ClaimAfter < 2*w.Timeout:
		return fmt.Errorf("tenant %q: webhook claim_after (%s) must be at least twice the timeout (%s)",
			t.name, time.Duration(w.ClaimAfter), time.Duration(w.Timeout))
	}
	return nil
}

// backoffDelay is the wait after the attempt-th failed attempt: base
// doubled for each earlier attempt, capped at max.
func backoffDelay(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// jittered spreads d over [d/2, d) with r in [0, 1), so that retries of
// events that failed together do not arrive together.
func jittered(d time.Duration, r float64) time.Duration {
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

// runEvents starts the events work of every tenant in wg: upkeep of the
// outbox, and delivery for tenants with a webhook. It all stops when ctx
// is done.
func (a *App) runEvents(ctx context.Context, wg *sync.WaitGroup) {
	slots := make(chan struct{}, eventsRedisSlots)
	for _, t := range a.Tenants {
		o := t.outbox
		o.consumer, o.slots = newConsumerName(), slots
		wg.Go(func() { o.maintainLoop(ctx) })
		if o.wh != nil {
			wg.Go(func() { o.deliverLoop(ctx) })
		}
	}
}

// deliverLoop takes events from the tenant's 16 outbox shards and hands
// them to Concurrency workers, until ctx is done; then it lets running
// attempts finish for stopGrace, and releases what it still holds so that
// another instance takes it at once.
//
// It reads without BLOCK: one short script per shard and round, round-robin
// over the shards, going again at once while events flow and waiting up to
// PollInterval when idle. No connection is ever parked in a blocking read,
// so the store's connection pool stays free for requests.
func (o *outbox) deliverLoop(ctx context.Context) {
	t, w := o.t, o.wh
	defer o.client.CloseIdleConnections()
	for shard := range store.Shards {
		err := o.call(ctx, func(ctx context.Context) error { return t.app.store.EnsureEventsGroup(ctx, t.keys, shard) })
		if err != nil && ctx.Err() == nil {
			// The first fetch creates it as well.
			t.logStoreError(err)
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
		grace := time.AfterFunc(o.stopGrace, cancelAttempts)
		workers.Wait()
		grace.Stop()
	}()

	next, delay := 0, o.pollMin
	for {
		limit := int32(w.Concurrency)
		if o.failures.Load() >= breakerFailures {
			limit = 1 // the receiver is failing: one probe at a time
		}
		free := int(limit - o.inflight.Load())
		fetched, storeErr := 0, false
		if free > 0 {
			now := t.now()
			lease := now.Add(time.Duration(w.ClaimAfter))
			for i := 0; i < store.Shards && free > 0; i++ {
				shard := (next + i) % store.Shards
				var entries []store.OutboxEntry
				err := o.call(ctx, func(ctx context.Context) (err error) {
					entries, err = t.app.store.FetchEvents(ctx, t.keys, shard, o.consumer, now, lease, free, true)
					return err
				})
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					// Other shards may live on nodes that answer.
					t.logStoreError(err)
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
			wait, delay = delay, min(2*delay, time.Duration(w.PollInterval))
		case free <= 0:
			// Busy: go again when a worker is free.
			wait, delay = time.Duration(w.PollInterval), o.pollMin
		case fetched > 0:
			wait, delay = o.pollMin, o.pollMin
		default:
			wait, delay = delay, min(2*delay, time.Duration(w.PollInterval))
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
func (o *outbox) deliver(ctx context.Context, e *store.OutboxEntry) {
	t, w := o.t, o.wh
	if e.Attempts > 1 {
		eventMetrics.retries.WithLabelValues(t.name).Inc()
	}
	body, err := o.payload(e)
	if err != nil {
		o.deadLetter(e, reasonMalformed, err.Error())
		return
	}
	o.attempted.Add(1)
	result, lastErr := o.post(ctx, e.EventID(), body)
	if result != resultDelivered && ctx.Err() != nil {
		// Stopping: not the receiver's fault. Release the event so that
		// another instance takes it now rather than when the lease ends.
		if !o.crash {
			o.finish(func(ctx context.Context) error {
				_, err := t.app.store.RescheduleEvent(ctx, t.keys, e, t.now())
				return err
			})
		}
		return
	}
	eventMetrics.deliveries.WithLabelValues(t.name, result).Inc()
	if result == resultDelivered {
		o.failures.Store(0)
		o.finish(func(ctx context.Context) error { return t.app.store.AckEvent(ctx, t.keys, e.Shard, e.ID) })
		return
	}

	// Failed. While the receiver keeps failing, attempts go one at a time.
	now := t.now()
	o.failures.Add(1)
	t.debugDelivery("webhook attempt failed", e, lastErr)
	age := now.Sub(store.EntryTime(e.ID))
	switch {
	case e.Attempts >= w.MaxAttempts:
		o.deadLetter(e, reasonMaxAttempts, lastErr)
	case age >= time.Duration(w.MaxAge):
		o.deadLetter(e, reasonMaxAge, lastErr)
	default:
		retryAt := now.Add(o.backoff(e.Attempts))
		o.finish(func(ctx context.Context) error {
			_, err := t.app.store.RescheduleEvent(ctx, t.keys, e, retryAt)
			return err
		})
	}
}

func (o *outbox) deadLetter(e *store.OutboxEntry, reason, lastErr string) {
	t := o.t
	var id string
	o.finish(func(ctx context.Context) (err error) {
		id, err = t.app.store.DeadLetterEvent(ctx, t.keys, e, reason, lastErr, t.now())
		return err
	})
	if id == "" {
		return // lease lost or store down: the event stays in the outbox
	}
	eventMetrics.deadLetters.WithLabelValues(t.name, reason).Inc()
	if o.warnNow() {
		t.logger.Warn("webhook event moved to the dead letters",
			zap.String("event_id", e.EventID()), zap.String("deadletter_id", id), zap.String("reason", reason),
			zap.Int("attempts", e.Attempts), zap.String("last_error", lastErr), zap.String("webhook", o.origin))
	}
}

// finish runs a store step that concludes an attempt, retrying it briefly
// (within the lease) if the store fails: if it never succeeds, the event
// is simply attempted again once its lease ends.
func (o *outbox) finish(step func(ctx context.Context) error) {
	var err error
	for i := range 3 {
		if i > 0 {
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
		}
		if err = o.call(context.Background(), step); err == nil {
			return
		}
	}
	o.t.logStoreError(err)
}

// call runs one store call of the events work in one of the app's
// eventsRedisSlots.
func (o *outbox) call(ctx context.Context, fn func(ctx context.Context) error) error {
	select {
	case o.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-o.slots }()
	return fn(ctx)
}

// warnNow rate-limits delivery warnings to one a minute per tenant.
func (o *outbox) warnNow() bool {
	return o.warns.Allow(o.t.now(), time.Minute)
}

func (t *Tenant) debugDelivery(msg string, e *store.OutboxEntry, lastErr string) {
	if ce := t.logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(zap.String("event_id", e.EventID()), zap.Int("attempt", e.Attempts), zap.String("error", lastErr))
	}
}

// payload is the JSON body of an event.
func (o *outbox) payload(e *store.OutboxEntry) ([]byte, error) {
	typ, data := e.Fields[store.FieldType], e.Fields[store.FieldData]
	ms, err := strconv.ParseInt(e.Fields[store.FieldOccurredAt], 10, 64)
	if typ == "" || err != nil || !json.Valid([]byte(data)) || !strings.HasPrefix(strings.TrimSpace(data), "{") {
		return nil, errors.New("outbox entry without a type, an occurred_at in unix ms, or a JSON object as data")
	}
	return json.Marshal(webhook.Event{
		ID:         e.EventID(),
		Type:       typ,
		Tenant:     o.t.name,
		OccurredAt: time.UnixMilli(ms).UTC(),
		Data:       json.RawMessage(data),
	})
}

// Delivery results, the values of the result label.
const (
	resultDelivered = "delivered" // 2xx
	resultRejected  = "rejected"  // another status
	resultError     = "error"     // no answer: connection, TLS, timeout
)

// post sends one attempt and classifies its outcome; for a failure it also
// returns a short description (without the URL, which may hold a token).
func (o *outbox) post(ctx context.Context, eventID string, body []byte) (result, lastErr string) {
	t, w := o.t, o.wh
	ctx, cancel := context.WithTimeout(ctx, time.Duration(w.Timeout))
	defer cancel()
	sig, err := webhook.Sign(w.secrets, t.now(), body)
	if err != nil {
		return resultError, err.Error()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return resultError, "building the request failed"
	}
	req.Header.Set(headerContentType, contentTypeJSON)
	req.Header.Set("User-Agent", "idlink-webhook/1")
	req.Header.Set(webhook.EventIDHeader, eventID)
	req.Header.Set(webhook.SignatureHeader, sig)
	resp, err := o.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
			return resultError, "no answer within " + time.Duration(w.Timeout).String()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return resultError, truncate(err.Error(), errorBodyBytes)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBodyBytes))
		return resultDelivered, ""
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyBytes))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBodyBytes))
	msg := "HTTP " + strconv.Itoa(resp.StatusCode)
	if s := printable(string(snippet)); s != "" {
		msg += ": " + s
	}
	return resultRejected, msg
}

// printable keeps a receiver's text fit for a log line and a JSON field.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
