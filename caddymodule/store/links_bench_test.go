package store

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// BenchmarkLink measures links against a real Redis (the embedded store
// without redis-server), with 32 goroutines per CPU:
//
//	claim   a fresh install links a new external id (4 round trips: the
//	        install expires, as with the default install_ttl, so the link
//	        makes it permanent first)
//	merge   a fresh install links a known external id (5 round trips)
//	repeat  an install repeats its last link (1 round trip)
//	claim_ttl_off, merge_ttl_off  the same with installs that never
//	        expire (install_ttl off: 3 and 4 round trips)
//
// Installs are made before the timer starts. links/s is reported.
// IDLINK_BENCH_AUTOPIPELINE=1 sends the commands through go-redis's
// auto-pipeliner instead (experimental in go-redis; not used by idlink).
//
//	go test ./caddymodule/store -run '^$' -bench BenchmarkLink -benchmem
func BenchmarkLink(b *testing.B) {
	var s *Store
	if testenv.Available() {
		r := testenv.StartRedis(b)
		var err error
		if s, err = Open(r.URL(), time.Second); err != nil {
			b.Fatal(err)
		}
		if os.Getenv("IDLINK_BENCH_AUTOPIPELINE") != "" {
			// go-redis's (experimental) auto-pipelining, to compare.
			ap, err := s.rdb.(*redis.Client).AutoPipeline()
			if err != nil {
				b.Fatal(err)
			}
			s.rdb = ap
		}
	} else {
		var err error
		if s, err = OpenEmbedded(time.Second); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	run := 0
	for _, name := range []string{"claim", "merge", "repeat", "claim_ttl_off", "merge_ttl_off"} {
		mode, e := name, testExpiry
		if m, ok := strings.CutSuffix(name, "_ttl_off"); ok {
			mode, e = m, Expiry{}
		}
		b.Run(name, func(b *testing.B) {
			run++
			k := NewKeys(fmt.Sprintf("bench%d", run))
			installs := make([]string, b.N)
			for i := range installs {
				installs[i], _ = newInstallB(b, s, k, e)
			}
			ext := func(i int64) string { return fmt.Sprintf("user-%d@example.com", i) }
			switch mode {
			case "merge":
				// 1000 known external ids, each linked by one install.
				for i := range int64(1000) {
					in, _ := newInstallB(b, s, k, e)
					linkB(b, s, k, in, ext(i))
				}
			case "repeat":
				for i, in := range installs {
					linkB(b, s, k, in, ext(int64(i)))
				}
			}
			var next atomic.Int64
			b.SetParallelism(32)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1) - 1
					e := ext(i)
					if mode == "merge" {
						e = ext(i % 1000)
					}
					if _, err := s.Link(ctx, k, LinkRequest{InstallID: installs[i], ExternalID: e, Now: testNow,
						Channel: "idl:invalidate", Message: "bench install " + installs[i]}, LinkOptions{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "links/s")
		})
	}
}

func newInstallB(b *testing.B, s *Store, k *Keys, e Expiry) (string, string) {
	i, u, err := s.CreateInstall(context.Background(), k, testNow, e)
	if err != nil {
		b.Fatal(err)
	}
	return i, u
}

func linkB(b *testing.B, s *Store, k *Keys, install, ext string) {
	if _, err := s.Link(context.Background(), k, LinkRequest{InstallID: install, ExternalID: ext, Now: testNow}, LinkOptions{}); err != nil {
		b.Fatal(err)
	}
}
