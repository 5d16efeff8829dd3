package load

import (
	"context"
	"flag"
	"fmt"
	"regexp"
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

// TestCostRedis measures what idlink's state costs in Redis memory, through
// the store's real scripts (caddymodule/store), on a standalone testenv
// Redis and on a testenv Cluster (3 masters, summed):
//
//	go test ./testenv/load -run TestCostRedis -v -count=1 -timeout 30m -cost.users=1000000
//
// Four kinds of record, each made N times (-cost.users) with
// -cost.workers concurrent calls: a first-sight user (ResolveExternal, the
// path of an HMAC-signed external id), an install linked to a new external
// id (CreateInstall with the default 30-day install_ttl, then Link), a live
// session (AdmitSession for a user of the first kind) and a tombstone (the
// same session ended). Each figure is the growth of INFO memory
// used_memory divided by N, with the outbox (the events streams the step
// appended to) and without it (after deleting them). MEMORY USAGE of
// sampled keys of every key type explains where the bytes go.
//
// The test fails if a figure without the outbox exceeds its ceiling
// (-cost.max.*): the ceilings are what the key schema achieves with margin,
// so a schema change that costs more per user shows here.
var (
	costUsers   = flag.Int("cost.users", 20000, "records of each kind to create (documented run: 1000000)")
	costCluster = flag.Bool("cost.cluster", true, "also measure on a testenv Cluster (3 masters)")
	costWorkers = flag.Int("cost.workers", 64, "concurrent store calls")

	maxUserBytes    = flag.Float64("cost.max.user", 320, "ceiling: bytes per first-sight user without its event")
	maxInstallBytes = flag.Float64("cost.max.install", 700, "ceiling: bytes per linked install without its events")
	maxSessionBytes = flag.Float64("cost.max.session", 650, "ceiling: bytes per live session without its event")
	maxTombBytes    = flag.Float64("cost.max.tombstone", 450, "ceiling: bytes per ended session without its events")
)

// costTenant is the tenant the harness writes: short, like most tenants.
const costTenant = "acme"

func TestCostRedis(t *testing.T) {
	if r := testenv.StartRedis(t); r != nil {
		t.Run("standalone", func(t *testing.T) {
			measureCost(t, r.URL(), r.Client(), masters{func(ctx context.Context, fn func(context.Context, *redis.Client) error) error {
				return fn(ctx, r.Client())
			}}, 1)
		})
	}
	if *costCluster {
		t.Run("cluster", func(t *testing.T) {
			c := testenv.StartCluster(t, 3, 0)
			measureCost(t, c.URL(), c.Client(), masters{c.Client().ForEachMaster}, clusterCeilings)
		})
	}
}

// masters runs a function on every master of a deployment.
type masters struct {
	each func(ctx context.Context, fn func(context.Context, *redis.Client) error) error
}

// usedMemory is used_memory summed over the masters.
func (m masters) usedMemory(t *testing.T) int64 {
	var total atomic.Int64
	err := m.each(context.Background(), func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return err
				}
				total.Add(n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total.Load()
}

// dropOutbox deletes the tenant's events streams (every shard).
func dropOutbox(t *testing.T, c redis.UniversalClient, k *store.Keys) {
	for s := range store.Shards {
		if err := c.Del(context.Background(), k.Events(s)).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// keyClass names the type of a key of the schema, e.g. "user:*:sessions".
var keyClass = regexp.MustCompile(`[a-z]_[0-9a-f]{2}[A-Za-z0-9_-]{24}`)

// sampleKeys prints, per key type, how many keys were scanned and the mean
// MEMORY USAGE of up to 20 of them.
func (m masters) sampleKeys(t *testing.T) {
	type stat struct {
		keys, sampled, bytes int64
		fields               int64
	}
	var mu sync.Mutex
	stats := map[string]*stat{}
	err := m.each(context.Background(), func(ctx context.Context, c *redis.Client) error {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, "idl:*", 5000).Result()
			if err != nil {
				return err
			}
			for _, key := range keys {
				class := key
				if i := strings.Index(key, "}:"); i >= 0 {
					class = key[i+2:]
				}
				class = keyClass.ReplaceAllString(class, "*")
				if i := strings.LastIndexByte(class, ':'); i >= 0 && !strings.Contains(class, "*") {
					class = class[:i+1] + "<n>" // a bucket or an external id
				}
				switch {
				case strings.HasPrefix(key, "idl:itenant:"): // earlier releases
					class = "itenant:*"
				case key == "idl:tenants":
					class = key
				}
				mu.Lock()
				st := stats[class]
				if st == nil {
					st = &stat{}
					stats[class] = st
				}
				st.keys++
				take := st.sampled < 20
				mu.Unlock()
				if !take {
					continue
				}
				n, err := c.MemoryUsage(ctx, key).Result()
				if err != nil {
					return err
				}
				typ, _ := c.Type(ctx, key).Result()
				var f int64
				switch typ {
				case "hash":
					f, _ = c.HLen(ctx, key).Result()
				case "set":
					f, _ = c.SCard(ctx, key).Result()
				case "zset":
					f, _ = c.ZCard(ctx, key).Result()
				case "stream":
					f, _ = c.XLen(ctx, key).Result()
				}
				mu.Lock()
				st.sampled++
				st.bytes += n
				st.fields += f
				mu.Unlock()
			}
			cursor = next
			if cursor == 0 {
				return nil
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(stats))
	for n := range stats {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		st := stats[n]
		t.Logf("  %-22s %9d keys   MEMORY USAGE %6.0f B each (%.1f fields/members/entries each, %d sampled)",
			n, st.keys, float64(st.bytes)/float64(st.sampled), float64(st.fields)/float64(st.sampled), st.sampled)
	}
}

// parallel runs fn(i) for i in [0, n) on -cost.workers goroutines and
// fails the test at the first error.
func parallel(t *testing.T, n int, fn func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range *costWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

// costStep is one measured kind of record.
type costStep struct {
	name    string
	ceiling float64
	run     func(i int) error
}

// clusterCeilings scales the ceilings on a Cluster, where Redis keeps an
// index of the keys of each slot (measured: 12% more at 20,000 users).
const clusterCeilings = 1.15

// raw is the test's own client to the deployment (the store hands out
// none), m its masters.
func measureCost(t *testing.T, url string, raw redis.UniversalClient, m masters, ceilings float64) {
	s, err := store.Open(url, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	k := store.NewKeys(costTenant)
	n := *costUsers
	now := time.Now()
	installTTL := store.Expiry{TTL: 30 * 24 * time.Hour}
	policy := store.SessionPolicy{Max: 1, Idle: 30 * time.Minute, Channel: "idlink:cost"}

	users := make([]string, n)
	sessions := make([]string, n)
	steps := []costStep{
		{"first-sight user", *maxUserBytes, func(i int) error {
			u, created, err := s.ResolveExternal(ctx, k, "user-"+strconv.Itoa(i), now)
			if err == nil && !created {
				err = fmt.Errorf("user-%d existed", i)
			}
			users[i] = u
			return err
		}},
		{"linked install", *maxInstallBytes, func(i int) error {
			inst, _, err := s.CreateInstall(ctx, k, now, installTTL)
			if err != nil {
				return err
			}
			res, err := s.Link(ctx, k, store.LinkRequest{InstallID: inst, ExternalID: "linked-" + strconv.Itoa(i), Now: now,
				Channel: "idlink:cost", Message: costTenant + " install " + inst}, store.LinkOptions{})
			if err == nil && !res.Created {
				err = fmt.Errorf("linked-%d existed", i)
			}
			return err
		}},
		{"live session", *maxSessionBytes, func(i int) error {
			shard, err := store.ParseID(store.KindUser, users[i])
			if err != nil {
				return err
			}
			sessions[i] = store.NewID(store.KindSession, shard)
			_, err = s.AdmitSession(ctx, k, policy, store.NewSession{ID: sessions[i], UserID: users[i], Verified: true}, now)
			return err
		}},
		{"tombstone", *maxTombBytes, func(i int) error {
			_, ended, _, err := s.EndSession(ctx, k, policy, sessions[i], "logout", now)
			if err == nil && !ended {
				err = fmt.Errorf("session %s did not end", sessions[i])
			}
			return err
		}},
	}
	t.Logf("%s, tenant %q, %d records of each kind, %d workers", s.Kind(), costTenant, n, *costWorkers)
	base := m.usedMemory(t)
	var beforeSessions int64
	for _, st := range steps {
		start := time.Now()
		parallel(t, n, st.run)
		took := time.Since(start)
		with := m.usedMemory(t)
		dropOutbox(t, raw, k)
		without := m.usedMemory(t)
		from := base
		switch st.name {
		case "live session":
			beforeSessions = base
		case "tombstone":
			// A tombstone replaces a live session: its cost is what the
			// ended session keeps, against no session at all.
			from = beforeSessions
		}
		perWith := float64(with-from) / float64(n)
		perWithout := float64(without-from) / float64(n)
		t.Logf("%-17s %7.0f B each with its events, %7.0f B without (%.0f/s)", st.name, perWith, perWithout, float64(n)/took.Seconds())
		if perWithout > st.ceiling*ceilings {
			t.Errorf("%s: %.0f bytes each without the outbox, over the ceiling of %.0f: the key schema costs more than it should", st.name, perWithout, st.ceiling*ceilings)
		}
		base = without
	}
	t.Logf("keys after all steps:")
	m.sampleKeys(t)
}
