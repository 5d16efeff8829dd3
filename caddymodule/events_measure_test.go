package caddymodule

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"

	"github.com/idlink/idlink/caddymodule/internal/events"
)

// TestMeasureWebhookDelivery prints the figures of the README's webhook
// section: Redis commands an idle tenant costs, delivery latency of
// sparse events, and throughput through a backlog. It runs only with
// IDLINK_MEASURE=1 (it takes about 30 s):
//
//	IDLINK_MEASURE=1 go test -run TestMeasureWebhookDelivery -v ./caddymodule
func TestMeasureWebhookDelivery(t *testing.T) {
	if os.Getenv("IDLINK_MEASURE") == "" {
		t.Skip("set IDLINK_MEASURE=1")
	}
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs redis-server")
	}
	clock := &eventsClock{real: true}

	// Arrival times at the receiver, by event id.
	var mu sync.Mutex
	arrived := map[string]time.Time{}
	srv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		id := req.Header.Get("Idlink-Event-Id")
		mu.Lock()
		if _, ok := arrived[id]; !ok {
			arrived[id] = time.Now()
		}
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	hook := "http://" + ln.Addr().String() + "/"

	// defaults: poll_interval 1s, concurrency 4
	defaults := func(w *Webhook) { w.PollInterval = 0; w.Concurrency = 0 }
	tune := func(o *events.Outbox) {
		o.PollMin = max(time.Second/20, 5*time.Millisecond) // the default poll_interval's
		o.MaintainEvery = events.MaintainInterval
	}

	// 1. Idle cost.
	// The app names its connections, so that CLIENT LIST tells them apart.
	a := newEventsApp(t, r.URL()+"?client_name=idlink-measured", hook, clock, defaults, tune)
	time.Sleep(2 * time.Second)
	before := commandCalls(t, r.Client())
	const idle = 10 * time.Second
	time.Sleep(idle)
	after := commandCalls(t, r.Client())
	var parts []string
	total := 0
	for cmd, n := range after {
		if d := n - before[cmd]; d > 0 && cmd != "info" {
			parts = append(parts, fmt.Sprintf("%s=%d", cmd, d))
			total += d
		}
	}
	slices.Sort(parts)
	t.Logf("idle, 1 tenant, 1 instance, poll_interval 1s: %.1f Redis commands/s (%s over %v)",
		float64(total)/idle.Seconds(), strings.Join(parts, " "), idle)
	conns, idleConns := appConnections(t, r.Client(), "idlink-measured")
	t.Logf("idle: the app holds %d connections (%d idle for 1s or more)", conns, idleConns)

	// 2. Latency of sparse events (one every 700 ms).
	var lat []time.Duration
	for i := range 15 {
		start := time.Now()
		ids := produce(t, a, fmt.Sprintf("lat-%d", i), 1)
		waitUntil(t, "arrival", clock, 0, func() bool {
			mu.Lock()
			defer mu.Unlock()
			_, ok := arrived[ids[0]]
			return ok
		})
		mu.Lock()
		lat = append(lat, arrived[ids[0]].Sub(start))
		mu.Unlock()
		time.Sleep(700 * time.Millisecond)
	}
	slices.Sort(lat)
	t.Logf("latency of sparse events (poll_interval 1s): p50 %v, p90 %v, max %v",
		lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*9/10].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	a.Stop()

	// 3. Throughput through a backlog.
	for _, c := range []struct {
		instances, concurrency int
	}{{1, 4}, {1, 16}, {2, 4}} {
		if err := r.Client().FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		clear(arrived)
		mu.Unlock()
		const n = 3000
		// The backlog is appended before the instances start.
		producer := newEventsApp(t, r.URL(), hook, clock, func(w *Webhook) { w.Concurrency = 1 }, nil)
		producer.Stop()
		tn := producer.Tenants["acme"]
		pipe := r.Client().Pipeline()
		for i := range n {
			shard := i % store.Shards
			pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: tn.id.Keys().Events(shard), Values: []any{
				"type", "user.created", "tenant", "acme", "occurred_at", strconv.FormatInt(time.Now().UnixMilli(), 10), "data", `{"n":` + strconv.Itoa(i) + `}`,
			}})
		}
		if _, err := pipe.Exec(context.Background()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var apps []*App
		for range c.instances {
			apps = append(apps, newEventsApp(t, r.URL(), hook, clock, func(w *Webhook) { w.Concurrency = c.concurrency; w.PollInterval = 0 }, tune))
		}
		waitUntil(t, "backlog delivered", clock, 0, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(arrived) >= n
		})
		el := time.Since(start)
		t.Logf("backlog of %d events, %d instance(s), concurrency %d: %v, %.0f events/s",
			n, c.instances, c.concurrency, el.Round(time.Millisecond), float64(n)/el.Seconds())
		for _, a := range apps {
			a.Stop()
		}
	}
}

// commandCalls reads INFO commandstats: calls by command.
func commandCalls(t *testing.T, c *redis.Client) map[string]int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out
}

// appConnections counts the connections named name that the server
// holds (CLIENT LIST), and those of them idle for a second or more.
func appConnections(t *testing.T, c *redis.Client, name string) (conns, idle int) {
	t.Helper()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(list, "\n") {
		fields := map[string]string{}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			fields[k] = v
		}
		if fields["name"] != name {
			continue
		}
		conns++
		if s, _ := strconv.Atoi(fields["idle"]); s >= 1 {
			idle++
		}
	}
	return conns, idle
}
