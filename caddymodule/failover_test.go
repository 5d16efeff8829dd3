package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// Bounds of the fault tests. The per-call deadline is newTestApp's
// redis_timeout (200ms); a request may take that plus scheduling, never
// the client's own defaults (seconds) nor a retry storm.
const (
	faultTimeout    = 200 * time.Millisecond
	faultMaxLatency = faultTimeout + 400*time.Millisecond
	// faultRecovery bounds the time from a healed deployment to new users
	// being served again: the cluster client refreshes its slot map every
	// second (store.clusterStateReload); the failover client follows the
	// sentinels' +switch-master at once.
	faultRecovery = 5 * time.Second
)

// sample is one request of a fault test.
type sample struct {
	instance string // "closed" (fail_closed) or "open" (fail_open)
	ext      string
	known    bool // ext was resolved before the fault
	start    time.Time
	latency  time.Duration
	status   int
	code     string
	retry    string // Retry-After
	user     string // X-Platform-User-Id the upstream got
	source   string
	external string // X-External-Id the upstream got
	verified string
	spoofed  bool // a spoofed identity header reached the upstream
	reached  bool
}

// instancePair is two idlink instances on one deployment: one fail_closed,
// one fail_open.
type instancePair struct {
	closed, open *Handler
}

func newInstancePair(t *testing.T, url string) instancePair {
	closed := newTestApp(t, url, nil)
	open := newTestApp(t, url, func(a *App) { a.OnStoreError = FailOpen })
	return instancePair{newTestHandler(t, closed, nil), newTestHandler(t, open, nil)}
}

func (p instancePair) handler(name string) *Handler {
	if name == "open" {
		return p.open
	}
	return p.closed
}

// do sends one signed request for ext, with spoofed identity headers, and
// records what happened.
func (p instancePair) do(instance, ext string, known bool) sample {
	r := signedRequest(ext, "ios", testSecret)
	r.Header.Set("X-Platform-User-Id", "u_spoofed")
	r.Header.Set("X_Identity_Verified", "true")
	s := sample{instance: instance, ext: ext, known: known, start: time.Now()}
	w, next, _ := serve(p.handler(instance), r)
	s.latency = time.Since(s.start)
	s.status, s.retry, s.reached = w.Code, w.Header().Get("Retry-After"), next.called
	if w.Code != http.StatusOK {
		s.code = errorCode(w.Body.String())
	}
	if next.called {
		h := next.header
		s.user, s.source, s.external, s.verified = h.Get(hdrPlatformUserID), h.Get(hdrIdentitySource), h.Get(hdrExternalID), h.Get(hdrIdentityVerified)
		for k, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, "spoofed") || (strings.EqualFold(k, "X_Identity_Verified")) {
					s.spoofed = true
				}
			}
		}
	}
	return s
}

func errorCode(body string) string {
	_, rest, ok := strings.Cut(body, `"error":"`)
	if !ok {
		return ""
	}
	code, _, _ := strings.Cut(rest, `"`)
	return code
}

// load drives requests through both instances from workers goroutines
// until stop is closed: every other request a new external id (a write
// on first sight), the others a known one (served from the cache).
type load struct {
	pair    instancePair
	known   map[string]string // external id → user, resolved before the fault
	knownID []string
	next    atomic.Int64
	mu      sync.Mutex
	samples []sample
}

func startLoad(t *testing.T, pair instancePair, workers int, stop <-chan struct{}) (*load, *sync.WaitGroup) {
	l := &load{pair: pair, known: map[string]string{}}
	for i := range 32 {
		ext := "known-" + strconv.Itoa(i)
		var user string
		for _, inst := range []string{"closed", "open"} {
			s := pair.do(inst, ext, false)
			if s.status != 200 || s.user == "" || (user != "" && s.user != user) {
				t.Fatalf("warm-up of %s on %s: %+v", ext, inst, s)
			}
			user = s.user
		}
		l.known[ext] = user
		l.knownID = append(l.knownID, ext)
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []sample
			defer func() {
				l.mu.Lock()
				l.samples = append(l.samples, mine...)
				l.mu.Unlock()
			}()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				inst := []string{"closed", "open"}[(w+i)%2]
				if i%2 == 0 {
					n := l.next.Add(1)
					mine = append(mine, pair.do(inst, "new-"+strconv.FormatInt(n, 10), false))
				} else {
					mine = append(mine, pair.do(inst, l.knownID[(w+i)%len(l.knownID)], true))
				}
			}
		}()
	}
	return l, &wg
}

// recovered reports whether a new external id of every shard resolves
// through both instances (fail_open must resolve it too, not pass it as
// anonymous).
func recovered(pair instancePair, round int) bool {
	for shard := range store.Shards {
		ext := externalIDInShard(shard, "probe-"+strconv.Itoa(round)+"-")
		for _, inst := range []string{"closed", "open"} {
			if s := pair.do(inst, ext, false); s.status != 200 || s.user == "" {
				return false
			}
		}
	}
	return true
}

// externalIDInShard returns prefix+n for the first n that lands in shard.
func externalIDInShard(shard int, prefix string) string {
	for n := 0; ; n++ {
		if ext := prefix + strconv.Itoa(n); store.ExternalShard(ext) == shard {
			return ext
		}
	}
}

// failoverReport is what a fault test measured.
type failoverReport struct {
	requests, ok, unavailable, anonymous int
	maxLatency, p99                      time.Duration
	gap                                  time.Duration // first to last 503
	healed, recovered, busBack           time.Duration // after the kill
}

func (r failoverReport) String() string {
	return fmt.Sprintf("%d requests: %d ok (%d of them fail_open anonymous), %d 503 store_unavailable over %v; "+
		"max latency %v (p99 %v); deployment healed %v after the kill, new users served again %v after the kill, "+
		"invalidation bus back %v after the kill",
		r.requests, r.ok, r.anonymous, r.unavailable, r.gap.Round(time.Millisecond),
		r.maxLatency.Round(time.Millisecond), r.p99.Round(time.Millisecond),
		r.healed.Round(time.Millisecond), r.recovered.Round(time.Millisecond), r.busBack.Round(time.Millisecond))
}

// failoverUnderLoad runs load through a fail_closed and a fail_open
// instance on url (and watches the invalidation bus between two more),
// calls kill (which takes a master down and returns a
// function that waits until the deployment has failed over), and checks:
// no request outlives the deadline; fail_closed answers 200 or 503
// store_unavailable with Retry-After, and some 503s show the gap was hit;
// fail_open answers 200, anonymous (no user, no external id, unverified)
// or with the true user; known users are served throughout from the
// cache; no spoofed header ever passes; new users are served again by the
// same instances (no restart) soon after the deployment healed, and the
// invalidation bus carries messages again (re-subscribed, caches flushed);
// every user answered is the one Redis holds.
func failoverUnderLoad(t *testing.T, url string, client func() redis.UniversalClient, kill func() (healed func() error)) failoverReport {
	pair := newInstancePair(t, url)
	busFrom, _, bus := busInstances(t, url)
	awaitBus(t, busFrom, bus, 5*time.Second)
	flushesBefore := bus.flushes.Load()
	stop := make(chan struct{})
	l, wg := startLoad(t, pair, 8, stop)
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoad()

	time.Sleep(300 * time.Millisecond) // load before the fault
	killedAt := time.Now()
	healed := kill()
	if err := healed(); err != nil {
		t.Fatal(err)
	}
	var rep failoverReport
	rep.healed = time.Since(killedAt)
	for round := 0; !recovered(pair, round); round++ {
		if time.Since(killedAt) > rep.healed+faultRecovery {
			t.Fatalf("new users are still refused %v after the deployment healed: no automatic recovery", faultRecovery)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rep.recovered = time.Since(killedAt)
	// The invalidation bus: its subscription came back by itself (and
	// flushed the caches, as messages may have been missed meanwhile).
	awaitBus(t, busFrom, bus, rep.healed+faultRecovery-time.Since(killedAt))
	rep.busBack = time.Since(killedAt)
	if bus.flushes.Load() == flushesBefore {
		t.Error("the invalidation subscription was not re-established (no flush) after the failover")
	}
	time.Sleep(300 * time.Millisecond) // load after the recovery
	stopLoad()

	// The truth, from Redis, through a fresh client.
	rdb := client()
	defer rdb.Close()
	keys := store.NewKeys("acme")
	ctx := context.Background()
	truth := map[string]string{}
	userOf := func(ext string) string {
		if u, ok := truth[ext]; ok {
			return u
		}
		var u string
		var err error
		for range 20 { // the fresh cluster client may need a moment
			if u, err = rdb.Get(ctx, keys.External(ext)).Result(); err == nil || err == redis.Nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil && err != redis.Nil {
			t.Fatalf("reading %s: %v", ext, err)
		}
		truth[ext] = u
		return u
	}

	var first503, last503 time.Time
	var lat []time.Duration
	for _, s := range l.samples {
		rep.requests++
		lat = append(lat, s.latency)
		if s.latency > faultMaxLatency {
			t.Errorf("a request took %v (deadline %v): %+v", s.latency, faultTimeout, s)
		}
		if s.spoofed {
			t.Errorf("a spoofed identity header reached the upstream: %+v", s)
		}
		if s.known && (s.status != 200 || s.user != l.known[s.ext]) {
			t.Errorf("a known user was not served from the cache: %+v", s)
		}
		switch {
		case s.status == 200 && s.source == SourceAnonymous:
			rep.ok++
			rep.anonymous++
			if s.instance != "open" || s.user != "" || s.external != "" || s.verified != "false" {
				t.Errorf("an anonymous pass carries an identity, or comes from fail_closed: %+v", s)
			}
		case s.status == 200:
			rep.ok++
			if s.source != SourceHMAC || s.verified != "true" || s.external != s.ext || s.user == "" {
				t.Errorf("identity headers: %+v", s)
			}
			if u := userOf(s.ext); u != s.user {
				t.Errorf("%s was answered with user %s, Redis holds %q (a lost write?)", s.ext, s.user, u)
			}
		case s.status == http.StatusServiceUnavailable:
			rep.unavailable++
			if s.instance != "closed" || s.code != codeStoreUnavailable || s.retry == "" || s.reached {
				t.Errorf("a 503: %+v", s)
			}
			if first503.IsZero() || s.start.Before(first503) {
				first503 = s.start
			}
			if end := s.start.Add(s.latency); end.After(last503) {
				last503 = end
			}
		default:
			t.Errorf("unexpected answer: %+v", s)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		rep.maxLatency, rep.p99 = lat[len(lat)-1], lat[len(lat)*99/100]
	}
	if !first503.IsZero() {
		rep.gap = last503.Sub(first503)
	}
	if rep.unavailable == 0 || rep.anonymous == 0 {
		t.Errorf("the load never hit the gap (503s %d, fail_open anonymous %d): the test proves nothing", rep.unavailable, rep.anonymous)
	}
	t.Log(rep)
	return rep
}

// TestClusterMasterKilledUnderLoad kills, in a 3-master+replica cluster of
// its own, the master that holds the invalidation channel's subscriptions
// while two instances serve load.
func TestClusterMasterKilledUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster failover takes seconds")
	}
	c := testenv.StartCluster(t, 3, 1)
	failoverUnderLoad(t, c.URL(),
		func() redis.UniversalClient { return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()}) },
		func() func() error {
			c.KillMasterOf(InvalidationChannel)
			return func() error { return c.WaitHealthy(30 * time.Second) }
		})
}

// TestSentinelFailoverUnderLoad kills the primary of a Sentinel setup of
// its own while two instances serve load.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a sentinel failover takes seconds")
	}
	s := testenv.StartSentinel(t)
	failoverUnderLoad(t, s.URL(),
		func() redis.UniversalClient {
			return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName(), SentinelAddrs: s.SentinelAddrs()})
		},
		func() func() error {
			old := s.KillPrimary()
			return func() error { return s.WaitFailover(old, 30*time.Second) }
		})
}

// TestSlowRedisHitsTheDeadline: a Redis that stops answering (CLIENT PAUSE
// on every master) makes a request wait for redis_timeout, not for
// go-redis's defaults, then answers 503 (fail_closed) or passes anonymous
// (fail_open); when Redis answers again, so do the instances.
func TestSlowRedisHitsTheDeadline(t *testing.T) {
	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) {
		if d.Client == nil {
			t.Skip("the embedded store cannot be slowed down")
		}
		const timeout = 100 * time.Millisecond
		// Shorter than the sentinels' down-after-milliseconds (1s): a
		// slow primary, not a failover.
		// The pause is longer than deadline + slack, so a request that waited
		// for Redis instead of its deadline cannot pass unnoticed.
		const pause = 850 * time.Millisecond
		setTimeout := func(a *App) { a.RedisTimeout = caddy.Duration(timeout) }
		closed := newTestHandler(t, newTestApp(t, d.URL, setTimeout), nil)
		open := newTestHandler(t, newTestApp(t, d.URL, func(a *App) { setTimeout(a); a.OnStoreError = FailOpen }), nil)
		pair := instancePair{closed, open}
		for _, inst := range []string{"closed", "open"} { // open pooled connections
			if s := pair.do(inst, "warm", false); s.status != 200 {
				t.Fatalf("warm-up: %+v", s)
			}
		}

		ctx := context.Background()
		err := d.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.ClientPause(ctx, pause).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		paused := time.Now()
		for _, inst := range []string{"closed", "open"} {
			s := pair.do(inst, "slow-"+inst, false)
			if time.Since(paused) > pause-timeout {
				t.Skipf("the machine is too slow for this test: the pause ended before the request (%v)", time.Since(paused))
			}
			if s.latency < timeout-10*time.Millisecond || s.latency > timeout+550*time.Millisecond {
				t.Errorf("%s: a request to a paused Redis took %v; want the %v deadline", inst, s.latency, timeout)
			}
			switch inst {
			case "closed":
				if s.status != 503 || s.code != codeStoreUnavailable || s.retry == "" {
					t.Errorf("fail_closed: %+v", s)
				}
			case "open":
				if s.status != 200 || s.source != SourceAnonymous || s.user != "" || s.external != "" || s.spoofed {
					t.Errorf("fail_open: %+v", s)
				}
			}
			t.Logf("%s: answered %d after %v", inst, s.status, s.latency.Round(time.Millisecond))
		}
		deadline := time.Now().Add(pause + 5*time.Second)
		for _, inst := range []string{"closed", "open"} {
			for {
				s := pair.do(inst, "slow-"+inst, false)
				if s.status == 200 && s.user != "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: no recovery after the pause: %+v", inst, s)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
}
