package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
	"github.com/idlink/idlink/webhook"

	"github.com/idlink/idlink/caddymodule/internal/events"
)

const (
	eventsAdminKey = "events-admin-key-0123456789"
	userReadKey    = "user-read-key-0123456789"
)

func keyDigest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// newTestAPI returns the idlink_api handler of tenant acme of app, with
// an events.admin key and a user.read key.
func newTestAPI(tb testing.TB, a *App) *API {
	tb.Helper()
	t := a.Tenants["acme"]
	t.APIKeys = []APIKey{
		{SHA256: keyDigest(eventsAdminKey), Scopes: []string{ScopeEventsAdmin}},
		{SHA256: keyDigest(userReadKey), Scopes: []string{ScopeUserRead}},
	}
	for i := range t.APIKeys {
		if err := t.APIKeys[i].provision(); err != nil {
			tb.Fatal(err)
		}
	}
	api := &API{Tenant: "acme", tenant: t, app: a, logger: zap.NewNop(), mux: http.NewServeMux()}
	for pattern, h := range apiRoutes {
		api.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { h(api, w, r) })
	}
	return api
}

// call sends a request to the API and decodes the JSON answer into out
// (if not nil).
func call(tb testing.TB, api *API, method, target, key, body string, out any) int {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	if err := api.ServeHTTP(w, r, nil); err != nil {
		tb.Fatal(err)
	}
	if out != nil && w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
			tb.Fatalf("answer %s: %v", w.Body, err)
		}
	}
	return w.Code
}

type deadLetterPage struct {
	DeadLetters []deadLetterJSON `json:"deadletters"`
	Total       int64            `json:"total"`
	Next        string           `json:"next"`
}

func TestDeadLettersAPI(t *testing.T) {
	clock := newEventsClock()
	rcv := newReceiver(t, clock)
	var up atomic.Bool
	rcv.setAnswer(func(webhook.Event, int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	a := newEventsApp(t, eventsRedisURL(t), rcv.srv.URL, clock, func(w *Webhook) { w.MaxAttempts = 1 }, nil)
	api := newTestAPI(t, a)
	ids := produce(t, a, "api", 25)
	waitUntil(t, "every event dead-lettered", clock, 0, func() bool {
		_, _, dl := outboxState(t, a)
		return dl == int64(len(ids))
	})

	// Access: an events.admin key only.
	for _, c := range []struct {
		method, target, key, body string
		want                      int
	}{
		{"GET", "/deadletters", "", "", http.StatusUnauthorized},
		{"GET", "/deadletters", "not-a-key", "", http.StatusUnauthorized},
		{"GET", "/deadletters", userReadKey, "", http.StatusForbidden},
		{"POST", "/deadletters/replay", userReadKey, `{"all":true}`, http.StatusForbidden},
		{"POST", "/deadletters/replay", "", `{"all":true}`, http.StatusUnauthorized},
		{"DELETE", "/deadletters", eventsAdminKey, "", http.StatusMethodNotAllowed},
		// Bad input.
		{"GET", "/deadletters?limit=0", eventsAdminKey, "", http.StatusBadRequest},
		{"GET", "/deadletters?limit=1001", eventsAdminKey, "", http.StatusBadRequest},
		{"GET", "/deadletters?limit=x", eventsAdminKey, "", http.StatusBadRequest},
		{"GET", "/deadletters?after=10-1-0", eventsAdminKey, "", http.StatusBadRequest},
		{"GET", "/deadletters?after=0a-1-0%20", eventsAdminKey, "", http.StatusBadRequest},
		{"GET", "/deadletters?after=" + strings.Repeat("9", 100), eventsAdminKey, "", http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"ids":[]}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"ids":["0a-1-0"],"all":true}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"ids":["idl:{acme:00}:events"]}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"ids":["0a-*"]}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"ids":["0a-1-0","-"]}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"ids":` + manyIDs(1001) + `}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `{"all":"yes"}`, http.StatusBadRequest},
		{"POST", "/deadletters/replay", eventsAdminKey, `[1]`, http.StatusBadRequest},
	} {
		if got := call(t, api, c.method, c.target, c.key, c.body, nil); got != c.want {
			t.Errorf("%s %s key=%q %s: %d, want %d", c.method, c.target, c.key, c.body, got, c.want)
		}
	}
	// Nothing was replayed by the refused calls.
	if _, _, dl := outboxState(t, a); dl != int64(len(ids)) {
		t.Fatalf("%d dead letters after refused calls", dl)
	}

	// Paging through all of them, 10 at a time.
	var listed []deadLetterJSON
	after := ""
	for range 10 {
		var page deadLetterPage
		if code := call(t, api, "GET", "/deadletters?limit=10&after="+after, eventsAdminKey, "", &page); code != 200 {
			t.Fatalf("list: %d", code)
		}
		if page.Total != int64(len(ids)) {
			t.Fatalf("total %d", page.Total)
		}
		listed = append(listed, page.DeadLetters...)
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	var eventIDs []string
	for _, d := range listed {
		eventIDs = append(eventIDs, d.EventID)
		if d.Type != "user.created" || d.Attempts != 1 || d.Reason != events.ReasonMaxAttempts || d.LastError != "HTTP 500: down" ||
			!strings.Contains(string(d.Data), `"external_id":"api-`) || d.ID[:2] != d.EventID[:2] || d.FailedAt.IsZero() {
			t.Errorf("dead letter %+v", d)
		}
	}
	slices.Sort(eventIDs)
	want := slices.Clone(ids)
	slices.Sort(want)
	if !slices.Equal(eventIDs, want) {
		t.Fatalf("listed %v\nwant %v", eventIDs, want)
	}

	// Replay two by id (and one unknown), then the rest with all.
	up.Store(true)
	var res struct {
		Replayed  int      `json:"replayed"`
		NotFound  []string `json:"not_found"`
		Remaining int64    `json:"remaining"`
	}
	body := fmt.Sprintf(`{"ids":[%q,%q,"0f-1-0"]}`, listed[0].ID, listed[1].ID)
	if code := call(t, api, "POST", "/deadletters/replay", eventsAdminKey, body, &res); code != 200 ||
		res.Replayed != 2 || !slices.Equal(res.NotFound, []string{"0f-1-0"}) {
		t.Fatalf("replay ids: %d %+v", code, res)
	}
	waitUntil(t, "two replayed events delivered", clock, 0, func() bool {
		return rcv.allDelivered([]string{listed[0].EventID, listed[1].EventID})
	})
	res.NotFound = nil
	if code := call(t, api, "POST", "/deadletters/replay", eventsAdminKey, `{"all":true}`, &res); code != 200 ||
		res.Replayed != len(ids)-2 || res.Remaining != 0 {
		t.Fatalf("replay all: %d %+v", code, res)
	}
	waitUntil(t, "every replayed event delivered", clock, 0, func() bool { return rcv.allDelivered(ids) })
	rcv.check()
	var page deadLetterPage
	if call(t, api, "GET", "/deadletters", eventsAdminKey, "", &page); page.Total != 0 || len(page.DeadLetters) != 0 {
		t.Fatalf("after replay: %+v", page)
	}
}

func manyIDs(n int) string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%q", store.EventID(i%store.Shards, fmt.Sprintf("%d-0", i+1)))
	}
	return "[" + strings.Join(ids, ",") + "]"
}

var e2eRuns atomic.Int32

// eventsCaddyfile is a Caddy with the admin endpoint, and a tenant whose
// webhook is hook, with timings short enough for a test.
func eventsCaddyfile(adminPort int, redisURL, tenant string, port int, hook string) string {
	redisLine := ""
	if redisURL != "" {
		redisLine = "redis " + redisURL
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	idlink {
		%s
		tenant %s {
			platform ios {
				secret {env.IDLINK_EV_PLATFORM}
			}
			default_platform ios
			webhook %s {
				secret {env.IDLINK_EV_OLD} {env.IDLINK_EV_NEW}
				max_attempts 3
				timeout 1s
				backoff 10ms 40ms
				poll_interval 20ms
				claim_after 2s
			}
			api_key %s events.admin
		}
	}
}

http://127.0.0.1:%d {
	handle_path /idlink/* {
		idlink_api %s
	}
	route {
		idlink %s
		respond "ok"
	}
}
`, adminPort, redisLine, tenant, hook, keyDigest(eventsAdminKey), port, tenant, tenant)
}

// TestEventsE2E runs the whole path in a real Caddy: users created by
// signed requests become events delivered to the webhook; while the
// receiver is down they become dead letters, listed and replayed through
// the API; the counters show on the admin /metrics; a config reload keeps
// delivering.
func TestEventsE2E(t *testing.T) {
	const platformSecret = "events-e2e-platform-secret-0123"
	t.Setenv("IDLINK_EV_PLATFORM", platformSecret)
	t.Setenv("IDLINK_EV_OLD", whOldSecret)
	t.Setenv("IDLINK_EV_NEW", whNewSecret)
	clock := newEventsClock() // the receiver's: Caddy runs on the real clock
	rcv := newReceiver(t, clock)
	var up atomic.Bool
	up.Store(true)
	rcv.setAnswer(func(webhook.Event, int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	redisURL := eventsRedisURL(t)
	adminPort, port := testenv.FreePort(t), testenv.FreePort(t)
	// A tenant of its own per run: the counters live as long as the process.
	tenant := fmt.Sprintf("shop%d", e2eRuns.Add(1))
	cfg := eventsCaddyfile(adminPort, redisURL, tenant, port, rcv.srv.URL)
	c := testenv.StartCaddy(t, cfg)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	request := func(method, path, key, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("X-Api-Key", key)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	createUser := func(ext string) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/", nil)
		req.Header.Set("X-External-Id", ext)
		req.Header.Set("X-External-Id-Signature", sign(platformSecret, ext))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("signed request for %s: %d", ext, resp.StatusCode)
		}
	}
	receivedFor := func(ext string) string {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for id, ev := range rcv.events {
			if strings.Contains(string(ev.Data), `"external_id":"`+ext+`"`) && ev.Tenant == tenant {
				return id
			}
		}
		return ""
	}
	delivered := func(exts ...string) func() bool {
		return func() bool {
			for _, ext := range exts {
				if id := receivedFor(ext); id == "" || rcv.deliveredCount(id) == 0 {
					return false
				}
			}
			return true
		}
	}

	createUser("alice")
	createUser("bob")
	waitUntil(t, "alice and bob delivered", clock, 0, delivered("alice", "bob"))

	// The receiver goes down: three attempts each, then dead letters.
	up.Store(false)
	createUser("carol")
	createUser("dave")
	var page deadLetterPage
	waitUntil(t, "two dead letters", clock, 0, func() bool {
		code, body := request("GET", "/idlink/deadletters", eventsAdminKey, "")
		return code == 200 && json.Unmarshal([]byte(body), &page) == nil && page.Total == 2
	})
	for _, d := range page.DeadLetters {
		if d.Attempts != 3 || d.Reason != events.ReasonMaxAttempts || d.LastError != "HTTP 503: down" || d.Type != "user.created" {
			t.Errorf("dead letter %+v", d)
		}
	}
	if code, _ := request("GET", "/idlink/deadletters", "", ""); code != http.StatusUnauthorized {
		t.Errorf("without a key: %d", code)
	}

	// The counters on Caddy's admin /metrics (they move just after the
	// step they count).
	wantMetrics := []string{
		`idlink_webhook_deliveries_total{result="delivered",tenant="` + tenant + `"} 2`,
		`idlink_webhook_deliveries_total{result="rejected",tenant="` + tenant + `"} 6`,
		`idlink_webhook_retries_total{tenant="` + tenant + `"} 4`,
		`idlink_webhook_dead_letters_total{reason="max_attempts",tenant="` + tenant + `"} 2`,
		`idlink_webhook_oldest_pending_seconds{tenant="` + tenant + `"}`,
		`idlink_webhook_dead_letters{tenant="` + tenant + `"}`,
		`idlink_events_outbox_entries{tenant="` + tenant + `"}`,
	}
	var metrics string
	waitUntil(t, "metrics", clock, 0, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort))
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics = string(b)
		for _, want := range wantMetrics {
			if !strings.Contains(metrics, want) {
				return false
			}
		}
		return true
	})

	// Back up; replay: both arrive, under the ids of their first attempts.
	up.Store(true)
	carol, dave := receivedFor("carol"), receivedFor("dave")
	code, body := request("POST", "/idlink/deadletters/replay", eventsAdminKey, `{"all":true}`)
	if code != 200 || !strings.Contains(body, `"replayed":2`) {
		t.Fatalf("replay: %d %s", code, body)
	}
	waitUntil(t, "carol and dave delivered", clock, 0, func() bool {
		return rcv.allDelivered([]string{carol, dave})
	})

	// A reload (same config: metrics registered again) keeps delivering.
	c.Reload(t, cfg)
	createUser("erin")
	waitUntil(t, "erin delivered after a reload", clock, 0, delivered("erin"))
	rcv.check()
}
