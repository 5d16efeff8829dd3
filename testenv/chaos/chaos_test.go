// Package chaos is idlink's chaos harness: two Caddy processes (idlink's
// built binary) share a Redis Cluster of 3 masters with a replica each;
// a bounded load of signed requests (new external ids, whose first sight
// writes to Redis, and known ones) runs against both for a while, and a
// master is killed in the middle. It prints the requests served, the 503s
// and when they happened, the latencies and how long the cluster took to
// heal, then checks that the store is consistent with every answer given
// (see checks).
//
//	go test ./testenv/chaos -run TestChaos -v -count=1 -chaos.duration=30s
//	go test ./testenv/chaos -run TestChaos -v -count=1 -chaos.duration=30s -chaos.durability=1
//
// Without -chaos.duration a 10-second smoke run (kill at 2s) runs in a
// normal go test (not with -short), so that the harness itself is tested.
package chaos

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

var (
	duration   = flag.Duration("chaos.duration", 0, "length of the load (0: a 10s smoke run)")
	killAt     = flag.Duration("chaos.kill-at", 0, "when to kill a master, from the start of the load (0: a fifth of the duration)")
	workers    = flag.Int("chaos.workers", 8, "concurrent clients (each sends its next request when the previous one is answered)")
	newShare   = flag.Float64("chaos.new", 0.3, "share of requests that name a new external id (a write on first sight)")
	durability = flag.Int("chaos.durability", 0, "durability replicas N for idlink (0: off)")
	timeout    = flag.Duration("chaos.redis-timeout", 250*time.Millisecond, "idlink's redis_timeout")
)

const (
	tenant = "chaos"
	secret = "chaos-secret-0123456789abcdef"
	// clientTimeout is when the load client gives up on a request: a
	// request that reaches it counts as hung.
	clientTimeout = 10 * time.Second
)

func sign(ext string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ext))
	return hex.EncodeToString(m.Sum(nil))
}

// answer is one request of the run.
type answer struct {
	instance int
	ext      string
	isNew    bool // the external id had not been sent before
	at       time.Duration
	latency  time.Duration
	status   int // 0: no HTTP answer (transport error or client timeout)
	user     string
	body     string
}

func caddyfile(redisURL string, port int) string {
	dur := ""
	if *durability > 0 {
		dur = "durability replicas " + strconv.Itoa(*durability)
	}
	return fmt.Sprintf(`{
	idlink {
		redis %s
		redis_timeout %s
		%s
		tenant %s {
			platform ios {
				secret {env.IDLINK_CHAOS_SECRET}
			}
			default_platform ios
		}
	}
}
http://127.0.0.1:%d {
	route {
		idlink %s
		respond "{idlink.user_id} {idlink.source}" 200
	}
}
`, redisURL, *timeout, dur, tenant, port, tenant)
}

func TestChaos(t *testing.T) {
	run, kill := *duration, *killAt
	if run == 0 {
		if testing.Short() {
			t.Skip("the chaos smoke run takes ~20s")
		}
		run, kill = 10*time.Second, 2*time.Second
	}
	if kill == 0 {
		kill = run / 5
	}
	if kill >= run {
		t.Fatalf("-chaos.kill-at %v must be within -chaos.duration %v", kill, run)
	}
	c := testenv.StartCluster(t, 3, 1)
	t.Setenv("IDLINK_CHAOS_SECRET", secret)
	var bases []string
	var procs []*testenv.Process
	for range 2 {
		port := testenv.FreePort(t)
		base := fmt.Sprintf("http://127.0.0.1:%d/", port)
		procs = append(procs, testenv.StartCaddyProcess(t, caddyfile(c.URL(), port), base))
		bases = append(bases, base)
	}
	defer func() {
		if t.Failed() {
			for i, p := range procs {
				t.Logf("--- Caddy %d ---\n%s", i, tail(p.Logs(), 4000))
			}
		}
	}()

	tr := &http.Transport{MaxIdleConnsPerHost: *workers, MaxConnsPerHost: *workers}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: clientTimeout}
	start := time.Now()
	send := func(instance int, ext string, isNew bool) answer {
		a := answer{instance: instance, ext: ext, isNew: isNew, at: time.Since(start)}
		req, _ := http.NewRequest("GET", bases[instance], nil)
		req.Header.Set("X-External-Id", ext)
		req.Header.Set("X-External-Id-Signature", sign(ext))
		req.Header.Set("X-Platform-User-Id", "u_spoofed")
		t0 := time.Now()
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			a.status, a.body = resp.StatusCode, string(body)
			if a.status == 200 {
				a.user, _, _ = strings.Cut(a.body, " ")
			}
		} else {
			a.body = err.Error()
		}
		a.latency = time.Since(t0)
		return a
	}

	// Known users: each resolved through one instance, so the other one's
	// first request for it reads it from Redis.
	var known knownSet
	for i := range 200 {
		ext := "known-" + strconv.Itoa(i)
		if a := send(i%2, ext, true); a.status != 200 || !strings.HasPrefix(a.user, "u_") {
			t.Fatalf("warm-up: %+v", a)
		}
		known.add(ext)
	}

	start = time.Now()
	var (
		mu      sync.Mutex
		answers []answer
		nextNew atomic.Int64
		wg      sync.WaitGroup
	)
	for w := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var mine []answer
			for time.Since(start) < run {
				instance := rng.IntN(2)
				var a answer
				if rng.Float64() < *newShare {
					a = send(instance, "new-"+strconv.FormatInt(nextNew.Add(1), 10), true)
					if a.status == 200 {
						known.add(a.ext)
					}
				} else {
					a = send(instance, known.pick(rng), false)
				}
				mine = append(mine, a)
			}
			mu.Lock()
			answers = append(answers, mine...)
			mu.Unlock()
		}()
	}

	time.Sleep(time.Until(start.Add(kill)))
	killed := c.KillMaster(0)
	killedAt := time.Since(start)
	healErr := c.WaitHealthy(60 * time.Second)
	healedAt := time.Since(start)
	wg.Wait()
	end := time.Since(start)
	if healErr != nil {
		t.Fatalf("the cluster did not heal: %v", healErr)
	}

	rep := summarize(answers)
	rep.killed, rep.killedAt, rep.healedAt, rep.end = killed, killedAt, healedAt, end
	for _, p := range procs {
		rep.shortfallLogs += strings.Count(p.Logs(), "not acknowledged by enough replicas")
	}
	t.Log(rep.String())
	fmt.Printf("CHAOS requests=%d ok=%d unavailable=%d other=%d hung=%d max=%v p99=%v gap=%v healed_after_kill=%v last_503_after_kill=%v durability=%d\n",
		rep.total, rep.ok, rep.unavailable, rep.other, rep.hung, rep.max.Round(time.Millisecond), rep.p99.Round(time.Millisecond),
		rep.gap().Round(time.Millisecond), (healedAt - killedAt).Round(time.Millisecond), rep.last503AfterKill().Round(time.Millisecond), *durability)

	// No hung request, no error other than 503 store_unavailable, and a
	// recovery well before the end of the run.
	if rep.hung > 0 || rep.other > 0 {
		t.Errorf("%d hung requests and %d unexpected answers, e.g. %v", rep.hung, rep.other, rep.examples)
	}
	if limit := *timeout + time.Second; rep.max > limit {
		t.Errorf("max latency %v over %v: a request outlived the store deadline", rep.max, limit)
	}
	if rep.unavailable == 0 {
		t.Errorf("no 503 at all: the kill did not hit the load, the run proves nothing")
	}
	if rep.last503 > healedAt+5*time.Second || rep.last503 > end-time.Second {
		t.Errorf("503s went on until %v (healed at %v, end %v): no automatic recovery", rep.last503, healedAt, end)
	}
	if rep.newAfterRecovery == 0 {
		t.Errorf("no new user was served after the last 503: no evidence of recovery")
	}

	// The final consistency check, through a fresh client.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: 3})
	defer rdb.Close()
	w := &world{ctx: context.Background(), rdb: rdb, keys: store.NewKeys(tenant), answers: answers}
	total := 0
	for _, chk := range checks {
		bad := chk.run(w)
		total += len(bad)
		status := "ok"
		if len(bad) > 0 {
			status = fmt.Sprintf("%d violations, e.g. %s", len(bad), strings.Join(bad[:min(len(bad), 5)], "; "))
		}
		t.Logf("consistency: %s: %s", chk.name, status)
	}
	fmt.Printf("CHAOS consistency external_ids=%d violations=%d\n", len(w.acked()), total)
	if total > 0 {
		t.Errorf("the consistency check found %d violations", total)
	}
}

// knownSet is the external ids that have been answered with a user.
type knownSet struct {
	mu  sync.Mutex
	ids []string
}

func (k *knownSet) add(ext string) {
	k.mu.Lock()
	k.ids = append(k.ids, ext)
	k.mu.Unlock()
}

func (k *knownSet) pick(rng *rand.Rand) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ids[rng.IntN(len(k.ids))]
}

// report is what the run measured.
type report struct {
	total, ok, okNew, unavailable, other, hung int
	newAfterRecovery                           int
	shortfallLogs                              int // durability warnings in the Caddy logs (at most one a second each)
	max, p50, p99, p999                        time.Duration
	first503, last503                          time.Duration
	killed                                     string
	killedAt, healedAt, end                    time.Duration
	perSecond                                  []second
	examples                                   []string
}

type second struct{ requests, unavailable int }

func summarize(answers []answer) report {
	var r report
	r.first503 = -1
	sort.Slice(answers, func(i, j int) bool { return answers[i].at < answers[j].at })
	var lat []time.Duration
	for _, a := range answers {
		r.total++
		lat = append(lat, a.latency)
		sec := int(a.at / time.Second)
		for len(r.perSecond) <= sec {
			r.perSecond = append(r.perSecond, second{})
		}
		r.perSecond[sec].requests++
		switch {
		case a.status == 200 && strings.HasPrefix(a.user, "u_") && !strings.Contains(a.body, "spoofed"):
			r.ok++
			if a.isNew {
				r.okNew++
			}
		case a.status == 503 && strings.Contains(a.body, `"error":"store_unavailable"`):
			r.unavailable++
			r.perSecond[sec].unavailable++
			if r.first503 < 0 {
				r.first503 = a.at
			}
			r.last503 = max(r.last503, a.at+a.latency)
		case a.status == 0 && a.latency >= clientTimeout:
			r.hung++
			r.examples = append(r.examples, fmt.Sprintf("%+v", a))
		default:
			r.other++
			if len(r.examples) < 5 {
				r.examples = append(r.examples, fmt.Sprintf("%+v", a))
			}
		}
	}
	for _, a := range answers {
		if a.isNew && a.status == 200 && a.at > r.last503 {
			r.newAfterRecovery++
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if n := len(lat); n > 0 {
		r.max, r.p50, r.p99, r.p999 = lat[n-1], lat[n/2], lat[n*99/100], lat[n*999/1000]
	}
	return r
}

func (r report) gap() time.Duration {
	if r.first503 < 0 {
		return 0
	}
	return r.last503 - r.first503
}

func (r report) last503AfterKill() time.Duration {
	if r.first503 < 0 {
		return 0
	}
	return r.last503 - r.killedAt
}

func (r report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "load %v, %d clients, %.0f%% new external ids, 2 Caddy instances, cluster 3 masters + 1 replica each, redis_timeout %v, durability %d\n",
		r.end.Round(time.Millisecond), *workers, *newShare*100, *timeout, *durability)
	fmt.Fprintf(&b, "killed master %s at %v; cluster healthy again at %v (%v after the kill)\n",
		r.killed, r.killedAt.Round(time.Millisecond), r.healedAt.Round(time.Millisecond), (r.healedAt - r.killedAt).Round(time.Millisecond))
	fmt.Fprintf(&b, "requests %d: served %d (%d first sights), 503 store_unavailable %d, hung %d, other %d\n",
		r.total, r.ok, r.okNew, r.unavailable, r.hung, r.other)
	if r.first503 >= 0 {
		fmt.Fprintf(&b, "503s from %v to %v (%v; the last one %v after the kill); %d first sights served after the last 503\n",
			r.first503.Round(time.Millisecond), r.last503.Round(time.Millisecond), r.gap().Round(time.Millisecond),
			r.last503AfterKill().Round(time.Millisecond), r.newAfterRecovery)
	}
	if *durability > 0 {
		fmt.Fprintf(&b, "durability shortfall warnings logged (at most 1/s per instance): %d\n", r.shortfallLogs)
	}
	fmt.Fprintf(&b, "latency p50 %v, p99 %v, p99.9 %v, max %v\n", r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond),
		r.p999.Round(time.Microsecond), r.max.Round(time.Microsecond))
	b.WriteString("per second (requests/503s):")
	for i, s := range r.perSecond {
		fmt.Fprintf(&b, " %d:%d/%d", i, s.requests, s.unavailable)
	}
	return b.String()
}

// world is what the consistency checks look at: every answer of the run
// and the store as it is after it.
type world struct {
	ctx     context.Context
	rdb     *redis.ClusterClient
	keys    *store.Keys
	answers []answer

	once  sync.Once
	users map[string]map[string]bool // external id → users it was answered with
}

// acked returns, for every external id answered 200, the users it was
// answered with, on either instance.
func (w *world) acked() map[string]map[string]bool {
	w.once.Do(func() {
		w.users = map[string]map[string]bool{}
		for _, a := range w.answers {
			if a.status != 200 {
				continue
			}
			if w.users[a.ext] == nil {
				w.users[a.ext] = map[string]bool{}
			}
			w.users[a.ext][a.user] = true
		}
	})
	return w.users
}

// get reads a string key, retrying while the client finds its way around
// the healed cluster.
func (w *world) get(key string) (string, error) {
	var v string
	var err error
	for range 20 {
		v, err = w.rdb.Get(w.ctx, key).Result()
		if err == nil || err == redis.Nil {
			return v, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", err
}

// A check is one consistency predicate over the world: it returns its
// violations. When links and session limits are load-tested here, their
// predicates go in this list (e.g. "every acknowledged link is present":
// the install points to the user answered; "no user above its session
// limit": for every user, live sessions <= max).
type check struct {
	name string
	run  func(w *world) []string
}

var checks = []check{
	{"one user per external id, on both instances", func(w *world) []string {
		var bad []string
		for ext, users := range w.acked() {
			if len(users) > 1 {
				bad = append(bad, fmt.Sprintf("%s answered with %d users %v", ext, len(users), keys(users)))
			}
		}
		return bad
	}},
	{"every acknowledged mapping is in Redis", func(w *world) []string {
		var bad []string
		for ext, users := range w.acked() {
			got, err := w.get(w.keys.External(ext))
			if err != nil {
				return append(bad, fmt.Sprintf("reading %s: %v", ext, err))
			}
			for u := range users {
				if got != u {
					bad = append(bad, fmt.Sprintf("%s was answered with %s, Redis holds %q", ext, u, got))
				}
			}
		}
		return bad
	}},
	{"every mapped user records its external id", func(w *world) []string {
		var bad []string
		for ext, users := range w.acked() {
			for u := range users {
				shard, err := store.ParseID(store.KindUser, u)
				if err != nil {
					bad = append(bad, fmt.Sprintf("%s: malformed user id %q", ext, u))
					continue
				}
				var got string
				for range 20 {
					if got, err = w.rdb.HGet(w.ctx, w.keys.User(shard, u), "ext").Result(); err == nil || err == redis.Nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if got != ext {
					bad = append(bad, fmt.Sprintf("user %s records external id %q, want %q (%v)", u, got, ext, err))
				}
			}
		}
		return bad
	}},
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]" + s[len(s)-n:]
}
