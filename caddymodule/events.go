package caddymodule

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
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
