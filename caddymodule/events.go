package caddymodule

import (
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/events"
	"github.com/idlink/idlink/webhook"
)

// Defaults of a webhook and of the outbox.
const (
	defaultMaxAttempts    = 10
	defaultMaxAge         = 24 * time.Hour
	defaultWebhookTimeout = 10 * time.Second
	defaultConcurrency    = 4
	defaultBackoffBase    = 30 * time.Second
	defaultBackoffMax     = time.Hour
	defaultPollInterval   = time.Second
	minSecretLen          = 16 // format idlink: shorter ones are warned about
	minStandardKeyLen     = 24 // format standard: decoded bytes, as Standard Webhooks asks
	maxConcurrency        = 64
)

// Webhook is where a tenant's events are delivered: each event is POSTed
// as JSON {id, type, tenant, occurred_at, data} with Content-Type
// application/json, signed in the Format: Standard Webhooks (webhook-id,
// webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256(key, id +
// "." + timestamp + "." + body)>) or idlink's own (Idlink-Event-Id,
// Idlink-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." +
// body)>), one signature per secret. A 2xx answer acknowledges it; anything
// else, a redirect, or no answer within Timeout is retried with
// exponential back-off and jitter (not before a 429 or 503 answer's
// Retry-After, capped at BackoffMax), until MaxAttempts attempts were made
// or the event is older than MaxAge, when it moves to the tenant's dead
// letters (GET /deadletters of idlink_api). A 410 Gone answer moves the
// event to the dead letters at once and stops the instance's deliveries
// until the config is reloaded. Delivery is at least once: the same event
// (same id) may arrive more than once, and events are not ordered.
type Webhook struct {
	// URL is the receiver, http:// or https://. Placeholders such as
	// {env.*} are replaced at provision time. Required.
	URL string `json:"url"`

	// Secrets sign every delivery, one signature each (several while a
	// secret rotates). In the standard format each is "whsec_" followed by
	// the base64 of at least 24 random bytes, the HMAC key; in the idlink
	// format the key is the secret's bytes as written. Use {env.*} or
	// {file.*} placeholders: they are replaced at provision time. At least
	// one is required.
	Secrets []string `json:"secrets,omitempty"`

	// Format is how deliveries are signed: "standard" (Standard Webhooks)
	// or "idlink" (idlink's own, before Standard Webhooks). Default:
	// standard when every secret is in the whsec_ form, idlink when none
	// is (configs written before the standard format keep working); a mix
	// of the two needs the format set.
	Format string `json:"format,omitempty"`

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

func (t *Tenant) provisionEvents() error {
	if t.EventsRetention < 0 {
		return fmt.Errorf("events_retention must not be negative")
	}
	cfg := events.Config{
		Tenant: t.name, Keys: t.id.Keys(), Store: t.app.store, Retention: time.Duration(t.EventsRetention),
		Now: t.now, Logger: t.logger, StoreError: t.id.LogStoreError,
	}
	if w := t.Webhook; w != nil {
		wh, err := t.provisionWebhook(w)
		if err != nil {
			return err
		}
		cfg.Webhook = wh
	}
	t.outbox = events.New(cfg)
	return nil
}

// provisionWebhook resolves the webhook's placeholders, applies its
// defaults, and returns what the events engine needs of it.
func (t *Tenant) provisionWebhook(w *Webhook) (*events.Webhook, error) {
	repl := caddy.NewReplacer()
	u, err := repl.ReplaceOrErr(w.URL, true, true)
	if err != nil {
		return nil, fmt.Errorf("webhook url: %v", err)
	}
	if _, err := outboundURL("webhook url", u, "", t.logger); err != nil {
		return nil, err
	}
	w.url = u
	w.secrets = w.secrets[:0]
	for i, s := range w.Secrets {
		secret, err := repl.ReplaceOrErr(s, true, true)
		if err != nil {
			return nil, fmt.Errorf("webhook secret %d: %v", i+1, err)
		}
		if secret == "" {
			return nil, fmt.Errorf("webhook secret %d is empty", i+1)
		}
		w.secrets = append(w.secrets, secret)
	}
	keys, err := t.webhookFormat(w)
	if err != nil {
		return nil, err
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
	return &events.Webhook{
		URL: u, Format: w.Format, Secrets: w.secrets, Keys: keys, MaxAttempts: w.MaxAttempts,
		MaxAge: time.Duration(w.MaxAge), Timeout: time.Duration(w.Timeout), Concurrency: w.Concurrency,
		BackoffBase: time.Duration(w.BackoffBase), BackoffMax: time.Duration(w.BackoffMax),
		PollInterval: time.Duration(w.PollInterval), ClaimAfter: time.Duration(w.ClaimAfter),
	}, nil
}

// webhookFormat settles the webhook's format (see Webhook.Format) from its
// resolved secrets, checks them for it, and returns the HMAC keys of the
// standard format (nil for idlink).
func (t *Tenant) webhookFormat(w *Webhook) ([][]byte, error) {
	standard := 0
	for _, s := range w.secrets {
		if strings.HasPrefix(s, webhook.SecretPrefix) {
			standard++
		}
	}
	if w.Format == "" {
		switch standard {
		case len(w.secrets):
			w.Format = events.FormatStandard
		case 0:
			w.Format = events.FormatIdlink
		default:
			return nil, fmt.Errorf("webhook secrets mix whsec_ ones and others: set format standard or idlink")
		}
	}
	switch w.Format {
	case events.FormatStandard:
		keys := make([][]byte, len(w.secrets))
		for i, s := range w.secrets {
			k, err := webhook.DecodeSecret(s)
			if err != nil {
				return nil, fmt.Errorf("webhook secret %d: format standard needs whsec_ followed by base64 (e.g. whsec_$(openssl rand -base64 32))", i+1)
			}
			if len(k) < minStandardKeyLen {
				return nil, fmt.Errorf("webhook secret %d: format standard needs at least %d bytes after whsec_ (%d given)", i+1, minStandardKeyLen, len(k))
			}
			keys[i] = k
		}
		return keys, nil
	case events.FormatIdlink:
		for i, s := range w.secrets {
			if len(s) < minSecretLen {
				t.logger.Warn("webhook secret is shorter than 16 bytes; use a long random secret", zap.Int("secret", i+1))
			}
		}
		return nil, nil
	}
	return nil, fmt.Errorf("webhook format must be standard or idlink, not %q", w.Format)
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
