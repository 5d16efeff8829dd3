package testenv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// SentinelMasterName is the name the sentinels of StartSentinel
	// monitor the primary under.
	SentinelMasterName = "mymaster"
	// sentinelReadyTimeout bounds the wait for the sentinels to find the
	// replica and each other (they greet each other every 2 s).
	sentinelReadyTimeout = 20 * time.Second
)

// Sentinel is a primary, a replica and three sentinels monitoring them,
// started by StartSentinel. Its methods that can fail the test (MasterAddr,
// KillPrimary) must be called from the goroutine running the test that
// started it.
type Sentinel struct {
	t         testing.TB
	data      []*server // primary and replica, in start order
	sentinels []*server

	mu     sync.Mutex
	client redis.UniversalClient
}

// StartSentinel starts a primary, a replica of it (replicaof) and three
// sentinels (redis-server --sentinel, config files in t.TempDir()) that
// monitor the primary as "mymaster" with quorum 2, down-after-milliseconds
// 1000 and failover-timeout 3000. It waits until the replica is in sync and
// every sentinel sees the primary, the replica and the two other sentinels,
// and stops everything when the test ends. If redis-server is missing the
// test fails in CI and is skipped otherwise.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	requireRedisOrSkip(t, "Redis Sentinel")
	s, err := startSentinel(t.TempDir())
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	s.t = t
	t.Cleanup(func() {
		if err := s.close(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return s
}

// startSentinel starts the setup with its files in dir. On error, whatever
// it started is stopped again. The returned Sentinel has no test: the
// caller sets s.t (for MasterAddr and KillPrimary) and calls close.
func startSentinel(dir string) (s *Sentinel, err error) {
	s = &Sentinel{}
	defer func() {
		if err != nil {
			_ = s.close()
			s = nil
		}
	}()

	primary, err := startServer(filepath.Join(dir, "primary"), false, false, baseConf)
	if err != nil {
		return s, fmt.Errorf("starting the primary: %v", err)
	}
	s.data = append(s.data, primary)
	replica, err := startServer(filepath.Join(dir, "replica"), false, false, func(srv *server) string {
		return baseConf(srv) + "replicaof 127.0.0.1 " + strconv.Itoa(primary.port) + "\n"
	})
	if err != nil {
		return s, fmt.Errorf("starting the replica: %v", err)
	}
	s.data = append(s.data, replica)
	err = waitFor(startTimeout, 20*time.Millisecond, replica.p, func() (bool, string) {
		res, err := probe(replica.addr(), "INFO", "replication")
		if err != nil {
			return false, err.Error()
		}
		st := infoField(fmt.Sprint(res), "master_link_status")
		return st == "up", "master_link_status:" + st
	})
	if err != nil {
		return s, fmt.Errorf("replica %s did not sync with %s: %v\n%s", replica.addr(), primary.addr(), err, s.allLogs())
	}

	for i := range 3 {
		srv, err := startServer(filepath.Join(dir, fmt.Sprintf("sentinel%d", i)), true, false, func(srv *server) string {
			return sentinelConf(srv, primary.port)
		})
		if err != nil {
			return s, fmt.Errorf("starting sentinel %d: %v", i, err)
		}
		s.sentinels = append(s.sentinels, srv)
	}

	err = waitFor(sentinelReadyTimeout, 50*time.Millisecond, nil, func() (bool, string) {
		for _, sn := range s.sentinels {
			if ok, msg := sentinelSees(sn.addr(), primary.addr(), replica.addr()); !ok {
				return false, msg
			}
		}
		return true, ""
	})
	if err != nil {
		return s, fmt.Errorf("the sentinels did not settle: %v\n%s", err, s.allLogs())
	}
	return s, nil
}

// close closes the client and stops the sentinels and the data nodes.
func (s *Sentinel) close() error {
	s.mu.Lock()
	if s.client != nil {
		_ = s.client.Close()
		s.client = nil
	}
	s.mu.Unlock()
	var errs []error
	for _, srv := range append(append([]*server(nil), s.sentinels...), s.data...) {
		errs = append(errs, srv.stop())
	}
	return errors.Join(errs...)
}

// sentinelConf is the config of one sentinel monitoring 127.0.0.1:primaryPort.
func sentinelConf(s *server, primaryPort int) string {
	m := SentinelMasterName
	lines := []string{
		"bind 127.0.0.1",
		"port " + strconv.Itoa(s.port),
		"protected-mode no",
		"daemonize no",
		"dir " + confQuote(s.dir),
		"logfile " + confQuote(s.logFile()),
		"sentinel monitor " + m + " 127.0.0.1 " + strconv.Itoa(primaryPort) + " 2",
		"sentinel down-after-milliseconds " + m + " 1000",
		"sentinel failover-timeout " + m + " 3000",
		"sentinel parallel-syncs " + m + " 1",
	}
	return strings.Join(lines, "\n") + "\n"
}

func sentinelClient(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(probeOptions(addr))
}

// sentinelSees checks that the sentinel at addr monitors primary as a
// healthy master, knows two other sentinels and sees replica as a healthy,
// connected replica.
func sentinelSees(addr, primary, replica string) (bool, string) {
	sc := sentinelClient(addr)
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := sc.Master(ctx, SentinelMasterName).Result()
	if err != nil {
		return false, fmt.Sprintf("sentinel %s: SENTINEL MASTER: %v", addr, err)
	}
	if got := m["ip"] + ":" + m["port"]; got != primary || m["flags"] != "master" {
		return false, fmt.Sprintf("sentinel %s sees master %s with flags %s, want %s", addr, got, m["flags"], primary)
	}
	if m["num-other-sentinels"] != "2" {
		return false, fmt.Sprintf("sentinel %s knows %s other sentinels, want 2", addr, m["num-other-sentinels"])
	}
	reps, err := sc.Replicas(ctx, SentinelMasterName).Result()
	if err != nil {
		return false, fmt.Sprintf("sentinel %s: SENTINEL REPLICAS: %v", addr, err)
	}
	for _, r := range reps {
		if r["ip"]+":"+r["port"] == replica {
			if r["flags"] != "slave" || r["master-link-status"] != "ok" {
				return false, fmt.Sprintf("sentinel %s sees replica %s with flags %s and master-link-status %s",
					addr, replica, r["flags"], r["master-link-status"])
			}
			return true, ""
		}
	}
	return false, fmt.Sprintf("sentinel %s does not see replica %s yet", addr, replica)
}

// SentinelAddrs returns the addresses of the three sentinels.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, n := range s.sentinels {
		addrs[i] = n.addr()
	}
	return addrs
}

// MasterName returns the name the sentinels monitor the primary under,
// "mymaster".
func (s *Sentinel) MasterName() string { return SentinelMasterName }

// URL returns the setup's URL in the form go-redis's ParseFailoverURL
// reads: "redis://127.0.0.1:s1?addr=127.0.0.1:s2&addr=127.0.0.1:s3&master_name=mymaster",
// where s1, s2 and s3 are the sentinels' ports.
func (s *Sentinel) URL() string {
	addrs := s.SentinelAddrs()
	u := "redis://" + addrs[0] + "?"
	for _, a := range addrs[1:] {
		u += "addr=" + a + "&"
	}
	return u + "master_name=" + SentinelMasterName
}

// MasterAddr returns the primary's address as the first sentinel that
// answers reports it. It fails the test if no sentinel answers.
func (s *Sentinel) MasterAddr() string {
	s.t.Helper()
	addr, err := s.masterAddr()
	if err != nil {
		s.t.Fatalf("testenv: %v", err)
	}
	return addr
}

func (s *Sentinel) masterAddr() (string, error) {
	var errs []string
	for _, sn := range s.sentinels {
		addr, err := askMasterAddr(sn.addr())
		if err == nil {
			return addr, nil
		}
		errs = append(errs, err.Error())
	}
	return "", fmt.Errorf("no sentinel reports the primary: %s", strings.Join(errs, "; "))
}

func askMasterAddr(sentinel string) (string, error) {
	sc := sentinelClient(sentinel)
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	hp, err := sc.GetMasterAddrByName(ctx, SentinelMasterName).Result()
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", sentinel, err)
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("sentinel %s: unexpected answer %q", sentinel, hp)
	}
	return hp[0] + ":" + hp[1], nil
}

// Client returns a go-redis failover client (through the sentinels) to the
// primary, for assertions. It is created on first use, shared by later calls
// and closed at cleanup.
func (s *Sentinel) Client() redis.UniversalClient {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs:      s.SentinelAddrs(),
			MasterName: SentinelMasterName,
		})
	}
	return s.client
}

// KillPrimary SIGKILLs the current primary (as MasterAddr reports it) and
// returns its address. It fails the test if that address is not one of the
// setup's servers or is not running.
func (s *Sentinel) KillPrimary() string {
	s.t.Helper()
	addr := s.MasterAddr()
	for _, srv := range s.data {
		if srv.addr() == addr && srv.running() {
			if err := srv.stop(); err != nil {
				s.t.Fatalf("testenv: KillPrimary: %v", err)
			}
			return addr
		}
	}
	s.t.Fatalf("testenv: KillPrimary: the sentinels report %s, which is not a running server of this setup", addr)
	return ""
}

// WaitFailover waits until every sentinel reports a primary other than old
// and that primary answers PING and reports role:master. It returns an
// error when timeout passes first.
func (s *Sentinel) WaitFailover(old string, timeout time.Duration) error {
	err := waitFor(timeout, 50*time.Millisecond, nil, func() (bool, string) {
		var addr string
		for _, sn := range s.sentinels {
			if !sn.running() {
				continue
			}
			a, err := askMasterAddr(sn.addr())
			if err != nil {
				return false, err.Error()
			}
			if a == old {
				return false, fmt.Sprintf("sentinel %s still reports %s", sn.addr(), old)
			}
			if addr != "" && a != addr {
				return false, fmt.Sprintf("sentinels disagree: %s and %s", addr, a)
			}
			addr = a
		}
		if addr == "" {
			return false, "no live sentinel"
		}
		if _, err := probe(addr, "PING"); err != nil {
			return false, fmt.Sprintf("new primary %s: %v", addr, err)
		}
		res, err := probe(addr, "INFO", "replication")
		if err != nil {
			return false, fmt.Sprintf("new primary %s: %v", addr, err)
		}
		if role := infoField(fmt.Sprint(res), "role"); role != "master" {
			return false, fmt.Sprintf("new primary %s has role:%s", addr, role)
		}
		return true, ""
	})
	if err != nil {
		return fmt.Errorf("testenv: no failover away from %s: %w", old, err)
	}
	return nil
}

// Logs returns the output and log files of every server and sentinel, for
// failure messages.
func (s *Sentinel) Logs() string { return s.allLogs() }

func (s *Sentinel) allLogs() string {
	var b strings.Builder
	for _, srv := range append(append([]*server(nil), s.data...), s.sentinels...) {
		b.WriteString(srv.logs())
	}
	return b.String()
}
