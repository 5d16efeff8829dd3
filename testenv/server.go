package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// server is one redis-server process (standalone, cluster node or
// sentinel) with its ports, folder and config.
type server struct {
	port     int
	busPort  int // cluster bus port, 0 if not a cluster node
	dir      string
	sentinel bool
	// conf renders the config file for the server's ports and folder.
	conf func(s *server) string
	p    *proc
}

func (s *server) addr() string    { return hostPort(s.port) }
func (s *server) logFile() string { return filepath.Join(s.dir, "redis.log") }
func (s *server) confFile() string {
	if s.sentinel {
		return filepath.Join(s.dir, "sentinel.conf")
	}
	return filepath.Join(s.dir, "redis.conf")
}

func (s *server) running() bool { return s.p != nil && !s.p.exited() }

func (s *server) name() string {
	if s.sentinel {
		return "redis-sentinel " + s.addr()
	}
	return "redis-server " + s.addr()
}

// startServer picks free ports, starts a server and waits for it. If the
// server could not bind its ports (another process took them between
// FreePort and the start), it tries again with new ports.
func startServer(dir string, sentinel, cluster bool, conf func(s *server) string) (*server, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		s := &server{dir: dir, sentinel: sentinel, conf: conf}
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		if cluster {
			if s.busPort, err = freePort(); err != nil {
				return nil, err
			}
		}
		if err = s.start(); err == nil {
			return s, nil
		}
		if !strings.Contains(err.Error(), "already in use") {
			return nil, err
		}
	}
	return nil, err
}

// start writes the config file, starts the process on the server's ports
// and waits until it answers as the process we started.
func (s *server) start() error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(s.confFile(), []byte(s.conf(s)), 0o644); err != nil {
		return err
	}
	// A fresh log per start, so that failure messages show this start only.
	_ = os.Remove(s.logFile())
	args := []string{s.confFile()}
	if s.sentinel {
		args = append(args, "--sentinel")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return err
	}
	p, err := startProc(s.name(), s.dir, s.logFile(), os.Environ(), bin, args...)
	if err != nil {
		return err
	}
	err = waitFor(startTimeout, 20*time.Millisecond, p, func() (bool, string) {
		return isOurs(s.addr(), p.pid())
	})
	if err != nil {
		_ = p.kill()
		return fmt.Errorf("%s: %v\n%s", s.name(), err, p.logs())
	}
	s.p = p
	return nil
}

// stop SIGKILLs the server and waits for it.
func (s *server) stop() error {
	if s.p == nil {
		return nil
	}
	return s.p.kill()
}

func (s *server) logs() string {
	if s.p == nil {
		return ""
	}
	return s.p.logs()
}

// isOurs reports whether addr answers INFO with the given process id, so a
// foreign server that grabbed the port is never mistaken for ours.
func isOurs(addr string, pid int) (bool, string) {
	info, err := probe(addr, "INFO", "server")
	if err != nil {
		return false, err.Error()
	}
	got := infoField(fmt.Sprint(info), "process_id")
	if got != strconv.Itoa(pid) {
		return false, fmt.Sprintf("%s answers with process_id %q, want %d", addr, got, pid)
	}
	return true, ""
}

// probe sends one command to addr on a fresh connection with short
// timeouts and no retries.
func probe(addr string, args ...any) (any, error) {
	c := redis.NewClient(probeOptions(addr))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Do(ctx, args...).Result()
}

func probeOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:            addr,
		Protocol:        2,
		DialTimeout:     time.Second,
		ReadTimeout:     time.Second,
		WriteTimeout:    time.Second,
		MaxRetries:      -1,
		DialerRetries:   1,
		PoolSize:        1,
		DisableIdentity: true,
	}
}

// infoField returns the value of key in the output of INFO (or CLUSTER INFO).
func infoField(info, key string) string {
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == key {
			return v
		}
	}
	return ""
}

// confQuote quotes a value for a Redis config file.
func confQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// baseConf is the part of the config shared by every data node: no
// persistence, loopback only, files in the server's folder.
func baseConf(s *server) string {
	lines := []string{
		"bind 127.0.0.1",
		"port " + strconv.Itoa(s.port),
		"protected-mode no",
		"daemonize no",
		`save ""`,
		"appendonly no",
		"dir " + confQuote(s.dir),
		"logfile " + confQuote(s.logFile()),
		// Replicas sync at once instead of waiting 5 s for more replicas.
		"repl-diskless-sync-delay 0",
	}
	return strings.Join(lines, "\n") + "\n"
}
