package testenv

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t)
	ctx := context.Background()

	addrs := s.SentinelAddrs()
	if len(addrs) != 3 || slices.Contains(addrs, "127.0.0.1:26379") || slices.Contains(addrs, "127.0.0.1:6379") {
		t.Fatalf("SentinelAddrs() = %v", addrs)
	}
	want := "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2] + "&master_name=mymaster"
	if s.URL() != want {
		t.Fatalf("URL() = %q, want %q", s.URL(), want)
	}
	opts, err := redis.ParseFailoverURL(s.URL())
	if err != nil {
		t.Fatalf("ParseFailoverURL(%q): %v", s.URL(), err)
	}
	if opts.MasterName != "mymaster" || !slices.Equal(opts.SentinelAddrs, addrs) {
		t.Fatalf("ParseFailoverURL(%q) = master %q, sentinels %v", s.URL(), opts.MasterName, opts.SentinelAddrs)
	}
	// The same options through UniversalOptions make a failover client.
	uni := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: opts.SentinelAddrs, MasterName: opts.MasterName})
	defer uni.Close()
	if _, ok := uni.(*redis.Client); !ok {
		t.Fatalf("NewUniversalClient with MasterName = %T, want the failover *redis.Client", uni)
	}
	fromURL := redis.NewFailoverClient(opts)
	defer fromURL.Close()

	primary := s.MasterAddr()
	if primary == "" || slices.Contains(addrs, primary) {
		t.Fatalf("MasterAddr() = %q", primary)
	}
	for _, c := range []redis.UniversalClient{s.Client(), uni, fromURL} {
		if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatalf("SET through %T: %v", c, err)
		}
	}
	if got := serverAddr(t, s.Client()); got != primary {
		t.Fatalf("the failover client talks to %s, want the primary %s", got, primary)
	}

	start := time.Now()
	old := s.KillPrimary()
	if old != primary {
		t.Fatalf("KillPrimary() = %s, want %s", old, primary)
	}
	if err := s.WaitFailover(old, 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, s.Logs())
	}
	t.Logf("failover done %v after killing %s", time.Since(start).Round(time.Millisecond), old)
	newPrimary := s.MasterAddr()
	if newPrimary == old {
		t.Fatalf("MasterAddr() after failover = %s, the killed primary", newPrimary)
	}

	for _, c := range []redis.UniversalClient{s.Client(), fromURL} {
		poll(t, 10*time.Second, "SET after failover", func() error { return c.Set(ctx, "k2", "v2", 0).Err() })
		if got := serverAddr(t, c); got != newPrimary {
			t.Fatalf("after failover the client talks to %s, want %s", got, newPrimary)
		}
	}
}

// serverAddr returns the address of the server c is connected to.
func serverAddr(t *testing.T, c redis.UniversalClient) string {
	t.Helper()
	info, err := c.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatalf("INFO server: %v", err)
	}
	return "127.0.0.1:" + strings.TrimSpace(infoField(info, "tcp_port"))
}
