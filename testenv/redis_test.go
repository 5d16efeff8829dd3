package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// poll calls f until it returns nil or timeout passes, and fails the test
// with f's last error then.
func poll(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFreePort(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if p == 6379 || p <= 0 || p > 65535 {
			t.Fatalf("FreePort returned %d", p)
		}
		if seen[p] {
			t.Fatalf("FreePort returned %d twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", hostPort(p))
		if err != nil {
			t.Fatalf("port %d from FreePort is not free: %v", p, err)
		}
		_ = l.Close()
	}
}

func TestRedisStandalone(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	if r == nil {
		t.Skip("no redis-server")
	}
	ctx := context.Background()

	if !strings.HasPrefix(r.Addr(), "127.0.0.1:") || r.Addr() == "127.0.0.1:6379" {
		t.Fatalf("Addr() = %q", r.Addr())
	}
	if want := "redis://" + r.Addr() + "/0"; r.URL() != want {
		t.Fatalf("URL() = %q, want %q", r.URL(), want)
	}
	opts, err := redis.ParseURL(r.URL())
	if err != nil || opts.Addr != r.Addr() || opts.DB != 0 {
		t.Fatalf("redis.ParseURL(%q) = %+v, %v", r.URL(), opts, err)
	}

	c := r.Client()
	if c != r.Client() {
		t.Fatal("Client() returned a new client on the second call")
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v", got, err)
	}
	// The files are in the test's folder and nothing is persisted.
	if cfg, err := c.ConfigGet(ctx, "save").Result(); err != nil || cfg["save"] != "" {
		t.Fatalf("CONFIG GET save = %v, %v", cfg, err)
	}
	if cfg, err := c.ConfigGet(ctx, "appendonly").Result(); err != nil || cfg["appendonly"] != "no" {
		t.Fatalf("CONFIG GET appendonly = %v, %v", cfg, err)
	}

	// No subtests below: Start, Pause and Resume fail the test that called
	// StartRedis, so they must run on its goroutine.

	// Stop and Start on the same port.
	{
		addr := r.Addr()
		r.Stop()
		r.Stop() // stopping twice is harmless
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = conn.Close()
			t.Fatalf("%s still accepts connections after Stop", addr)
		}
		if _, err := probe(addr, "PING"); err == nil {
			t.Fatal("PING succeeded on a stopped server")
		}
		r.Start()
		if r.Addr() != addr {
			t.Fatalf("Addr() after Start = %s, want %s", r.Addr(), addr)
		}
		// The shared client reconnects; the data is gone.
		poll(t, 5*time.Second, "PING after Start", func() error { return c.Ping(ctx).Err() })
		if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
			t.Fatalf("EXISTS k after restart = %d, %v; want 0", n, err)
		}
		r.Start() // starting a running server is harmless
	}

	// Pause and Resume.
	{
		short := redis.NewClient(&redis.Options{Addr: r.Addr(), ReadTimeout: 200 * time.Millisecond, MaxRetries: -1})
		t.Cleanup(func() { _ = short.Close() })
		if err := short.Ping(ctx).Err(); err != nil {
			t.Fatalf("PING before Pause: %v", err)
		}
		r.Pause()
		start := time.Now()
		err := short.Ping(ctx).Err()
		var nerr net.Error
		if err == nil || !errors.As(err, &nerr) || !nerr.Timeout() {
			t.Fatalf("PING to a paused server: %v (after %v), want a timeout", err, time.Since(start))
		}
		r.Resume()
		poll(t, 5*time.Second, "PING after Resume", func() error { return short.Ping(ctx).Err() })
	}

	// The server's files are in its folder.
	{
		dir, err := c.ConfigGet(ctx, "dir").Result()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir["dir"], "redis.log")); err != nil {
			t.Fatalf("no redis.log in the server's dir %q: %v", dir["dir"], err)
		}
	}
}

// fakeTB records Fatalf and Log calls; Fatalf ends the goroutine like
// testing.T's does.
type fakeTB struct {
	testing.TB
	fatal string
	logs  []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeTB) Log(args ...any) { f.logs = append(f.logs, fmt.Sprint(args...)) }

// runFake runs f with a fakeTB in its own goroutine, so that Fatalf can end
// it.
func runFake(f func(tb *fakeTB)) *fakeTB {
	tb := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(tb)
	}()
	<-done
	return tb
}

func TestRedisMissing(t *testing.T) {
	// Not parallel: it changes PATH for the whole test binary.
	t.Setenv("PATH", t.TempDir())
	if Available() {
		t.Fatal("Available() with an empty PATH = true")
	}

	t.Setenv("CI", "")
	var ok bool
	var r *Redis
	tb := runFake(func(tb *fakeTB) { ok = RequireRedis(tb); r = StartRedis(tb) })
	if ok || r != nil || tb.fatal != "" {
		t.Fatalf("outside CI: RequireRedis = %v, StartRedis = %v, fatal %q; want false, nil and no failure", ok, r, tb.fatal)
	}
	want := "testenv: redis-server not found; falling back to the embedded store"
	if len(tb.logs) != 2 || tb.logs[0] != want {
		t.Fatalf("logs = %q, want %q twice", tb.logs, want)
	}

	t.Setenv("CI", "true")
	for name, f := range map[string]func(testing.TB){
		"RequireRedis":  func(tb testing.TB) { RequireRedis(tb) },
		"StartRedis":    func(tb testing.TB) { StartRedis(tb) },
		"StartCluster":  func(tb testing.TB) { StartCluster(tb, 3, 0) },
		"StartSentinel": func(tb testing.TB) { StartSentinel(tb) },
	} {
		tb := runFake(func(tb *fakeTB) { f(tb) })
		if !strings.Contains(tb.fatal, "CI") {
			t.Errorf("%s in CI without redis-server: fatal %q, want a failure", name, tb.fatal)
		}
	}
}

func TestServerStartFailures(t *testing.T) {
	if !Available() {
		t.Skip("no redis-server")
	}
	t.Parallel()

	// A config error fails fast, with the server's output in the error.
	_, err := startServer(t.TempDir(), false, false, func(s *server) string {
		return baseConf(s) + "no-such-directive yes\n"
	})
	if err == nil || !strings.Contains(err.Error(), "no-such-directive") {
		t.Fatalf("start with a bad config: err = %v, want the server's complaint", err)
	}

	// A port taken by another process is reported as such (startServer
	// then retries with other ports).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := &server{dir: t.TempDir(), port: l.Addr().(*net.TCPAddr).Port, conf: baseConf}
	err = s.start()
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("start on a taken port: err = %v, want 'already in use'", err)
	}
}
