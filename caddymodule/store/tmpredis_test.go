package store

// TEMPORARY until testenv lands on main.

import (
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func tmpRedis(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for i := 0; i < 100; i++ {
		if c.Ping(t.Context()).Err() == nil {
			return "redis://" + addr + "/0"
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("redis did not start")
	return ""
}

type redisXAddArgs = redis.XAddArgs
type redisXReadGroupArgs = redis.XReadGroupArgs
