// Package chaos is idlink's chaos harness: two Caddy processes (idlink's
// built binary) share a Redis Cluster of 3 masters with a replica each;
// a bounded load runs against both for a while, and a master is killed in
// the middle. The load mixes
//
//   - signed requests through the idlink handler (new external ids, whose
//     first sight writes to Redis, and known ones);
//   - install + link flows: POST /installs, then several of those installs
//     linked concurrently, through both instances, to one external id (a
//     new one, or one already known);
//   - logins (POST /sessions) of a few users over and over, under a limit
//     of 2 live sessions per user, so that nearly every login evicts.
//
// It prints the requests served, the 503s and when they happened, the
// latencies and how long the cluster took to heal, then checks that the
// store is consistent with every answer given (see checks).
//
//	go test ./testenv/chaos -run TestChaos -v -count=1 -chaos.duration=30s
//	go test ./testenv/chaos -run TestChaos -v -count=1 -chaos.duration=30s -chaos.durability=1
//
// Without -chaos.duration a 10-second smoke run (kill at 2s) runs in a
// normal go test (not with -short), so that the harness itself is tested.
package chaos

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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
	duration     = flag.Duration("chaos.duration", 0, "length of the load (0: a 10s smoke run)")
	killAt       = flag.Duration("chaos.kill-at", 0, "when to kill a master, from the start of the load (0: a fifth of the duration)")
	workers      = flag.Int("chaos.workers", 8, "concurrent clients (each sends its next request when the previous one is answered)")
	newShare     = flag.Float64("chaos.new", 0.3, "share of resolution requests that name a new external id (a write on first sight)")
	linkShare    = flag.Float64("chaos.links", 0.15, "share of a client's turns that are an install + link flow")
	loginShare   = flag.Float64("chaos.logins", 0.25, "share of a client's turns that are a login (POST /sessions)")
	sessionUsers = flag.Int("chaos.session-users", 12, "how many users log in (over and over)")
	durability   = flag.Int("chaos.durability", 0, "durability replicas N for idlink (0: off)")
	timeout      = flag.Duration("chaos.redis-timeout", 250*time.Millisecond, "idlink's redis_timeout")
)

const (
	tenant = "chaos"
	secret = "chaos-secret-0123456789abcdef"
	// apiKey is the tenant's API key (scopes user.link user.read); the
	// Caddyfile holds its SHA-256 only.
	apiKey = "chaos-api-key-0123456789abcdef0123456789"
	// maxSessions is the tenant's session limit.
	maxSessions = 2
	// clientTimeout is when the load client gives up on a request: a
	// request that reaches it counts as hung.
	clientTimeout = 10 * time.Second
	// lossWindow is how long before the kill a write acknowledged by the
	// killed master may not have reached its replica: asynchronous
	// replication ships a write in the event-loop turn that answers it, so
	// anything older than this (on a loaded 2-core machine) is a real
	// violation, not a write lost in the failover.
	lossWindow = time.Second
)

func sign(ext string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ext))
	return hex.EncodeToString(m.Sum(nil))
}

func apiKeyDigest() string {
	sum := sha256.Sum256([]byte(apiKey))
	return hex.EncodeToString(sum[:])
}

// op is the kind of a request of the run.
type op int

const (
	opResolve op = iota // GET / with a signed external id (the idlink handler)
	opInstall           // POST /idlink/installs
	opLink              // POST /idlink/users/{install}/link
	opLogin             // POST /idlink/sessions
	numOps
)

var opNames = [numOps]string{"resolve", "install", "link", "login"}

// okStatus is the status of an acknowledged answer of each op.
var okStatus = [numOps]int{200, 201, 200, 201}

// answer is one request of the run.
type answer struct {
	op       op
	instance int
	ext      string
	isNew    bool // the external id had not been sent before
	install  string
	at       time.Duration
	latency  time.Duration
	status   int // 0: no HTTP answer (transport error or client timeout)
	user     string
	session  string   // login: the session started
	evicted  []string // login: the sessions it ended
	created  bool     // link
	merged   string   // link: merged_from
	body     string
}

// acked reports whether the answer acknowledged its request.
func (a answer) acked() bool {
	return a.status == okStatus[a.op] && strings.HasPrefix(a.user, "u_") && !strings.Contains(a.body, "spoofed")
}

// end is when the answer arrived.
func (a answer) end() time.Duration { return a.at + a.latency }

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
			api_key %s user.link user.read
			sessions {
				max %d
			}
		}
	}
}
http://127.0.0.1:%d {
	handle_path /idlink/* {
		idlink_api %s
	}
	handle {
		route {
			idlink %s
			respond "{idlink.user_id} {idlink.source}" 200
		}
	}
}
`, redisURL, *timeout, dur, tenant, apiKeyDigest(), maxSessions, port, tenant, tenant)
}

// client sends the run's requests to the instances.
type client struct {
	http  *http.Client
	bases []string
	start time.Time
}

// do sends one request and fills the answer's timing, status and body.
func (c *client) do(a *answer, method, path string, body []byte, hdr map[string]string) {
	a.at = time.Since(c.start)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, c.bases[a.instance]+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	t0 := time.Now()
	resp, err := c.http.Do(req)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		a.status, a.body = resp.StatusCode, string(b)
	} else {
		a.body = err.Error()
	}
	a.latency = time.Since(t0)
}

func (c *client) resolve(instance int, ext string, isNew bool) answer {
	a := answer{op: opResolve, instance: instance, ext: ext, isNew: isNew}
	c.do(&a, "GET", "", nil, map[string]string{
		"X-External-Id": ext, "X-External-Id-Signature": sign(ext), "X-Platform-User-Id": "u_spoofed",
	})
	if a.status == 200 {
		a.user, _, _ = strings.Cut(a.body, " ")
	}
	return a
}

func (c *client) createInstall(instance int) answer {
	a := answer{op: opInstall, instance: instance}
	c.do(&a, "POST", "idlink/installs", nil, nil)
	if a.status == 201 {
		var r struct {
			InstallID string `json:"install_id"`
			UserID    string `json:"user_id"`
		}
		if json.Unmarshal([]byte(a.body), &r) == nil {
			a.install, a.user = r.InstallID, r.UserID
		}
	}
	return a
}

func (c *client) link(instance int, install, ext string, isNew bool) answer {
	a := answer{op: opLink, instance: instance, install: install, ext: ext, isNew: isNew}
	body, _ := json.Marshal(map[string]string{"external_id": ext})
	c.do(&a, "POST", "idlink/users/"+install+"/link", body, map[string]string{"Authorization": "Bearer " + apiKey})
	if a.status == 200 {
		var r struct {
			UserID     string `json:"user_id"`
			Created    bool   `json:"created"`
			MergedFrom string `json:"merged_from"`
		}
		if json.Unmarshal([]byte(a.body), &r) == nil {
			a.user, a.created, a.merged = r.UserID, r.Created, r.MergedFrom
		}
	}
	return a
}

func (c *client) login(instance int, ext string) answer {
	a := answer{op: opLogin, instance: instance, ext: ext}
	c.do(&a, "POST", "idlink/sessions", nil, map[string]string{
		"X-External-Id": ext, "X-External-Id-Signature": sign(ext),
	})
	if a.status == 201 {
		var r struct {
			UserID    string   `json:"user_id"`
			SessionID string   `json:"session_id"`
			Evicted   []string `json:"evicted"`
		}
		if json.Unmarshal([]byte(a.body), &r) == nil && strings.HasPrefix(r.SessionID, "s_") {
			a.user, a.session, a.evicted = r.UserID, r.SessionID, r.Evicted
		}
	}
	return a
}

// linkFlow creates 1 to 3 installs and links them concurrently to one
// external id (a new one half of the time, else a known one), spreading
// the links over both instances.
func (c *client) linkFlow(rng *rand.Rand, known *knownSet, nextLink *atomic.Int64) []answer {
	ext, isNew := "", rng.IntN(2) == 0
	if isNew {
		ext = "link-" + strconv.FormatInt(nextLink.Add(1), 10)
	} else {
		ext = known.pick(rng)
	}
	var out []answer
	var installs []string
	for range 1 + rng.IntN(3) {
		a := c.createInstall(rng.IntN(2))
		out = append(out, a)
		if a.acked() && a.install != "" {
			installs = append(installs, a.install)
		}
	}
	links := make([]answer, len(installs))
	first := rng.IntN(2)
	var wg sync.WaitGroup
	for i, inst := range installs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			links[i] = c.link((first+i)%2, inst, ext, isNew)
		}()
	}
	wg.Wait()
	for _, a := range links {
		if a.acked() && isNew {
			known.add(ext)
			break
		}
	}
	return append(out, links...)
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

	// Link flows run up to 3 links at once per client.
	tr := &http.Transport{MaxIdleConnsPerHost: 3 * *workers, MaxConnsPerHost: 3 * *workers}
	defer tr.CloseIdleConnections()
	cl := &client{http: &http.Client{Transport: tr, Timeout: clientTimeout}, bases: bases, start: time.Now()}

	// Known users: each resolved through one instance, so the other one's
	// first request for it reads it from Redis.
	var known knownSet
	for i := range 200 {
		ext := "known-" + strconv.Itoa(i)
		if a := cl.resolve(i%2, ext, true); a.status != 200 || !strings.HasPrefix(a.user, "u_") {
			t.Fatalf("warm-up: %+v", a)
		}
		known.add(ext)
	}
	// Which shards the master to be killed serves: a write acknowledged in
	// one of them just before the kill may be lost.
	killedShards, err := shardMasters(c.Client())
	if err != nil {
		t.Fatalf("reading the slot map: %v", err)
	}

	cl.start = time.Now()
	start := cl.start
	var (
		mu       sync.Mutex
		answers  []answer
		nextNew  atomic.Int64
		nextLink atomic.Int64
		wg       sync.WaitGroup
	)
	for w := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var mine []answer
			for time.Since(start) < run {
				instance := rng.IntN(2)
				switch r := rng.Float64(); {
				case r < *linkShare:
					mine = append(mine, cl.linkFlow(rng, &known, &nextLink)...)
				case r < *linkShare+*loginShare:
					mine = append(mine, cl.login(instance, "sess-"+strconv.Itoa(rng.IntN(*sessionUsers))))
				case rng.Float64() < *newShare:
					a := cl.resolve(instance, "new-"+strconv.FormatInt(nextNew.Add(1), 10), true)
					if a.status == 200 {
						known.add(a.ext)
					}
					mine = append(mine, a)
				default:
					mine = append(mine, cl.resolve(instance, known.pick(rng), false))
				}
			}
			mu.Lock()
			answers = append(answers, mine...)
			mu.Unlock()
		}()
	}

	time.Sleep(time.Until(start.Add(kill)))
	killStart := time.Since(start)
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
	for o := range numOps {
		if rep.ops[o].ok == 0 {
			t.Errorf("no %s was acknowledged: the run proves nothing about it", opNames[o])
		}
	}

	// The final consistency check, through a fresh client.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: 3})
	defer rdb.Close()
	w := &world{ctx: context.Background(), rdb: rdb, keys: store.NewKeys(tenant), answers: answers, client: cl,
		killStart: killStart, killedAt: killedAt, killedShards: map[int]bool{}}
	for s, addr := range killedShards {
		if addr == killed {
			w.killedShards[s] = true
		}
	}
	nbad, lost := 0, 0
	for _, chk := range checks {
		vs := chk.run(w)
		var bad, window []string
		for _, v := range vs {
			if v.window && *durability == 0 {
				window = append(window, v.msg)
			} else {
				bad = append(bad, v.msg)
			}
		}
		nbad += len(bad)
		lost += len(window)
		status := "ok"
		if len(bad) > 0 {
			status = fmt.Sprintf("%d violations, e.g. %s", len(bad), strings.Join(bad[:min(len(bad), 5)], "; "))
		}
		if len(window) > 0 {
			status += fmt.Sprintf(" (%d lost in the failover window, expected without durability, e.g. %s)",
				len(window), strings.Join(window[:min(len(window), 3)], "; "))
		}
		t.Logf("consistency: %s: %s", chk.name, status)
	}
	fmt.Printf("CHAOS consistency external_ids=%d links=%d logins=%d session_users=%d violations=%d lost_in_failover_window=%d\n",
		len(w.acked()), rep.ops[opLink].ok, rep.ops[opLogin].ok, len(w.sessionUsers()), nbad, lost)
	if nbad > 0 {
		t.Errorf("the consistency check found %d violations", nbad)
	}
	if lost > 0 {
		t.Logf("%d acknowledged writes were lost in the failover window (asynchronous replication; README \"What a failover can lose\"); with -chaos.durability=1 they count as violations", lost)
	}

	// The checks themselves: break the store (and one answer) in one way
	// per check; each must report it.
	if !t.Failed() {
		selfTest(t, w)
	}
}

// shardMasters maps each shard of the tenant to the address of the master
// serving its slot.
func shardMasters(rdb *redis.ClusterClient) (map[int]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	slots, err := rdb.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, err
	}
	k := store.NewKeys(tenant)
	out := map[int]string{}
	for s := range store.Shards {
		slot, err := rdb.ClusterKeySlot(ctx, k.Events(s)).Result()
		if err != nil {
			return nil, err
		}
		for _, r := range slots {
			if int64(r.Start) <= slot && slot <= int64(r.End) && len(r.Nodes) > 0 {
				out[s] = r.Nodes[0].Addr
			}
		}
	}
	return out, nil
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
	ops                                        [numOps]opCount
	evictions                                  int
	max, p50, p99, p999                        time.Duration
	first503, last503                          time.Duration
	killed                                     string
	killedAt, healedAt, end                    time.Duration
	perSecond                                  []second
	examples                                   []string
}

type opCount struct{ total, ok, unavailable int }

type second struct{ requests, unavailable int }

func summarize(answers []answer) report {
	var r report
	r.first503 = -1
	sort.Slice(answers, func(i, j int) bool { return answers[i].at < answers[j].at })
	var lat []time.Duration
	for _, a := range answers {
		r.total++
		r.ops[a.op].total++
		lat = append(lat, a.latency)
		sec := int(a.at / time.Second)
		for len(r.perSecond) <= sec {
			r.perSecond = append(r.perSecond, second{})
		}
		r.perSecond[sec].requests++
		switch {
		case a.acked() && (a.op != opLogin || a.session != ""):
			r.ok++
			r.ops[a.op].ok++
			r.evictions += len(a.evicted)
			if a.isNew && a.op == opResolve {
				r.okNew++
			}
		case a.status == 503 && strings.Contains(a.body, `"error":"store_unavailable"`):
			r.unavailable++
			r.ops[a.op].unavailable++
			r.perSecond[sec].unavailable++
			if r.first503 < 0 {
				r.first503 = a.at
			}
			r.last503 = max(r.last503, a.end())
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
		if a.op == opResolve && a.isNew && a.status == 200 && a.at > r.last503 {
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
	fmt.Fprintf(&b, "load %v, %d clients (turns: %.0f%% link flows, %.0f%% logins of %d users, the rest resolutions with %.0f%% new external ids), 2 Caddy instances, cluster 3 masters + 1 replica each, redis_timeout %v, durability %d, sessions max %d\n",
		r.end.Round(time.Millisecond), *workers, *linkShare*100, *loginShare*100, *sessionUsers, *newShare*100, *timeout, *durability, maxSessions)
	fmt.Fprintf(&b, "killed master %s at %v; cluster healthy again at %v (%v after the kill)\n",
		r.killed, r.killedAt.Round(time.Millisecond), r.healedAt.Round(time.Millisecond), (r.healedAt - r.killedAt).Round(time.Millisecond))
	fmt.Fprintf(&b, "requests %d: served %d (%d first sights), 503 store_unavailable %d, hung %d, other %d\n",
		r.total, r.ok, r.okNew, r.unavailable, r.hung, r.other)
	for o := range numOps {
		fmt.Fprintf(&b, "  %-8s %6d sent, %6d acknowledged, %4d × 503\n", opNames[o], r.ops[o].total, r.ops[o].ok, r.ops[o].unavailable)
	}
	fmt.Fprintf(&b, "sessions evicted by acknowledged logins: %d\n", r.evictions)
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
	client  *client

	// The kill: started at killStart, done at killedAt; the shards whose
	// master it killed.
	killStart, killedAt time.Duration
	killedShards        map[int]bool

	once     sync.Once
	users    map[string]map[string]answer // external id → users it was answered with → the first such answer
	installs map[string]answer            // acknowledged install → its creation
	logins   map[string][]answer          // user → its acknowledged logins
}

// A violation is one predicate found false. window: every write it
// depends on was acknowledged, by the master that was then killed, in the
// lossWindow before the kill: asynchronous replication may have lost it
// (README "What a failover can lose"). Such violations fail the run only
// with durability; the others always do.
type violation struct {
	msg    string
	window bool
}

// inWindow reports whether an acknowledged answer may name a write lost
// with the killed master: a write in one of shards, answered shortly
// before the kill was done.
func (w *world) inWindow(a answer, shards ...int) bool {
	hit := false
	for _, s := range shards {
		hit = hit || w.killedShards[s]
	}
	return hit && a.at < w.killedAt && a.end() >= w.killStart-lossWindow
}

func shardOf(kind byte, id string) int {
	s, err := store.ParseID(kind, id)
	if err != nil {
		return -1
	}
	return s
}

func (w *world) index() {
	w.once.Do(func() {
		w.users = map[string]map[string]answer{}
		w.installs = map[string]answer{}
		w.logins = map[string][]answer{}
		for _, a := range w.answers { // sorted by time by summarize
			if !a.acked() {
				continue
			}
			switch a.op {
			case opInstall:
				w.installs[a.install] = a
				continue
			case opLogin:
				if a.session == "" {
					continue
				}
				w.logins[a.user] = append(w.logins[a.user], a)
			}
			if w.users[a.ext] == nil {
				w.users[a.ext] = map[string]answer{}
			}
			if _, ok := w.users[a.ext][a.user]; !ok {
				w.users[a.ext][a.user] = a
			}
		}
	})
}

// acked returns, for every external id acknowledged with a user (resolved,
// linked or logged in, on either instance), the users it was answered with
// and the first answer naming each.
func (w *world) acked() map[string]map[string]answer {
	w.index()
	return w.users
}

// sessionUsers returns every user with an acknowledged login, and those
// logins.
func (w *world) sessionUsers() map[string][]answer {
	w.index()
	return w.logins
}

// retry runs a read until it succeeds or finds nothing (redis.Nil), while
// the client finds its way around the healed cluster.
func (w *world) retry(f func() error) error {
	var err error
	for range 20 {
		if err = f(); err == nil || err == redis.Nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// extUser reads the user an external id names ("" if none).
func (w *world) extUser(ext string) (string, error) {
	var v string
	err := w.retry(func() (err error) { v, err = store.ExternalUser(w.ctx, w.rdb, w.keys, ext); return })
	return v, err
}

// hget reads fields of a hash ("" for absent ones).
func (w *world) hget(key string, fields ...string) ([]string, error) {
	var vs []any
	err := w.retry(func() (err error) { vs, err = w.rdb.HMGet(w.ctx, key, fields...).Result(); return })
	out := make([]string, len(fields))
	for i := range vs {
		out[i], _ = vs[i].(string)
	}
	return out, err
}

// A check is one consistency predicate over the world: it returns its
// violations.
type check struct {
	name string
	run  func(w *world) []violation
}

var checks = []check{
	{"one user per external id, on both instances (resolutions, links, logins)", func(w *world) []violation {
		var bad []violation
		for ext, users := range w.acked() {
			if len(users) > 1 {
				window := false
				for u, a := range users {
					window = window || w.inWindow(a, store.ExternalShard(ext), shardOf(store.KindUser, u))
				}
				bad = append(bad, violation{fmt.Sprintf("%s answered with %d users %v", ext, len(users), keys(users)), window})
			}
		}
		return bad
	}},
	{"every acknowledged mapping is in Redis", func(w *world) []violation {
		var bad []violation
		for ext, users := range w.acked() {
			got, err := w.extUser(ext)
			if err != nil {
				return append(bad, violation{fmt.Sprintf("reading %s: %v", ext, err), false})
			}
			for u, a := range users {
				if got != u {
					bad = append(bad, violation{fmt.Sprintf("%s was answered with %s (%s at %v), Redis holds %q", ext, u, opNames[a.op], a.at.Round(time.Millisecond), got),
						w.inWindow(a, store.ExternalShard(ext), shardOf(store.KindUser, u))})
				}
			}
		}
		return bad
	}},
	{"every mapped user records its external id", func(w *world) []violation {
		var bad []violation
		for ext, users := range w.acked() {
			for u, a := range users {
				shard, err := store.ParseID(store.KindUser, u)
				if err != nil {
					bad = append(bad, violation{fmt.Sprintf("%s: malformed user id %q", ext, u), false})
					continue
				}
				got, err := w.hget(w.keys.User(shard, u), "ext")
				if err != nil || got[0] != ext {
					bad = append(bad, violation{fmt.Sprintf("user %s records external id %q, want %q (%v)", u, got[0], ext, err),
						w.inWindow(a, store.ExternalShard(ext), shard)})
				}
			}
		}
		return bad
	}},
	{"every acknowledged install is known", func(w *world) []violation {
		var bad []violation
		for inst, a := range w.installs {
			s := shardOf(store.KindInstall, inst)
			if s < 0 {
				bad = append(bad, violation{fmt.Sprintf("malformed install id %q", inst), false})
				continue
			}
			got, err := w.hget(w.keys.Install(s, inst), "user")
			if err != nil || got[0] == "" {
				bad = append(bad, violation{fmt.Sprintf("install %s (created at %v) has no user (%v)", inst, a.at.Round(time.Millisecond), err), w.inWindow(a, s)})
			}
		}
		for _, a := range w.answers {
			if a.op == opLink && a.status == 404 {
				ia, ok := w.installs[a.install]
				bad = append(bad, violation{fmt.Sprintf("link of acknowledged install %s answered 404 at %v", a.install, a.at.Round(time.Millisecond)),
					ok && w.inWindow(ia, shardOf(store.KindInstall, a.install))})
			}
		}
		return bad
	}},
	{"every acknowledged link is present (install → user, listed by the user)", func(w *world) []violation {
		var bad []violation
		n := 0
		for _, a := range w.answers {
			if a.op != opLink || !a.acked() {
				continue
			}
			n++
			si, su := shardOf(store.KindInstall, a.install), shardOf(store.KindUser, a.user)
			if si < 0 || su < 0 {
				bad = append(bad, violation{fmt.Sprintf("link answer with malformed ids: %+v", a), false})
				continue
			}
			window := w.inWindow(a, si, su, store.ExternalShard(a.ext)) || w.inWindow(w.installs[a.install], si)
			got, err := w.hget(w.keys.Install(si, a.install), "user")
			if err != nil || got[0] != a.user {
				bad = append(bad, violation{fmt.Sprintf("install %s linked to %s as %s at %v points to %q (%v)",
					a.install, a.ext, a.user, a.at.Round(time.Millisecond), got[0], err), window})
				continue
			}
			var member bool
			err = w.retry(func() (err error) {
				member, err = w.rdb.HExists(w.ctx, w.keys.User(su, a.user), store.InstallField(a.install)).Result()
				return
			})
			if err != nil || !member {
				bad = append(bad, violation{fmt.Sprintf("user %s does not list its install %s (%v)", a.user, a.install, err), window})
			}
		}
		if n == 0 {
			bad = append(bad, violation{"no link was acknowledged", false})
		}
		return bad
	}},
	{"no user over its session limit (live sessions ≤ max), every live session in its user's set", func(w *world) []violation {
		var bad []violation
		for u, logins := range w.sessionUsers() {
			s := shardOf(store.KindUser, u)
			window := false
			for _, a := range logins {
				window = window || w.inWindow(a, s)
			}
			var members []string
			err := w.retry(func() (err error) {
				members, err = w.rdb.ZRange(w.ctx, w.keys.UserSessions(s, u), 0, -1).Result()
				return
			})
			if err != nil {
				bad = append(bad, violation{fmt.Sprintf("reading the sessions of %s: %v", u, err), false})
				continue
			}
			inSet := map[string]bool{}
			for _, m := range members {
				inSet[m] = true
			}
			// Every session the set names, and every one the run was
			// answered for this user (started or evicted).
			ids := map[string]bool{}
			for _, m := range members {
				ids[m] = true
			}
			for _, a := range logins {
				ids[a.session] = true
				for _, e := range a.evicted {
					ids[e] = true
				}
			}
			live := 0
			for sid := range ids {
				ss := shardOf(store.KindSession, sid)
				if ss != s {
					bad = append(bad, violation{fmt.Sprintf("session %q of %s is not in its user's shard", sid, u), false})
					continue
				}
				h, err := w.hget(w.keys.Session(ss, sid), "state", "user")
				if err != nil {
					bad = append(bad, violation{fmt.Sprintf("reading session %s: %v", sid, err), false})
					continue
				}
				if h[0] != "live" {
					continue
				}
				live++
				if h[1] != u {
					bad = append(bad, violation{fmt.Sprintf("live session %s of %s names user %q", sid, u, h[1]), false})
				}
				if !inSet[sid] {
					bad = append(bad, violation{fmt.Sprintf("live session %s is not in the set of its user %s", sid, u), window})
				}
			}
			if live > maxSessions {
				bad = append(bad, violation{fmt.Sprintf("user %s has %d live sessions (max %d)", u, live, maxSessions), window})
			}
		}
		return bad
	}},
	{"every answered session is live or ended with a reason; every evicted one ended", func(w *world) []violation {
		var bad []violation
		for _, logins := range w.sessionUsers() {
			for _, a := range logins {
				s := shardOf(store.KindSession, a.session)
				h, err := w.hget(w.keys.Session(s, a.session), "state", "reason")
				switch {
				case err != nil:
					bad = append(bad, violation{fmt.Sprintf("reading session %s: %v", a.session, err), false})
				case h[0] == "":
					bad = append(bad, violation{fmt.Sprintf("session %s (login at %v) is unknown", a.session, a.at.Round(time.Millisecond)), w.inWindow(a, s)})
				case h[0] != "live" && (h[0] != "ended" || h[1] == ""):
					bad = append(bad, violation{fmt.Sprintf("session %s is %q with reason %q", a.session, h[0], h[1]), false})
				}
				for _, e := range a.evicted {
					h, err := w.hget(w.keys.Session(s, e), "state", "reason")
					if err != nil || h[0] != "ended" || h[1] == "" {
						bad = append(bad, violation{fmt.Sprintf("session %s, evicted at %v, is %q/%q (%v)", e, a.at.Round(time.Millisecond), h[0], h[1], err), w.inWindow(a, s)})
					}
				}
			}
		}
		return bad
	}},
	{"evicted sessions are refused by both instances (401 session_ended)", func(w *world) []violation {
		// The last evictions of the run, by answers after the failover:
		// sent through the idlink handler of each instance.
		var bad []violation
		var sample []answer
		for i := len(w.answers) - 1; i >= 0 && len(sample) < 20; i-- {
			if a := w.answers[i]; a.op == opLogin && a.acked() && len(a.evicted) > 0 {
				sample = append(sample, a)
			}
		}
		if len(sample) == 0 {
			return append(bad, violation{"no acknowledged login evicted a session", false})
		}
		for _, a := range sample {
			for instance := range w.client.bases {
				r := answer{op: opResolve, instance: instance}
				w.client.do(&r, "GET", "", nil, map[string]string{"X-Session-Id": a.evicted[0]})
				if r.status != 401 || !strings.Contains(r.body, `"error":"session_ended"`) {
					bad = append(bad, violation{fmt.Sprintf("instance %d answered %d %q for session %s evicted at %v",
						instance, r.status, tail(r.body, 200), a.evicted[0], a.at.Round(time.Millisecond)), false})
				}
			}
		}
		return bad
	}},
}

func keys[V any](m map[string]V) []string {
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

// selfTest proves that every check can fail: it breaks, after the run, one
// thing per check among answers acknowledged well after the failover, and
// runs the checks over those answers only (a few hundred, to stay quick).
func selfTest(t *testing.T, full *world) {
	t.Helper()
	n := len(full.answers)
	recent := full.answers[n-min(n, 600):]
	var link, install, resolve, login *answer
	for i := range recent {
		a := &recent[i]
		if !a.acked() || full.inWindow(*a, allShards()...) {
			continue
		}
		switch {
		case a.op == opLink && link == nil:
			link = a
		case a.op == opResolve && resolve == nil:
			resolve = a
		case a.op == opInstall && install == nil && (link == nil || a.install != link.install):
			install = a
		}
	}
	// A login whose eviction was not sent through the instances by the
	// last check (which caches the answer): older than the last 20.
	seen := 0
	for i := n - 1; i >= 0; i-- {
		if a := &full.answers[i]; a.op == opLogin && a.acked() && len(a.evicted) > 0 {
			if seen++; seen > 100 {
				login = a
				break
			}
		}
	}
	if link == nil || install == nil || resolve == nil || login == nil {
		t.Fatalf("self-test: no answers to break (link %v, install %v, resolve %v, login %v)", link != nil, install != nil, resolve != nil, login != nil)
	}
	ctx, rdb, k := full.ctx, full.rdb, full.keys
	must := func(err error) {
		if err != nil {
			t.Fatalf("self-test: %v", err)
		}
	}
	// One external id answered with a user that does not exist.
	fake := *resolve
	fake.user = store.NewID(store.KindUser, store.ExternalShard(resolve.ext))
	fake.at = full.answers[n-1].at
	// A link undone, an install gone, an evicted session live again (in
	// its user's set too: the idlink handler ends a "live" session that
	// its user's set does not count).
	si := shardOf(store.KindInstall, link.install)
	must(rdb.HSet(ctx, k.Install(si, link.install), "user", store.NewID(store.KindUser, si)).Err())
	must(rdb.Del(ctx, k.Install(shardOf(store.KindInstall, install.install), install.install)).Err())
	ss := shardOf(store.KindSession, login.evicted[0])
	must(rdb.HSet(ctx, k.Session(ss, login.evicted[0]), "state", "live").Err())
	must(rdb.ZAdd(ctx, k.UserSessions(ss, login.user), redis.Z{Score: float64(time.Now().UnixMilli()), Member: login.evicted[0]}).Err())

	answers := append(append(append([]answer(nil), recent...), fake), *login)
	w := &world{ctx: ctx, rdb: rdb, keys: k, answers: answers, client: full.client,
		killStart: full.killStart, killedAt: full.killedAt, killedShards: full.killedShards}
	for _, chk := range checks {
		found := 0
		for _, v := range chk.run(w) {
			if !v.window {
				found++
			}
		}
		if found == 0 {
			t.Errorf("self-test: %q found nothing wrong in a broken store", chk.name)
		} else {
			t.Logf("self-test: %s: caught (%d)", chk.name, found)
		}
	}
}

func allShards() []int {
	out := make([]int, store.Shards)
	for i := range out {
		out[i] = i
	}
	return out
}
