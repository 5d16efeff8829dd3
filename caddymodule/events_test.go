package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
	"github.com/idlink/idlink/webhook"

	"github.com/idlink/idlink/caddymodule/internal/events"
)

// Secrets of the test webhook: idlink signs with both (a rotation); the
// receiver knows only the new one.
const (
	whOldSecret = "old-webhook-secret-0123456789"
	whNewSecret = "new-webhook-secret-0123456789"
)

// eventsClock is the injectable clock of the events tests.
type eventsClock struct {
	mu   sync.Mutex
	t    time.Time
	real bool // follow the real clock (measurements)
}

func newEventsClock() *eventsClock { return &eventsClock{t: time.Now()} }

func (c *eventsClock) Now() time.Time {
	if c.real {
		return time.Now()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *eventsClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// receiver is a webhook receiver that verifies every delivery with the
// exported helper and records what it got.
type receiver struct {
	t     *testing.T
	clock *eventsClock
	srv   *httptest.Server
	// standard: deliveries come in the Standard Webhooks format, signed
	// with whStdOld and whStdNew (see checkStandard); otherwise in the
	// idlink format, signed with whOldSecret and whNewSecret.
	standard bool

	mu        sync.Mutex
	answer    func(ev webhook.Event, attempt int) int         // status to answer; nil: 204
	header    func(ev webhook.Event, attempt int) http.Header // extra answer headers; nil: none
	times     map[string][]time.Time                          // event id -> the clock at each request
	stamps    map[string][]string                             // event id -> webhook-timestamp of each request (standard format)
	hold      chan struct{}                                   // when set, requests wait for it to close
	attempts  map[string]int                                  // event id -> requests
	delivered map[string]int                                  // event id -> 2xx answers
	events    map[string]webhook.Event
	inflight  map[string]int
	overlaps  []string // event ids received while a request for them was running
	problems  []string
	started   chan string // event ids, as requests arrive (buffered)
}

func newReceiver(t *testing.T, clock *eventsClock) *receiver {
	r := &receiver{
		t: t, clock: clock,
		attempts: map[string]int{}, delivered: map[string]int{}, events: map[string]webhook.Event{},
		inflight: map[string]int{}, started: make(chan string, 10000), times: map[string][]time.Time{},
		stamps: map[string][]string{},
	}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

var eventIDRE = regexp.MustCompile(`^[0-9a-f]{2}-[0-9]+-[0-9]+$`)

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var problem string
	var ev webhook.Event
	switch {
	case req.Method != http.MethodPost:
		problem = "method " + req.Method
	case req.Header.Get("Content-Type") != "application/json":
		problem = "content type " + req.Header.Get("Content-Type")
	case json.Unmarshal(body, &ev) != nil:
		problem = "body " + string(body)
	case !eventIDRE.MatchString(ev.ID):
		problem = "event id " + ev.ID
	case r.standard:
		problem = r.checkStandard(req.Header, body, ev.ID)
	default:
		problem = r.checkIdlink(req.Header, body, ev.ID)
	}
	r.mu.Lock()
	if problem != "" {
		r.problems = append(r.problems, problem)
		r.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.attempts[ev.ID]++
	attempt := r.attempts[ev.ID]
	if r.inflight[ev.ID] > 0 {
		r.overlaps = append(r.overlaps, ev.ID)
	}
	r.inflight[ev.ID]++
	r.events[ev.ID] = ev
	r.times[ev.ID] = append(r.times[ev.ID], r.clock.Now())
	r.stamps[ev.ID] = append(r.stamps[ev.ID], req.Header.Get(webhook.TimestampHeader))
	answer, hold, header := r.answer, r.hold, r.header
	r.mu.Unlock()
	r.started <- ev.ID

	if hold != nil {
		select {
		case <-hold:
		case <-req.Context().Done():
		}
	}
	status := http.StatusNoContent
	if answer != nil {
		status = answer(ev, attempt)
	}
	r.mu.Lock()
	r.inflight[ev.ID]--
	if status/100 == 2 && req.Context().Err() == nil {
		r.delivered[ev.ID]++
	}
	r.mu.Unlock()
	if header != nil {
		for k, v := range header(ev, attempt) {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(status)
	if status/100 != 2 {
		w.Write([]byte("down\n"))
	}
}

// checkIdlink verifies a delivery in the idlink format with the webhook
// package; it returns what is wrong with it ("" if nothing).
func (r *receiver) checkIdlink(h http.Header, body []byte, id string) string {
	sig := h.Get(webhook.SignatureHeader)
	switch err := webhook.Verify(sig, body, []string{whNewSecret}, 10*time.Minute, r.clock.Now()); {
	case err != nil:
		return "signature: " + err.Error()
	case h.Get(webhook.EventIDHeader) != id:
		return "event id " + id + " header " + h.Get(webhook.EventIDHeader)
	case strings.Count(sig, "v1=") != 2:
		return "want one v1 per secret: " + sig
	case h.Get(webhook.StandardSignatureHeader) != "" || h.Get(webhook.IDHeader) != "":
		return "standard headers in the idlink format"
	}
	return ""
}

func (r *receiver) setAnswer(f func(ev webhook.Event, attempt int) int) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

func (r *receiver) deliveredCount(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delivered[id]
}

// check fails the test on any bad request or concurrent delivery.
func (r *receiver) check() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.problems) > 0 {
		r.t.Errorf("receiver got bad requests: %q", r.problems)
	}
	if len(r.overlaps) > 0 {
		r.t.Errorf("events delivered concurrently: %q", r.overlaps)
	}
}

// allDelivered reports whether every id was acknowledged at least once.
func (r *receiver) allDelivered(ids []string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if r.delivered[id] == 0 {
			return false
		}
	}
	return true
}

// eventsRedisURL starts a real redis-server for the test ("" when it is
// missing outside CI: the embedded store, shared by the test's apps).
func eventsRedisURL(tb testing.TB) string {
	if r := testenv.StartRedis(tb); r != nil {
		return r.URL()
	}
	return ""
}

// newEventsApp provisions and starts an idlink app with tenant "acme"
// whose webhook is url, on the store at redisURL, with the clock and the
// short timings of the tests. mutate may change the config before
// provisioning, tune the outbox after.
func newEventsApp(tb testing.TB, redisURL, url string, clock *eventsClock, mutate func(w *Webhook), tune func(o *events.Outbox)) *App {
	tb.Helper()
	wh := &Webhook{
		URL:          url,
		Secrets:      []string{whOldSecret, whNewSecret},
		Timeout:      caddy.Duration(2 * time.Second),
		PollInterval: caddy.Duration(20 * time.Millisecond),
		BackoffBase:  caddy.Duration(time.Minute),
		BackoffMax:   caddy.Duration(10 * time.Minute),
		MaxAttempts:  10,
	}
	if mutate != nil {
		mutate(wh)
	}
	app := &App{
		Redis:        redisURL,
		RedisTimeout: caddy.Duration(time.Second),
		Tenants:      map[string]*Tenant{"acme": {Webhook: wh}},
		now:          clock.Now,
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	if err := app.Provision(ctx); err != nil {
		tb.Fatalf("provision: %v", err)
	}
	app.logger = zap.NewNop()
	for _, t := range app.Tenants {
		t.logger = app.logger
		o := t.outbox
		o.Logger = app.logger
		o.PollMin = 2 * time.Millisecond
		o.MaintainEvery = 50 * time.Millisecond
		o.StopGrace = 50 * time.Millisecond
		if t.Webhook != nil {
			o.Backoff = func(attempt int) time.Duration { return events.BackoffDelay(time.Minute, 10*time.Minute, attempt) }
		}
		if tune != nil {
			tune(o)
		}
	}
	if err := app.Validate(); err != nil {
		tb.Fatalf("validate: %v", err)
	}
	if err := app.Start(); err != nil {
		tb.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { _ = app.Stop(); _ = app.Cleanup() }) }
	tb.Cleanup(stop)
	return app
}

// produce creates n users of tenant acme through the real producer path
// (each appends user.created to its shard's outbox) and returns the event
// ids the receiver should see.
func produce(tb testing.TB, a *App, prefix string, n int) []string {
	tb.Helper()
	t := a.Tenants["acme"]
	rdb := storeClient(tb, a)
	var ids []string
	for i := range n {
		ext := fmt.Sprintf("%s-%d", prefix, i)
		if _, created, err := a.store.ResolveExternal(context.Background(), t.id.Keys(), ext, t.now()); err != nil || !created {
			tb.Fatalf("resolve %s: created=%v err=%v", ext, created, err)
		}
		shard := store.ExternalShard(ext)
		last, err := rdb.XRevRangeN(context.Background(), t.id.Keys().Events(shard), "+", "-", 1).Result()
		if err != nil || len(last) != 1 {
			tb.Fatalf("outbox of shard %d: %v %v", shard, last, err)
		}
		ids = append(ids, store.EventID(shard, last[0].ID))
	}
	return ids
}

// waitUntil polls cond until it holds, advancing the clock by step (if
// any) between polls, for at most 15 s of real time.
func waitUntil(tb testing.TB, what string, clock *eventsClock, step time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		if step > 0 {
			clock.Advance(step)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// outboxState sums the group's pending entries, the due schedule and the
// dead letters over the tenant's shards.
func outboxState(tb testing.TB, a *App) (pending, due, dead int64) {
	tb.Helper()
	t := a.Tenants["acme"]
	ctx := context.Background()
	c := storeClient(tb, a)
	for shard := range store.Shards {
		if p, err := c.XPending(ctx, t.id.Keys().Events(shard), store.EventsGroup).Result(); err == nil {
			pending += p.Count
		}
		n, _ := c.ZCard(ctx, t.id.Keys().EventsDue(shard)).Result()
		due += n
		d, _ := c.XLen(ctx, t.id.Keys().Deadletter(shard)).Result()
		dead += d
	}
	return
}

func testWebhookDelivery(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	a := newEventsApp(t, redisURL, rcv.srv.URL+"/hook?token=x", clock, nil, nil)
	before := testutil.ToFloat64(events.Metrics.Deliveries.WithLabelValues("acme", "delivered"))

	ids := produce(t, a, "user", 40)
	waitUntil(t, "every event delivered", clock, 0, func() bool { return rcv.allDelivered(ids) })
	rcv.check()

	// Normal operation: exactly once, and the payload is the event.
	rcv.mu.Lock()
	for i, id := range ids {
		if rcv.attempts[id] != 1 || rcv.delivered[id] != 1 {
			t.Errorf("event %s: %d attempts, %d deliveries", id, rcv.attempts[id], rcv.delivered[id])
		}
		ev := rcv.events[id]
		var data struct {
			UserID     string `json:"user_id"`
			ExternalID string `json:"external_id"`
		}
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.ExternalID != fmt.Sprintf("user-%d", i) ||
			!strings.HasPrefix(data.UserID, "u_"+id[:2]) {
			t.Errorf("event %s data %s", id, ev.Data)
		}
		if ev.Type != "user.created" || ev.Tenant != "acme" || ev.OccurredAt.Location() != time.UTC ||
			ev.OccurredAt.UnixMilli() != clock.Now().UnixMilli() {
			t.Errorf("event %+v", ev)
		}
	}
	rcv.mu.Unlock()
	// (The counter moves just after the receiver answered.)
	waitUntil(t, "deliveries counted", clock, 0, func() bool {
		return testutil.ToFloat64(events.Metrics.Deliveries.WithLabelValues("acme", "delivered"))-before == float64(len(ids))
	})

	// Any type another feature appends in the same format is delivered as is.
	tn := a.Tenants["acme"]
	entry, err := storeClient(t, a).XAdd(context.Background(), &redis.XAddArgs{
		Stream: tn.id.Keys().Events(9),
		Values: []any{"type", "session.ended", "tenant", "acme", "occurred_at", "1718000000123", "data", `{"session_id":"s_09x","reason":"logout"}`},
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	sessionEnded := store.EventID(9, entry)
	waitUntil(t, "session.ended delivered", clock, 0, func() bool { return rcv.allDelivered([]string{sessionEnded}) })
	rcv.mu.Lock()
	if ev := rcv.events[sessionEnded]; ev.Type != "session.ended" || string(ev.Data) != `{"session_id":"s_09x","reason":"logout"}` ||
		ev.OccurredAt.Format(time.RFC3339Nano) != "2024-06-10T06:13:20.123Z" {
		t.Errorf("session.ended = %+v", ev)
	}
	rcv.mu.Unlock()

	// Delivered events are trimmed from the outbox; nothing stays pending.
	o := a.Tenants["acme"].outbox
	waitUntil(t, "outbox trimmed", clock, 0, func() bool { _, _, length, _ := o.Gauges(); return length == 0 })
	if p, d, dl := outboxState(t, a); p != 0 || d != 0 || dl != 0 {
		t.Errorf("pending %d, due %d, dead letters %d", p, d, dl)
	}
}

func testWebhookRetryThenRecover(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	// Each event fails twice (500, then a timeout-free 503), then succeeds.
	rcv.setAnswer(func(_ webhook.Event, attempt int) int {
		if attempt <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	a := newEventsApp(t, redisURL, rcv.srv.URL, clock, nil, nil)
	retries := testutil.ToFloat64(events.Metrics.Retries.WithLabelValues("acme"))

	ids := produce(t, a, "retry", 12)
	// Nothing is retried before its back-off: the clock stands still.
	waitUntil(t, "first attempts", clock, 0, func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		n := 0
		for _, id := range ids {
			n += min(rcv.attempts[id], 1)
		}
		return n >= 3 // probe mode after 3 failures: the others wait
	})
	time.Sleep(50 * time.Millisecond)
	rcv.mu.Lock()
	for id, n := range rcv.attempts {
		if n > 1 {
			t.Errorf("event %s retried before its back-off", id)
		}
	}
	rcv.mu.Unlock()

	waitUntil(t, "every event delivered", clock, 20*time.Second, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	rcv.mu.Lock()
	for _, id := range ids {
		if rcv.attempts[id] < 3 {
			t.Errorf("event %s delivered after %d attempts", id, rcv.attempts[id])
		}
	}
	rcv.mu.Unlock()
	if got := testutil.ToFloat64(events.Metrics.Retries.WithLabelValues("acme")) - retries; got < 2*float64(len(ids)) {
		t.Errorf("retries_total grew by %v", got)
	}
	waitUntil(t, "nothing pending", clock, 0, func() bool {
		p, d, dl := outboxState(t, a)
		return p == 0 && d == 0 && dl == 0
	})
}

func testWebhookDeadLetterThenReplay(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	var up atomic.Bool
	rcv.setAnswer(func(webhook.Event, int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	a := newEventsApp(t, redisURL, rcv.srv.URL, clock, func(w *Webhook) { w.MaxAttempts = 4 }, nil)
	dead := testutil.ToFloat64(events.Metrics.DeadLetters.WithLabelValues("acme", events.ReasonMaxAttempts))

	// The receiver is down for a long stretch: each event is attempted 4
	// times, backing off, then becomes a dead letter.
	ids := produce(t, a, "dl", 10)
	waitUntil(t, "every event dead-lettered", clock, 2*time.Minute, func() bool {
		_, _, dl := outboxState(t, a)
		return dl == int64(len(ids))
	})
	rcv.check()
	rcv.mu.Lock()
	for _, id := range ids {
		if rcv.attempts[id] != 4 || rcv.delivered[id] != 0 {
			t.Errorf("event %s: %d attempts, %d deliveries", id, rcv.attempts[id], rcv.delivered[id])
		}
	}
	rcv.mu.Unlock()
	waitUntil(t, "dead letters counted", clock, 0, func() bool {
		return testutil.ToFloat64(events.Metrics.DeadLetters.WithLabelValues("acme", events.ReasonMaxAttempts))-dead == float64(len(ids))
	})
	if p, d, _ := outboxState(t, a); p != 0 || d != 0 {
		t.Errorf("pending %d, due %d after dead-lettering", p, d)
	}

	// The dead letters say what happened.
	tn := a.Tenants["acme"]
	var all []store.DeadLetter
	for shard := range store.Shards {
		l, _ := a.store.DeadLetters(context.Background(), tn.id.Keys(), shard, "", 100)
		all = append(all, l...)
	}
	seen := map[string]bool{}
	for _, d := range all {
		seen[d.EventID] = true
		if d.Attempts != 4 || d.Reason != events.ReasonMaxAttempts || d.LastError != "HTTP 503: down" || d.Type != "user.created" {
			t.Errorf("dead letter %+v", d)
		}
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("event %s is not among the dead letters", id)
		}
	}

	// The receiver is back; replaying delivers every event, under its id.
	up.Store(true)
	for shard := range store.Shards {
		if _, err := a.store.ReplayOldestDeadLetters(context.Background(), tn.id.Keys(), shard, 100); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "replayed events delivered", clock, 0, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	if _, _, dl := outboxState(t, a); dl != 0 {
		t.Errorf("%d dead letters left", dl)
	}
}

func testWebhookMaxAge(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	rcv.setAnswer(func(webhook.Event, int) int { return http.StatusBadGateway })
	a := newEventsApp(t, redisURL, rcv.srv.URL, clock, func(w *Webhook) {
		w.MaxAttempts = 1000
		w.MaxAge = caddy.Duration(time.Hour)
	}, nil)
	ids := produce(t, a, "age", 3)
	waitUntil(t, "first attempts", clock, 0, func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.attempts) == len(ids)
	})
	// Back-off caps at 10 min: within the hour, a few attempts, no dead letter.
	waitUntil(t, "an hour", clock, time.Minute, func() bool {
		return clock.Now().Sub(store.EntryTime(strings.SplitN(ids[0], "-", 2)[1])) > 50*time.Minute
	})
	if _, _, dl := outboxState(t, a); dl != 0 {
		t.Fatalf("%d dead letters before max_age", dl)
	}
	waitUntil(t, "dead letters by age", clock, time.Minute, func() bool {
		_, _, dl := outboxState(t, a)
		return dl == int64(len(ids))
	})
	tn := a.Tenants["acme"]
	for shard := range store.Shards {
		l, _ := a.store.DeadLetters(context.Background(), tn.id.Keys(), shard, "", 100)
		for _, d := range l {
			if d.Reason != events.ReasonMaxAge || d.Attempts < 3 || d.Attempts > 20 {
				t.Errorf("dead letter %+v", d)
			}
		}
	}
}

func testWebhookMalformedEntry(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	a := newEventsApp(t, redisURL, rcv.srv.URL, clock, nil, nil)
	tn := a.Tenants["acme"]
	for _, data := range []string{`not json`, `[1]`, ``} {
		if err := storeClient(t, a).XAdd(context.Background(), &redis.XAddArgs{
			Stream: tn.id.Keys().Events(4),
			Values: []any{"type", "user.created", "tenant", "acme", "occurred_at", "1", "data", data},
		}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "malformed entries dead-lettered", clock, 0, func() bool {
		_, _, dl := outboxState(t, a)
		return dl == 3
	})
	l, _ := a.store.DeadLetters(context.Background(), tn.id.Keys(), 4, "", 10)
	for _, d := range l {
		if d.Reason != events.ReasonMalformed || d.Attempts != 1 {
			t.Errorf("dead letter %+v", d)
		}
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.attempts) != 0 {
		t.Errorf("malformed entries were sent: %v", rcv.attempts)
	}
}

// An instance stopped during an attempt: another one finishes its events,
// at once when the stopping instance released them (a reload, a graceful
// stop), after claim_after when it could not (a crash).
func testWebhookStoppedMidDelivery(t *testing.T, redisURL string) {
	testWebhookStopMidDelivery(t, redisURL, false)
}
func testWebhookCrashedMidDelivery(t *testing.T, redisURL string) {
	testWebhookStopMidDelivery(t, redisURL, true)
}

func testWebhookStopMidDelivery(t *testing.T, redisURL string, crash bool) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	hold := make(chan struct{})
	rcv.hold = hold
	url1, cut := redisURL, func() {}
	if crash {
		// The instance that crashes reaches Redis through a proxy: cut
		// before Stop, it can release nothing, as a killed process.
		url1, cut = crashableRedis(t, redisURL)
	}
	a1 := newEventsApp(t, url1, rcv.srv.URL, clock, func(w *Webhook) { w.Concurrency = 2 }, nil)
	ids := produce(t, a1, "stop", 8)

	// a1 holds two events in attempts that hang.
	held := map[string]bool{}
	for range 2 {
		select {
		case id := <-rcv.started:
			held[id] = true
		case <-time.After(10 * time.Second):
			t.Fatal("no attempt started")
		}
	}
	cut()
	stopped := make(chan struct{})
	go func() { a1.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return")
	}
	// The held requests end only by a1 giving up on them.
	rcv.mu.Lock()
	rcv.hold = nil
	rcv.mu.Unlock()
	t.Cleanup(func() { close(hold) })

	// The clock stands still: a2 cannot take what a1 still holds.
	a2 := newEventsApp(t, redisURL, rcv.srv.URL, clock, nil, nil)
	var others []string
	for _, id := range ids {
		if !held[id] {
			others = append(others, id)
		}
	}
	waitUntil(t, "the other events delivered", clock, 0, func() bool { return rcv.allDelivered(others) })
	if crash {
		// The crashed instance's events stay reserved to it until
		// claim_after (3×2s) has passed.
		for id := range held {
			if rcv.deliveredCount(id) != 0 {
				t.Errorf("event %s held by the crashed instance delivered before claim_after", id)
			}
		}
		clock.Advance(6 * time.Second)
	}
	waitUntil(t, "every event delivered", clock, 0, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	waitUntil(t, "nothing pending", clock, 0, func() bool {
		p, d, dl := outboxState(t, a2)
		return p == 0 && d == 0 && dl == 0
	})
}

// The receiver is down for a long time, and the instance restarts in
// between: once the receiver is back, every event arrives.
func testWebhookOutageAcrossRestart(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	var up atomic.Bool
	rcv.setAnswer(func(webhook.Event, int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	a1 := newEventsApp(t, redisURL, rcv.srv.URL, clock, nil, nil)
	ids := produce(t, a1, "outage", 10)
	waitUntil(t, "some attempts", clock, time.Minute, func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.attempts) >= 5
	})
	a1.Stop()
	ids = append(ids, produce(t, a1, "outage-later", 5)...)
	a2 := newEventsApp(t, redisURL, rcv.srv.URL, clock, nil, nil)
	waitUntil(t, "more attempts", clock, time.Minute, func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.attempts) >= 12
	})
	up.Store(true)
	waitUntil(t, "every event delivered", clock, time.Minute, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	if _, _, dl := outboxState(t, a2); dl != 0 {
		t.Errorf("%d dead letters", dl)
	}
}

// Two instances share the work and never attempt one event at the same
// time; under normal operation each event is delivered exactly once.
func testWebhookTwoInstances(t *testing.T, redisURL string) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	rcv.setAnswer(func(webhook.Event, int) int {
		time.Sleep(time.Millisecond)
		return http.StatusOK
	})
	// Each instance posts to its own path of the receiver, which counts
	// the attempts by instance.
	var byInstance sync.Map // path -> *atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n, _ := byInstance.LoadOrStore(req.URL.Path, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		rcv.serve(w, req)
	}))
	t.Cleanup(srv.Close)
	a1 := newEventsApp(t, redisURL, srv.URL+"/a1", clock, nil, nil)
	newEventsApp(t, redisURL, srv.URL+"/a2", clock, nil, nil)
	ids := produce(t, a1, "two", 150)
	waitUntil(t, "every event delivered", clock, 0, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	rcv.mu.Lock()
	for _, id := range ids {
		if rcv.attempts[id] != 1 {
			t.Errorf("event %s attempted %d times", id, rcv.attempts[id])
		}
	}
	rcv.mu.Unlock()
	attempts := func(path string) int64 {
		if n, ok := byInstance.Load(path); ok {
			return n.(*atomic.Int64).Load()
		}
		return 0
	}
	n1, n2 := attempts("/a1"), attempts("/a2")
	if n1+n2 != int64(len(ids)) || n1 == 0 || n2 == 0 {
		t.Errorf("attempts by instance: %d and %d, want both > 0 summing to %d", n1, n2, len(ids))
	}
}

// webhookScenarios are the delivery tests. TestWebhook runs them on a
// standalone Redis (the embedded store when redis-server is missing),
// TestWebhookCluster on a 3-master Redis Cluster.
var webhookScenarios = []struct {
	name string
	run  func(t *testing.T, redisURL string)
}{
	{"delivery", testWebhookDelivery},
	{"retry then recover", testWebhookRetryThenRecover},
	{"dead letter then replay", testWebhookDeadLetterThenReplay},
	{"max age", testWebhookMaxAge},
	{"malformed entry", testWebhookMalformedEntry},
	{"stopped mid-delivery", testWebhookStoppedMidDelivery},
	{"crashed mid-delivery", testWebhookCrashedMidDelivery},
	{"outage across restart", testWebhookOutageAcrossRestart},
	{"two instances", testWebhookTwoInstances},
}

// TestWebhook runs every scenario on every deployment (forEachStore:
// standalone, the shared Cluster, where the consumer group and every
// script must work per shard, and the Sentinel setup), each on an empty
// one.
func TestWebhook(t *testing.T) {
	for _, sc := range webhookScenarios {
		t.Run(sc.name, func(t *testing.T) { forEachStore(t, sc.run) })
	}
}

func TestWebhookProvision(t *testing.T) {
	t.Setenv("IDLINK_TEST_WH_SECRET", "secret-from-env-0123456789")
	t.Setenv("IDLINK_TEST_WH_URL", "https://hooks.example.com/idlink")
	tests := []struct {
		name string
		wh   Webhook
		want string // error substring; "" = valid
	}{
		{"valid", Webhook{URL: "https://example.com/hook", Secrets: []string{"0123456789abcdef"}}, ""},
		{"placeholders", Webhook{URL: "{env.IDLINK_TEST_WH_URL}", Secrets: []string{"{env.IDLINK_TEST_WH_SECRET}"}}, ""},
		{"no url", Webhook{Secrets: []string{"s"}}, "url"},
		{"ftp", Webhook{URL: "ftp://example.com/", Secrets: []string{"s"}}, "http"},
		{"relative", Webhook{URL: "/hook", Secrets: []string{"s"}}, "http"},
		{"no host", Webhook{URL: "http:///hook", Secrets: []string{"s"}}, "http"},
		{"fragment", Webhook{URL: "http://example.com/#x", Secrets: []string{"s"}}, "fragment"},
		{"unknown placeholder", Webhook{URL: "https://example.com/", Secrets: []string{"{env.IDLINK_TEST_NOT_SET}"}}, "empty"},
		{"no secret", Webhook{URL: "https://example.com/"}, "secret"},
		{"claim_after too short", Webhook{URL: "https://example.com/", Secrets: []string{"s"}, Timeout: caddy.Duration(10 * time.Second), ClaimAfter: caddy.Duration(15 * time.Second)}, "claim_after"},
		{"backoff max below base", Webhook{URL: "https://example.com/", Secrets: []string{"s"}, BackoffBase: caddy.Duration(time.Hour), BackoffMax: caddy.Duration(time.Minute)}, "backoff"},
		{"concurrency", Webhook{URL: "https://example.com/", Secrets: []string{"s"}, Concurrency: 65}, "concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wh := tt.wh
			a := &App{Tenants: map[string]*Tenant{"acme": {Webhook: &wh}}}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := a.Provision(ctx)
			if err == nil {
				err = a.Validate()
			}
			defer a.Cleanup()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				w := a.Tenants["acme"].Webhook
				if w.MaxAttempts != 10 || w.MaxAge != caddy.Duration(24*time.Hour) || w.Timeout != caddy.Duration(10*time.Second) ||
					w.ClaimAfter != caddy.Duration(30*time.Second) || w.Concurrency != 4 || len(w.secrets) != 1 {
					t.Errorf("defaults: %+v", w)
				}
				if strings.Contains(wh.URL, "{env") && w.url != "https://hooks.example.com/idlink" {
					t.Errorf("url = %q", w.url)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// Registering the metrics of successive configs (a reload) and twice in
// one registry neither fails nor panics, and the gauges report.
func TestMetricsRegistration(t *testing.T) {
	a := &App{now: time.Now, Tenants: map[string]*Tenant{"acme": {}}}
	a.Tenants["acme"].outbox = events.New(events.Config{Webhook: &events.Webhook{}, Now: time.Now})
	for range 2 {
		reg := prometheus.NewPedanticRegistry()
		if err := a.registerMetrics(reg); err != nil {
			t.Fatal(err)
		}
		if err := a.registerMetrics(reg); err != nil {
			t.Fatal(err)
		}
		n, err := testutil.GatherAndCount(reg, "idlink_webhook_oldest_pending_seconds")
		if err != nil || n != 1 {
			t.Fatalf("gauge count %d, %v", n, err)
		}
	}
	// (The gauges' values: events' TestGauges.)
}

// Redis stops answering while events are being delivered: calls time out,
// and once Redis is back (and leases of unacknowledged events end) every
// event is delivered.
func TestWebhookStoreOutage(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs redis-server")
	}
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	rcv.setAnswer(func(webhook.Event, int) int {
		time.Sleep(20 * time.Millisecond)
		return http.StatusOK
	})
	a := newEventsApp(t, r.URL(), rcv.srv.URL, clock, nil, nil)
	ids := produce(t, a, "outage", 30)
	waitUntil(t, "some deliveries", clock, 0, func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.delivered) >= 3
	})
	// A hang longer than the store timeout (1 s here): fetches, acks and
	// retries in flight time out.
	r.Pause()
	time.Sleep(1200 * time.Millisecond)
	r.Resume()
	// The unacknowledged events are taken again once their lease ends.
	// The clock advances slowly enough that a lease (claim_after, 6 s)
	// outlasts a delivery in real time too, as it does in production
	// (claim_after is at least twice the webhook timeout): a step of 1 s
	// every 5 ms let a lease end while its 20 ms delivery was still in
	// flight on a loaded machine, and another worker took the event.
	waitUntil(t, "every event delivered", clock, 20*time.Millisecond, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	waitUntil(t, "nothing pending", clock, time.Second, func() bool {
		p, d, dl := outboxState(t, a)
		return p == 0 && d == 0 && dl == 0
	})
}

// Delivery failures (a receiver answering 500, one that refuses
// connections) log nothing at error level, and no line holds a webhook
// secret, a signature, or the URL's path and query (which may carry a
// token).
func TestWebhookNoSecretsInLogs(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	rcv.setAnswer(func(webhook.Event, int) int { return http.StatusInternalServerError })
	refused := httptest.NewServer(http.NotFoundHandler())
	refused.Close()
	for _, url := range []string{rcv.srv.URL, refused.URL} {
		a := newEventsApp(t, eventsRedisURL(t), url+"/hook/path-secret?token=url-token-secret", clock,
			func(w *Webhook) { w.MaxAttempts = 2 },
			func(o *events.Outbox) { o.Logger = logger })
		produce(t, a, "logs", 3)
		waitUntil(t, "dead letters", clock, time.Minute, func() bool {
			_, _, dl := outboxState(t, a)
			return dl == 3
		})
		a.Stop()
	}
	if logs.FilterMessage("webhook event moved to the dead letters").Len() == 0 {
		t.Fatal("no dead-letter warning logged: the test would prove nothing")
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		if e.Level >= zapcore.ErrorLevel {
			t.Errorf("a delivery failure logged at %s: %s", e.Level, e.Message)
		}
		buf, _ := enc.EncodeEntry(e.Entry, e.Context)
		line := buf.String()
		for _, secret := range []string{whOldSecret, whNewSecret, "v1=", "url-token-secret", "path-secret"} {
			if strings.Contains(line, secret) {
				t.Errorf("log entry holds %q: %s", secret, line)
			}
		}
	}
}
