package caddymodule

import (
	"context"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/idlink/idlink/caddymodule/internal/events"
	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/webhook"
)

// Standard Webhooks secrets of the tests: idlink signs with both (a
// rotation); the receiver knows only the new one.
var (
	whStdOld = webhook.SecretPrefix + base64.StdEncoding.EncodeToString([]byte("old-standard-secret-0123456789ab"))
	whStdNew = webhook.SecretPrefix + base64.StdEncoding.EncodeToString([]byte("new-standard-secret-0123456789ab"))
)

// checkStandard verifies a delivery in the Standard Webhooks format twice:
// with the webhook package, on the engine's clock, and with the reference
// Go library of Standard Webhooks (on the real clock while the test clock
// is near it; its timestamp check cannot take another clock). It returns
// what is wrong with it ("" if nothing).
func (r *receiver) checkStandard(h http.Header, body []byte, id string) string {
	now := r.clock.Now()
	ref, err := standardwebhooks.NewWebhook(whStdNew)
	if err != nil {
		return err.Error()
	}
	var refErr error
	if d := time.Since(now); d < time.Minute && d > -time.Minute {
		refErr = ref.Verify(body, h)
	} else {
		refErr = ref.VerifyIgnoringTimestamp(body, h)
	}
	sig := h.Get(webhook.StandardSignatureHeader)
	switch err := webhook.VerifyStandard(h, body, []string{whStdNew}, 10*time.Minute, now); {
	case err != nil:
		return "signature: " + err.Error()
	case refErr != nil:
		return "reference library: " + refErr.Error()
	case h.Get(webhook.IDHeader) != id:
		return "event id " + id + " webhook-id " + h.Get(webhook.IDHeader)
	case !attemptTime(h.Get(webhook.TimestampHeader), now):
		return "webhook-timestamp " + h.Get(webhook.TimestampHeader) + " at " + strconv.FormatInt(now.Unix(), 10)
	case len(strings.Fields(sig)) != 2 || strings.Count(sig, "v1,") != 2:
		return "want one v1 per secret: " + sig
	case h.Get(webhook.SignatureHeader) != "" || h.Get(webhook.EventIDHeader) != "":
		return "idlink headers in the standard format"
	}
	return ""
}

// attemptTime reports whether the unix seconds ts are the time of an
// attempt received at now: at most a minute earlier (the tests' clocks
// step by seconds while requests are in flight).
func attemptTime(ts string, now time.Time) bool {
	n, err := strconv.ParseInt(ts, 10, 64)
	return err == nil && n <= now.Unix() && now.Unix()-n <= 60
}

func standardSecrets(w *Webhook) { w.Secrets = []string{whStdOld, whStdNew} }

// Deliveries in the standard format (the default for whsec_ secrets) pass
// both verifiers; a retry carries the same webhook-id and a new
// webhook-timestamp, the time of that attempt.
func TestWebhookStandardFormat(t *testing.T) {
	redisURL := eventsRedisURL(t)
	t.Run("delivery", func(t *testing.T) {
		clock := newEventsClock()
		rcv := newReceiver(t, clock)
		rcv.standard = true
		a := newEventsApp(t, redisURL, rcv.srv.URL, clock, standardSecrets, nil)
		if f := a.Tenants["acme"].Webhook.Format; f != events.FormatStandard {
			t.Fatalf("format %q for whsec_ secrets, want standard", f)
		}
		ids := produce(t, a, "std", 10)
		waitUntil(t, "every event delivered", clock, 0, func() bool { return rcv.allDelivered(ids) })
		rcv.check()
	})
	t.Run("retry keeps the id, not the timestamp", func(t *testing.T) {
		clock := newEventsClock()
		rcv := newReceiver(t, clock)
		rcv.standard = true
		rcv.setAnswer(func(_ webhook.Event, attempt int) int {
			if attempt == 1 {
				return http.StatusInternalServerError
			}
			return http.StatusNoContent
		})
		a := newEventsApp(t, redisURL, rcv.srv.URL, clock, standardSecrets, nil)
		ids := produce(t, a, "std-retry", 3)
		waitUntil(t, "every event delivered", clock, 10*time.Second, func() bool { return rcv.allDelivered(ids) })
		rcv.check() // each request's webhook-id was its event's id, its timestamp the clock's
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for _, id := range ids {
			st := rcv.stamps[id]
			if len(st) != 2 {
				t.Fatalf("event %s attempted %d times, want 2", id, len(st))
			}
			t0, _ := strconv.ParseInt(st[0], 10, 64)
			t1, _ := strconv.ParseInt(st[1], 10, 64)
			if t1-t0 < 60 {
				t.Errorf("event %s: webhook-timestamp %d, then %d on the retry a back-off (1m) later", id, t0, t1)
			}
		}
	})
}

// The format a webhook gets from its config, and the checks of its secrets.
func TestWebhookFormat(t *testing.T) {
	short := webhook.SecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, 16))
	tests := []struct {
		name    string
		format  string
		secrets []string
		want    string // the format; or an error substring after "error: "
	}{
		{"whsec secrets: standard", "", []string{whStdOld, whStdNew}, events.FormatStandard},
		{"other secrets: idlink, as before the standard format", "", []string{whOldSecret, whNewSecret}, events.FormatIdlink},
		{"idlink with whsec secrets", events.FormatIdlink, []string{whStdNew}, events.FormatIdlink},
		{"standard", events.FormatStandard, []string{whStdNew}, events.FormatStandard},
		{"a mix needs the format", "", []string{whStdNew, whOldSecret}, "error: mix"},
		{"standard refuses other secrets", events.FormatStandard, []string{whStdNew, whOldSecret}, "error: secret 2: format standard needs whsec_"},
		{"standard refuses bad base64", events.FormatStandard, []string{"whsec_not*base64"}, "error: needs whsec_ followed by base64"},
		{"standard refuses short keys", "", []string{short}, "error: at least 24 bytes"},
		{"unknown format", "svix", []string{whStdNew}, "error: standard or idlink"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wh := &Webhook{URL: "https://example.com/hook", Secrets: tt.secrets, Format: tt.format}
			a := &App{Tenants: map[string]*Tenant{"acme": {Webhook: wh}}}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := a.Provision(ctx)
			defer a.Cleanup()
			if want, ok := strings.CutPrefix(tt.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("err = %v, want %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if wh.Format != tt.want {
				t.Errorf("format %q, want %q", wh.Format, tt.want)
			}
		})
	}
}

// A 429 or 503 answer's Retry-After (seconds or an HTTP date) delays the
// event's retry, and every other delivery of the instance, by at least
// that much on the engine's clock, capped at the back-off maximum (10m
// here); the back-off alone would retry after 1m. The pause is the
// instance's own; the event's retry time, in the store, holds for every
// instance.
func TestWebhookRetryAfter(t *testing.T) {
	redisURL := eventsRedisURL(t)
	tests := []struct {
		name   string
		status int
		value  func(now time.Time) string
		want   time.Duration
		two    bool // a second instance, which did not hear the answer
	}{
		{"429 seconds", http.StatusTooManyRequests, func(time.Time) string { return "300" }, 5 * time.Minute, false},
		{"503 HTTP date", http.StatusServiceUnavailable, func(now time.Time) string { return now.Add(7 * time.Minute).UTC().Format(http.TimeFormat) }, 7 * time.Minute, false},
		{"capped by the back-off maximum", http.StatusTooManyRequests, func(time.Time) string { return "86400" }, 10 * time.Minute, false},
		{"two instances", http.StatusTooManyRequests, func(time.Time) string { return "300" }, 5 * time.Minute, true},
	}
	const step = 5 * time.Second
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := "ra" + strconv.Itoa(i)
			clock := newEventsClock()
			rcv := newReceiver(t, clock)
			rcv.standard = true
			// The first event's first attempt is refused; the later one is
			// told apart by its external id (in its data).
			first := func(ev webhook.Event, attempt int) bool {
				return attempt == 1 && !strings.Contains(string(ev.Data), "-later")
			}
			rcv.setAnswer(func(ev webhook.Event, attempt int) int {
				if first(ev, attempt) {
					return tt.status
				}
				return http.StatusNoContent
			})
			rcv.header = func(ev webhook.Event, attempt int) http.Header {
				if first(ev, attempt) {
					return http.Header{"Retry-After": {tt.value(clock.Now())}}
				}
				return nil
			}
			a := newEventsApp(t, redisURL, rcv.srv.URL, clock, standardSecrets, nil)
			if tt.two {
				newEventsApp(t, redisURL, rcv.srv.URL, clock, standardSecrets, nil)
			}
			ids := produce(t, a, prefix, 1)
			waitUntil(t, "the first attempt", clock, 0, func() bool {
				rcv.mu.Lock()
				defer rcv.mu.Unlock()
				return len(rcv.times[ids[0]]) == 1
			})
			// Another event, produced during the pause, waits for its end.
			later := produce(t, a, prefix+"-later", 1)
			waitUntil(t, "both delivered", clock, step, func() bool { return rcv.allDelivered(append(later, ids...)) })
			rcv.check()
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			ts := rcv.times[ids[0]]
			if len(ts) != 2 {
				t.Fatalf("event attempted %d times, want 2", len(ts))
			}
			// (The upper bound only shows the cap: 86400 s uncapped. The test
			// clock runs ahead of a loaded machine, so it is loose.)
			if d := ts[1].Sub(ts[0]); d < tt.want || d > tt.want+time.Hour {
				t.Errorf("retried %v after the answer, want at least %v (and well under a day)", d, tt.want)
			}
			if d := rcv.times[later[0]][0].Sub(ts[0]); d < tt.want && !tt.two {
				t.Errorf("an event produced during the pause was attempted %v after the answer, within the %v asked for", d, tt.want)
			}
		})
	}
}

// 410 Gone: the event moves to the dead letters at once (no retry), the
// instance warns once and delivers nothing more; events stay in the
// outbox, and a new config (a reload) delivers them.
func TestWebhookGone(t *testing.T) {
	redisURL := eventsRedisURL(t)
	core, logs := observer.New(zapcore.InfoLevel)
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	rcv.standard = true
	rcv.setAnswer(func(webhook.Event, int) int { return http.StatusGone })
	a1 := newEventsApp(t, redisURL, rcv.srv.URL, clock, standardSecrets, func(o *events.Outbox) { o.Logger = zap.New(core) })
	ids := produce(t, a1, "gone", 1)
	o := a1.Tenants["acme"].outbox
	waitUntil(t, "disabled", clock, 0, func() bool { return o.Disabled() })
	waitUntil(t, "the dead letter", clock, 0, func() bool { _, _, dl := outboxState(t, a1); return dl == 1 })
	later := produce(t, a1, "gone-later", 5)
	// An hour passes: no retry of the first event, no attempt of the others.
	waitUntil(t, "an hour", clock, time.Minute, func() bool {
		return clock.Now().Sub(store.EntryTime(strings.SplitN(ids[0], "-", 2)[1])) > time.Hour
	})
	time.Sleep(100 * time.Millisecond)
	rcv.mu.Lock()
	if n := len(rcv.times[ids[0]]); n != 1 {
		t.Errorf("the event answered 410 was attempted %d times", n)
	}
	for _, id := range later {
		if n := len(rcv.times[id]); n != 0 {
			t.Errorf("event %s attempted %d times after the 410", id, n)
		}
	}
	rcv.mu.Unlock()
	rcv.check()
	tn := a1.Tenants["acme"]
	var dead []store.DeadLetter
	for shard := range store.Shards {
		l, _ := a1.store.DeadLetters(context.Background(), tn.id.Keys(), shard, "", 10)
		dead = append(dead, l...)
	}
	if len(dead) != 1 || dead[0].EventID != ids[0] || dead[0].Reason != events.ReasonGone || dead[0].Attempts != 1 || !strings.HasPrefix(dead[0].LastError, "HTTP 410") {
		t.Errorf("dead letters %+v", dead)
	}
	if n := logs.FilterMessageSnippet("410 Gone").FilterField(zap.String("webhook", "http://"+rcv.srv.Listener.Addr().String())).Len(); n != 1 {
		t.Errorf("%d warnings about the 410, want 1", n)
	}
	for _, e := range logs.FilterMessageSnippet("410 Gone").All() {
		if e.Level != zapcore.WarnLevel {
			t.Errorf("logged at %s", e.Level)
		}
	}

	// The receiver is fixed and the config reloaded: the waiting events arrive.
	a1.Stop()
	rcv.setAnswer(nil)
	a2 := newEventsApp(t, redisURL, rcv.srv.URL, clock, standardSecrets, nil)
	waitUntil(t, "the waiting events delivered", clock, 0, func() bool { return rcv.allDelivered(later) })
	if a2.Tenants["acme"].outbox.Disabled() {
		t.Error("the new config starts disabled")
	}
	rcv.check()
}
