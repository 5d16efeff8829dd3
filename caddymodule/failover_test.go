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

	"github.com/idlink/idlink/caddymodule/internal/apierr"
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
	lost                                 int           // acknowledged in the failover window, then lost
}

func (r failoverReport) String() string {
	return fmt.Sprintf("%d requests: %d ok (%d of them fail_open anonymous), %d 503 store_unavailable over %v; "+
		"max latency %v (p99 %v); deployment healed %v after the kill, new users served again %v after the kill, "+
		"invalidation bus back %v after the kill; %d acknowledged first-sight writes lost in the failover window",
		r.requests, r.ok, r.anonymous, r.unavailable, r.gap.Round(time.Millisecond),
		r.maxLatency.Round(time.Millisecond), r.p99.Round(time.Millisecond),
		r.healed.Round(time.Millisecond), r.recovered.Round(time.Millisecond), r.busBack.Round(time.Millisecond), r.lost)
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

	// Every write made so far reaches the replicas: from here on, what a
	// failover may lose (asynchronous replication) is only what is
	// acknowledged between this point and the end of the failover.
	synced := time.Now() // before the offsets are read: earlier writes are in them
	waitReplicasInSync(t, client)
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
			if u, err = store.ExternalUser(ctx, rdb, keys, ext); err == nil {
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

	// When each external id's user was first acknowledged (known ones:
	// before the load, so before the sync point).
	firstAck := map[string]time.Time{}
	for _, s := range l.samples {
		if s.status == 200 && s.user != "" && !s.known {
			if t0, ok := firstAck[s.ext]; !ok || s.start.Before(t0) {
				firstAck[s.ext] = s.start
			}
		}
	}
	failoverEnd := killedAt.Add(rep.healed)
	inWindow := func(t0 time.Time) bool { return !t0.IsZero() && t0.After(synced) && t0.Before(failoverEnd) }
	lostSeen := map[string]bool{}

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
			switch u := userOf(s.ext); {
			case u == s.user:
			case u == "" && inWindow(firstAck[s.ext]):
				// Acknowledged by the master that died before its replica
				// had it: the loss SPEC and the README document for
				// asynchronous replication (durability off).
				if !lostSeen[s.ext] {
					lostSeen[s.ext] = true
					rep.lost++
				}
			default:
				t.Errorf("%s was answered with user %s (first acknowledged %v after the replicas were in sync), Redis holds %q",
					s.ext, s.user, firstAck[s.ext].Sub(synced).Round(time.Millisecond), u)
			}
		case s.status == http.StatusServiceUnavailable:
			rep.unavailable++
			if s.instance != "closed" || s.code != apierr.CodeStoreUnavailable || s.retry == "" || s.reached {
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
			c.KillMasterOf(store.InvalidationChannel)
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
				if s.status != 503 || s.code != apierr.CodeStoreUnavailable || s.retry == "" {
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

// waitReplicasInSync waits until every replica has the whole replication
// stream of its master (INFO replication offsets), on a Cluster (every
// master) or a Sentinel-managed primary.
func waitReplicasInSync(t *testing.T, client func() redis.UniversalClient) {
	t.Helper()
	rdb := client()
	defer rdb.Close()
	ctx := context.Background()
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, replicasInSync)
	case *redis.Client:
		err = replicasInSync(ctx, c)
	default:
		t.Fatalf("waitReplicasInSync: unexpected client %T", rdb)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// replicationOffsets reads a master's replication offset and its replicas'.
func replicationOffsets(ctx context.Context, c *redis.Client) (master int64, replicas []int64, err error) {
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return 0, nil, err
	}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
			master, _ = strconv.ParseInt(v, 10, 64)
		}
		if strings.HasPrefix(line, "slave") && strings.Contains(line, "offset=") {
			for _, f := range strings.Split(line, ",") {
				if v, ok := strings.CutPrefix(f, "offset="); ok {
					off, _ := strconv.ParseInt(v, 10, 64)
					replicas = append(replicas, off)
				}
			}
		}
	}
	return master, replicas, nil
}

// replicasInSync waits (up to 10s) until every replica of the master c
// has reached the master's offset of now (under load the master keeps
// moving on: the snapshot is what counts).
func replicasInSync(ctx context.Context, c *redis.Client) error {
	target, _, err := replicationOffsets(ctx, c)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, replicas, err := replicationOffsets(ctx, c)
		if err != nil {
			return err
		}
		caught := len(replicas) > 0
		for _, off := range replicas {
			caught = caught && off >= target
		}
		if caught {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replicas %v did not reach the master's offset %d in 10s", replicas, target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
