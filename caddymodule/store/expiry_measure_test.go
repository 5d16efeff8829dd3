package store

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// TestInstallMemory measures what an idle install costs in Redis, on a
// standalone redis-server: N installs made with expiry off (what every
// install kept forever before install_ttl), with a 30-day TTL, and with a
// 1 s TTL once it has passed. It prints, per install, the MEMORY USAGE of
// its three keys, of its share of the outbox streams (its user.created
// event, trimmed by events_retention), and the growth of used_memory.
// IDLINK_MEASURE_INSTALLS sets N (default 2000).
func TestInstallMemory(t *testing.T) {
	if !testenv.RequireRedis(t) {
		return
	}
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("IDLINK_MEASURE_INSTALLS")); err == nil && v > 0 {
		n = v
	}
	r := testenv.StartRedis(t)
	s := openStore(t, r.URL())
	ctx := context.Background()
	rdb := r.Client()
	k := NewKeys("acme")

	usedMemory := func() int64 {
		info := rdb.InfoMap(ctx, "memory").Val()["Memory"]
		v, err := strconv.ParseInt(info["used_memory"], 10, 64)
		if err != nil {
			t.Fatalf("INFO memory: %v", info)
		}
		return v
	}
	memoryUsage := func(keys ...string) int64 {
		var sum int64
		for _, key := range keys {
			sum += rdb.MemoryUsage(ctx, key, 0).Val()
		}
		return sum
	}
	streams := func() []string {
		var out []string
		for sh := range Shards {
			out = append(out, k.Events(sh))
		}
		return out
	}
	// create makes n installs and returns the keys of each.
	create := func(e Expiry) [][]string {
		var out [][]string
		for range n {
			i, u, err := s.CreateInstall(ctx, k, testNow, e)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, installKeys(k, i, u))
		}
		return out
	}
	fresh := func() int64 {
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		return usedMemory()
	}

	type row struct {
		name                 string
		keys, events, growth float64
	}
	var rows []row
	for _, c := range []struct {
		name string
		e    Expiry
	}{{"install_ttl off (before: kept forever)", Expiry{}}, {"install_ttl 30 days (default), until it passes", Expiry{TTL: 30 * 24 * time.Hour}}} {
		before := fresh()
		streamsBefore := memoryUsage(streams()...)
		made := create(c.e)
		growth := usedMemory() - before
		var keyBytes int64
		for _, keys := range made {
			keyBytes += memoryUsage(keys...)
			for key, ttl := range ttls(t, s, keys...) {
				if (c.e.TTL > 0) != (ttl > 0) {
					t.Fatalf("%s: %s has TTL %v", c.name, key, ttl)
				}
			}
		}
		rows = append(rows, row{c.name, float64(keyBytes) / float64(n),
			float64(memoryUsage(streams()...)-streamsBefore) / float64(n), float64(growth) / float64(n)})
	}

	// Once the TTL has passed, nothing of them is left but their events:
	// Redis reclaims expired keys by itself (DBSIZE counts those it has
	// not reclaimed yet), down to the outbox streams and the Tenants set.
	before := fresh()
	create(Expiry{TTL: time.Second})
	deadline := time.Now().Add(20 * time.Second)
	for rdb.DBSize(ctx).Val() > Shards+1 {
		if time.Now().After(deadline) {
			t.Fatalf("20 s after 1 s TTLs, DBSIZE is %d, want the %d outbox streams and %s", rdb.DBSize(ctx).Val(), Shards, Tenants)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := scanKeys(t, s, "idl:*"); len(got) != Shards+1 || !slices.Contains(got, Tenants) {
		t.Fatalf("keys left after the TTL passed: %v", got)
	}
	rows = append(rows, row{"install_ttl 1s, after it passed", 0,
		float64(memoryUsage(streams()...)) / float64(n), float64(usedMemory()-before) / float64(n)})

	version := rdb.InfoMap(ctx, "server").Val()["Server"]["redis_version"]
	t.Logf("%d idle installs, redis-server %s, bytes per install:", n, version)
	t.Logf("%-48s %12s %12s %12s", "", "MEMORY USAGE", "its event", "used_memory")
	t.Logf("%-48s %12s %12s %12s", "", "of its 2 keys", "(outbox)", "growth")
	for _, r := range rows {
		t.Logf("%-48s %12.0f %12.0f %12.0f", r.name, r.keys, r.events, r.growth)
	}
	if rows[1].keys <= 0 || rows[2].growth > rows[0].growth/2 {
		t.Fatalf("expired installs still take %.0f bytes each (kept forever: %.0f)", rows[2].growth, rows[0].growth)
	}
}
