package testenv

import (
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Available reports whether redis-server and redis-cli are on PATH.
func Available() bool {
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			return false
		}
	}
	return true
}

// inCI reports whether the tests run in CI, where a missing Redis is a
// failure.
func inCI() bool { return os.Getenv("CI") == "true" }

// RequireRedis reports whether real Redis servers can be started. If
// redis-server (or redis-cli) is missing, it fails the test when the
// environment variable CI is "true" (in CI a missing Redis is a failure,
// never a skip); otherwise it logs that the test falls back to the embedded
// store and returns false.
func RequireRedis(t testing.TB) bool {
	t.Helper()
	if Available() {
		return true
	}
	if inCI() {
		t.Fatalf("testenv: redis-server/redis-cli not found on PATH, and CI=true: a missing Redis is a failure in CI")
	}
	t.Log("testenv: redis-server not found; falling back to the embedded store")
	return false
}

// requireRedisOrSkip is RequireRedis for setups that have no embedded
// fallback: outside CI the test is skipped.
func requireRedisOrSkip(t testing.TB, what string) {
	t.Helper()
	if Available() {
		return
	}
	if inCI() {
		t.Fatalf("testenv: redis-server/redis-cli not found on PATH, and CI=true: a missing Redis is a failure in CI")
	}
	t.Skipf("testenv: redis-server not found; %s needs a real Redis, skipping", what)
}

// Redis is a standalone redis-server started by StartRedis. Its methods
// that can fail the test (Start, Pause, Resume) must be called from the
// goroutine running the test that started it.
type Redis struct {
	t   testing.TB
	srv *server

	mu     sync.Mutex
	client *redis.Client
}

// StartRedis starts a standalone redis-server on a free 127.0.0.1 port,
// without persistence (save "", appendonly no), with its folder and log file
// in t.TempDir(). It waits until the server answers PING (at most 10 s,
// failing the test with the server's log otherwise) and stops it when the
// test ends.
//
// If redis-server is missing it behaves as RequireRedis: it fails the test
// in CI and otherwise returns nil, and the caller uses the embedded store.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if !RequireRedis(t) {
		return nil
	}
	dir := t.TempDir()
	srv, err := startServer(dir, false, false, baseConf)
	if err != nil {
		t.Fatalf("testenv: starting redis-server: %v", err)
	}
	r := &Redis{t: t, srv: srv}
	t.Cleanup(func() {
		r.closeClient()
		if err := srv.stop(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return r
}

// Addr returns the server's address, "127.0.0.1:port".
func (r *Redis) Addr() string { return r.srv.addr() }

// URL returns the server's URL, "redis://127.0.0.1:port/0".
func (r *Redis) URL() string { return "redis://" + r.srv.addr() + "/0" }

// Stop kills the server (SIGKILL) and waits for it to exit. Its port stays
// assigned to it, so Start brings it back on the same address (unless some
// other process binds the port meanwhile). Stopping a stopped server does
// nothing.
func (r *Redis) Stop() {
	r.t.Helper()
	if err := r.srv.stop(); err != nil {
		r.t.Errorf("testenv: %v", err)
	}
}

// Start starts a stopped server again on the same port and waits until it
// answers PING; the data it held is gone. It fails the test if the server
// does not come up. Starting a running server does nothing.
func (r *Redis) Start() {
	r.t.Helper()
	if r.srv.running() {
		return
	}
	if err := r.srv.start(); err != nil {
		r.t.Fatalf("testenv: restarting redis-server: %v", err)
	}
}

// Pause stops the server with SIGSTOP: it keeps its connections and port
// but answers nothing, as a hung Redis would. Resume undoes it; a paused
// server is still killed at cleanup.
func (r *Redis) Pause() {
	r.t.Helper()
	if err := r.srv.p.signal(syscall.SIGSTOP); err != nil {
		r.t.Fatalf("testenv: pausing %s: %v", r.srv.name(), err)
	}
}

// Resume continues a server paused by Pause (SIGCONT).
func (r *Redis) Resume() {
	r.t.Helper()
	if err := r.srv.p.signal(syscall.SIGCONT); err != nil {
		r.t.Fatalf("testenv: resuming %s: %v", r.srv.name(), err)
	}
}

// Client returns a go-redis client to the server, for assertions. It is
// created on first use, shared by later calls and closed at cleanup. It
// reconnects by itself after Stop and Start.
func (r *Redis) Client() *redis.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client == nil {
		r.client = redis.NewClient(&redis.Options{Addr: r.Addr()})
	}
	return r.client
}

// Logs returns the server's output and log file, for failure messages.
func (r *Redis) Logs() string { return r.srv.logs() }

func (r *Redis) closeClient() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client != nil {
		_ = r.client.Close()
		r.client = nil
	}
}
