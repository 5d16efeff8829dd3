package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/testenv"
)

var resolveNow = time.UnixMilli(1_700_000_000_000)

// TestResolveExternal: first sight creates the user in the external id's
// shard with its user.created event, later calls find it, concurrent first
// sights agree on one user, and every shard works (on the cluster the 16
// shards spread over the 3 masters).
func TestResolveExternal(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		for _, ext := range []string{"alice", "{evil}", "a}b{c", "émile", strings.Repeat("x", 256)} {
			u, created, err := s.ResolveExternal(ctx, k, ext, resolveNow)
			if err != nil || !created {
				t.Fatalf("first ResolveExternal(%q) = %q, %v, %v", ext, u, created, err)
			}
			shard, err := ParseID(KindUser, u)
			if err != nil || shard != ExternalShard(ext) {
				t.Fatalf("user %q of %q: shard %d, %v; want %d", u, ext, shard, err, ExternalShard(ext))
			}
			again, created, err := s.ResolveExternal(ctx, k, ext, resolveNow)
			if err != nil || created || again != u {
				t.Fatalf("second ResolveExternal(%q) = %q, %v, %v; want %q", ext, again, created, err, u)
			}
			if got := s.rdb.HGet(ctx, k.User(shard, u), "ext").Val(); got != ext {
				t.Fatalf("user hash ext = %q, want %q", got, ext)
			}
			evs := userCreatedEvents(t, s, k, shard)
			if len(evs[u]) != 1 || evs[u][0] != ext {
				t.Fatalf("user.created events of %s: %v", u, evs[u])
			}
		}

		const n = 40
		users := make([]string, n)
		var created atomic.Int32
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u, c, err := s.ResolveExternal(ctx, k, "concurrent", resolveNow)
				if err != nil {
					t.Error(err)
				}
				if c {
					created.Add(1)
				}
				users[i] = u
			}()
		}
		wg.Wait()
		for i := range users {
			if users[i] != users[0] || users[i] == "" {
				t.Fatalf("concurrent first sights: %q and %q", users[0], users[i])
			}
		}
		if created.Load() != 1 {
			t.Fatalf("%d concurrent calls created the user, want 1", created.Load())
		}
		if evs := userCreatedEvents(t, s, k, ExternalShard("concurrent")); len(evs[users[0]]) != 1 {
			t.Fatalf("%d user.created events for one user", len(evs[users[0]]))
		}

		shards := map[int]bool{}
		for i := 0; len(shards) < Shards; i++ {
			if i > 1000 {
				t.Fatalf("1000 external ids covered shards %v only", shards)
			}
			ext := "spread-" + strconv.Itoa(i)
			if _, _, err := s.ResolveExternal(ctx, k, ext, resolveNow); err != nil {
				t.Fatalf("ResolveExternal(%q) in shard %d: %v", ext, ExternalShard(ext), err)
			}
			shards[ExternalShard(ext)] = true
		}
	})
}

// userCreatedEvents returns the external ids of the user.created events of
// a shard, by user.
func userCreatedEvents(t *testing.T, s *Store, k *Keys, shard int) map[string][]string {
	t.Helper()
	msgs, err := s.rdb.XRange(context.Background(), k.Events(shard), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, m := range msgs {
		if m.Values["type"] != EventUserCreated || m.Values["tenant"] != k.Tenant() {
			continue
		}
		var data struct {
			UserID     string `json:"user_id"`
			ExternalID string `json:"external_id"`
		}
		if err := json.Unmarshal([]byte(m.Values["data"].(string)), &data); err != nil {
			t.Fatal(err)
		}
		out[data.UserID] = append(out[data.UserID], data.ExternalID)
	}
	return out
}

func TestSetDurabilityValidates(t *testing.T) {
	s, err := Open("redis://127.0.0.1:1/0", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, d := range []Durability{
		{Replicas: -1, Timeout: 50 * time.Millisecond},
		{Replicas: 1},
		{Replicas: 1, Timeout: -time.Millisecond},
		{Replicas: 1, Timeout: 200 * time.Millisecond}, // not shorter than the call's deadline
		{Replicas: 1, Timeout: 100 * time.Millisecond}, // with the 100ms tick, not shorter
	} {
		if err := s.SetDurability(d, nil); err == nil {
			t.Errorf("SetDurability(%+v) accepted", d)
		}
	}
	if err := s.SetDurability(Durability{Replicas: 1, Timeout: 100 * time.Microsecond}, nil); err != nil || s.Durability().Timeout != time.Millisecond {
		t.Errorf("a sub-millisecond timeout: %v, %v (WAIT 0 would wait forever)", err, s.Durability())
	}
	if err := s.SetDurability(Durability{}, nil); err != nil {
		t.Errorf("turning durability off: %v", err)
	}
	e, err := OpenEmbedded(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.SetDurability(Durability{Replicas: 1, Timeout: 50 * time.Millisecond}, nil); err == nil {
		t.Error("durability accepted on the embedded store")
	}
}

// shortfallRecorder collects what the shortfall hook reports.
type shortfallRecorder struct {
	mu  sync.Mutex
	got []Shortfall
}

func (r *shortfallRecorder) hook(f Shortfall) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, f)
}

func (r *shortfallRecorder) all() []Shortfall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Shortfall(nil), r.got...)
}

// TestResolveExternalDurable: with durability 1 replica, writes on the
// cluster (every master has a replica) and on the sentinel setup are
// acknowledged; on a standalone server (no replica) each write waits the
// timeout, is counted as a shortfall and still succeeds.
func TestResolveExternalDurable(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		const wait = 100 * time.Millisecond
		var rec shortfallRecorder
		err := s.SetDurability(Durability{Replicas: 1, Timeout: wait}, rec.hook)
		if d.Name == testenv.DeployEmbedded {
			if err == nil {
				t.Fatal("durability accepted on the embedded store")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		k := NewKeys("acme")
		n := 2 * Shards // every shard, and so every master
		if d.Name == testenv.DeployStandalone {
			n = 2
		}
		for i := range n {
			ext := "durable-" + strconv.Itoa(i)
			start := time.Now()
			u, created, err := s.ResolveExternal(ctx, k, ext, resolveNow)
			took := time.Since(start)
			if err != nil || !created {
				t.Fatalf("ResolveExternal(%q) = %q, %v, %v", ext, u, created, err)
			}
			if got := extUser(t, d.Client, k, ext); got != u {
				t.Fatalf("after a durable write the mapping is %q, want %q", got, u)
			}
			if d.Name == testenv.DeployStandalone && took < wait {
				t.Fatalf("with no replica the write took %v, less than the WAIT timeout %v", took, wait)
			}
		}
		got := rec.all()
		switch d.Name {
		case testenv.DeployStandalone:
			if len(got) != n || s.Shortfalls() != int64(n) {
				t.Fatalf("shortfalls %v (count %d), want %d", got, s.Shortfalls(), n)
			}
			for _, f := range got {
				if f.Wanted != 1 || f.Acked != 0 || f.Err != nil {
					t.Fatalf("shortfall %+v", f)
				}
			}
		default:
			if len(got) != 0 || s.Shortfalls() != 0 {
				t.Fatalf("shortfalls with a replica per master: %v", got)
			}
		}
	})
}

// TestDurableWaitCoversItsOwnWrite: WAIT must run on the connection that
// made the write. With the replica stopped, a new write cannot be
// acknowledged, so the write must count as a shortfall after the timeout.
// A WAIT sent on another pooled connection (one whose last write the
// replica had acknowledged before it stopped) would answer 1 at once.
func TestDurableWaitCoversItsOwnWrite(t *testing.T) {
	primary := testenv.StartRedis(t)
	if primary == nil {
		t.Skip("needs redis-server")
	}
	replica := testenv.StartRedis(t)
	ctx := context.Background()
	host, port, _ := strings.Cut(primary.Addr(), ":")
	if err := replica.Client().ReplicaOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the primary sees its replica online", func() bool {
		info := primary.Client().Info(ctx, "replication").Val()
		return strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online")
	})

	s, err := Open(primary.URL(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var rec shortfallRecorder
	if err := s.SetDurability(Durability{Replicas: 1, Timeout: 150 * time.Millisecond}, rec.hook); err != nil {
		t.Fatal(err)
	}
	k := NewKeys("acme")
	// The replica acknowledges writes (on a busy machine it may lag at
	// first).
	waitUntil(t, 10*time.Second, "a write is acknowledged", func() bool {
		before := s.Shortfalls()
		_, _, err := s.ResolveExternal(ctx, k, "first-"+strconv.FormatInt(time.Now().UnixNano(), 10), resolveNow)
		return err == nil && s.Shortfalls() == before
	})
	// Writes on several pooled connections, which the replica acknowledges.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := s.ResolveExternal(ctx, k, "before-"+strconv.Itoa(i), resolveNow); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	waitUntil(t, 10*time.Second, "the replica has every write", func() bool {
		p := primary.Client().Info(ctx, "replication").Val()
		off := infoValue(p, "master_repl_offset")
		return off != "" && strings.Contains(p, "offset="+off+",")
	})
	shortfallsBefore := len(rec.all())

	replica.Pause()
	defer replica.Resume()
	start := time.Now()
	u, created, err := s.ResolveExternal(ctx, k, "while-the-replica-sleeps", resolveNow)
	took := time.Since(start)
	if err != nil || !created || u == "" {
		t.Fatalf("a write with the replica stopped: %q, %v, %v (a shortfall must not fail it)", u, created, err)
	}
	got := rec.all()[shortfallsBefore:]
	if len(got) != 1 || got[0].Acked != 0 || got[0].Wanted != 1 {
		t.Fatalf("shortfalls %v after %v: the WAIT did not cover the write (another connection?)", got, took)
	}
	if took < 150*time.Millisecond || took > time.Second {
		t.Fatalf("the write took %v, want the WAIT timeout (150ms) and less than the call deadline", took)
	}

	replica.Resume()
	waitUntil(t, 10*time.Second, "writes are acknowledged again", func() bool {
		before := s.Shortfalls()
		_, _, err := s.ResolveExternal(ctx, k, "after-"+strconv.FormatInt(time.Now().UnixNano(), 10), resolveNow)
		return err == nil && s.Shortfalls() == before
	})
}

// infoValue returns the value of key in the output of INFO.
func infoValue(info, key string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return v
		}
	}
	return ""
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunWriteDurable: the durable path runs a script the server has not
// seen yet and then again, passes script errors and nil replies through,
// on every deployment.
func TestRunWriteDurable(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		if d.Client == nil {
			t.Skip("no durability on the embedded store")
		}
		ctx := context.Background()
		if err := s.SetDurability(Durability{Replicas: 1, Timeout: 50 * time.Millisecond}, nil); err != nil {
			t.Fatal(err)
		}
		sc := redis.NewScript("redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1] -- " + t.Name())
		key := NewKeys("acme").tags[3] + "probe"
		got, err := s.runWrite(ctx, sc, []string{key}, "v1").Text()
		if err != nil || got != "v1" {
			t.Fatalf("first run: %q, %v", got, err)
		}
		got, err = s.runWrite(ctx, sc, []string{key}, "v2").Text()
		if err != nil || got != "v2" {
			t.Fatalf("second run: %q, %v", got, err)
		}
		// A script error is the script's, not a store outage to retry.
		bad := redis.NewScript("return redis.error_reply('ERR idlink test') -- " + t.Name())
		if err := s.runWrite(ctx, bad, []string{key}).Err(); err == nil || !strings.Contains(err.Error(), "idlink test") {
			t.Fatalf("script error: %v", err)
		}
		if err := s.runWrite(ctx, redis.NewScript("return false"), []string{key}).Err(); !errors.Is(err, redis.Nil) {
			t.Fatalf("a nil reply: %v, want redis.Nil", err)
		}
	})
}

// BenchmarkResolveExternalCold is the cold path (a new external id: one
// script that creates the user) on each deployment, without and with
// durability (WAIT for 1 replica, in the same round trip), one call at a
// time (latency) and from 16 goroutines (throughput).
//
//	go test ./caddymodule/store -run XXX -bench ResolveExternalCold -benchtime 3s
func BenchmarkResolveExternalCold(b *testing.B) {
	for _, name := range testenv.DeploymentNames(b) {
		b.Run(name, func(b *testing.B) {
			d := testenv.UseDeployment(b, name)
			for _, replicas := range []int{0, 1} {
				if replicas > 0 && (name == testenv.DeployStandalone || name == testenv.DeployEmbedded) {
					continue // no replica to wait for
				}
				for _, parallel := range []bool{false, true} {
					label := fmt.Sprintf("wait=%d", replicas)
					if parallel {
						label += "/parallel"
					}
					b.Run(label, func(b *testing.B) { benchResolveCold(b, d, replicas, parallel) })
				}
			}
		})
	}
}

func benchResolveCold(b *testing.B, d testenv.Deployment, replicas int, parallel bool) {
	s := storeFor(b, d)
	if err := s.SetDurability(Durability{Replicas: replicas, Timeout: 100 * time.Millisecond}, nil); err != nil {
		b.Fatal(err)
	}
	k := NewKeys(fmt.Sprintf("bench%d-%d", replicas, time.Now().UnixNano()))
	ctx := context.Background()
	var n atomic.Int64
	resolve := func() {
		ext := "cold-" + strconv.FormatInt(n.Add(1), 10)
		if _, created, err := s.ResolveExternal(ctx, k, ext, resolveNow); err != nil || !created {
			b.Error(created, err)
		}
	}
	b.ReportAllocs()
	if parallel {
		b.SetParallelism(8) // 8 x GOMAXPROCS goroutines
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				resolve()
			}
		})
	} else {
		for b.Loop() {
			resolve()
		}
	}
	if s.Shortfalls() > 0 {
		b.Fatalf("%d shortfalls", s.Shortfalls())
	}
}
