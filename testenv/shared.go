package testenv

// Deployments started once per test binary and leased to one test at a time.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// mainActive is set by Main: shared deployments are stopped when the
// tests end.
var mainActive atomic.Bool

// shared is a deployment started once per test binary and leased to one
// test at a time.
type shared struct {
	name  string
	start func(dir string) (instance, error)

	sem chan struct{} // holds a token while a test holds the lease

	mu     sync.Mutex
	holder string // name of the test holding the lease
	inst   instance
	err    error // a failed start is not retried
	dir    string
}

// instance is a running shared deployment.
type instance interface {
	deployment() Deployment
	// reset checks the deployment is healthy and empties it.
	reset(ctx context.Context) error
	close() error
	logs() string
}

var (
	sharedCluster = &shared{name: DeployCluster, sem: make(chan struct{}, 1), start: func(dir string) (instance, error) {
		c, err := startCluster(dir, SharedClusterMasters, SharedClusterReplicas)
		if err != nil {
			return nil, err
		}
		return clusterInstance{c}, nil
	}}
	sharedSentinel = &shared{name: DeploySentinel, sem: make(chan struct{}, 1), start: func(dir string) (instance, error) {
		s, err := startSentinel(dir)
		if err != nil {
			return nil, err
		}
		return sentinelInstance{s}, nil
	}}
	allShared = []*shared{sharedCluster, sharedSentinel}
)

func (s *shared) acquire(tb testing.TB) Deployment {
	tb.Helper()
	name := tb.Name()
	s.mu.Lock()
	if h := s.holder; h != "" && (name == h || strings.HasPrefix(name, h+"/")) {
		d := s.inst.deployment()
		s.mu.Unlock()
		return d
	}
	s.mu.Unlock()

	select {
	case s.sem <- struct{}{}:
	case <-time.After(leaseTimeout):
		s.mu.Lock()
		h := s.holder
		s.mu.Unlock()
		tb.Fatalf("testenv: %s waited %v for the shared %s held by %s", name, leaseTimeout, s.name, h)
	}
	s.mu.Lock()
	s.holder = name
	s.mu.Unlock()
	tb.Cleanup(func() {
		s.mu.Lock()
		s.holder = ""
		s.mu.Unlock()
		<-s.sem
	})

	inst, err := s.instance()
	if err != nil {
		tb.Fatalf("testenv: starting the shared %s: %v", s.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaseResetTimeout)
	defer cancel()
	if err := inst.reset(ctx); err != nil {
		tb.Fatalf("testenv: the shared %s is not usable (did a test kill or pause one of its nodes?): %v\n%s", s.name, err, inst.logs())
	}
	return inst.deployment()
}

// instance starts the shared deployment on first use. Only the lease
// holder calls it.
func (s *shared) instance() (instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inst != nil || s.err != nil {
		return s.inst, s.err
	}
	dir, err := sharedDir()
	if err == nil {
		s.dir, err = os.MkdirTemp(dir, s.name+"-")
	}
	if err == nil {
		s.inst, err = s.start(s.dir)
	}
	if err != nil {
		s.err = err
		if s.dir != "" {
			_ = os.RemoveAll(s.dir)
		}
	}
	return s.inst, s.err
}

// running returns the instance if it was started.
func (s *shared) running() instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inst
}

func (s *shared) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.inst != nil {
		err = s.inst.close()
		s.inst = nil
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
		s.dir = ""
	}
	return err
}

// sharedDir is the folder of this test binary's shared deployments,
// $TMPDIR/idlink-testenv-<uid>/shared-<pid>. Folders left there by test
// binaries that no longer run (killed before Main could clean up) are
// removed.
func sharedDir() (string, error) {
	base := sharedBase()
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	if entries, err := os.ReadDir(base); err == nil {
		for _, e := range entries {
			pidStr, ok := strings.CutPrefix(e.Name(), "shared-")
			if !ok || !e.IsDir() {
				continue
			}
			pid, err := strconv.Atoi(pidStr)
			if err != nil || pid == os.Getpid() {
				continue
			}
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				_ = os.RemoveAll(filepath.Join(base, e.Name()))
			}
		}
	}
	dir := ownSharedDir()
	return dir, os.MkdirAll(dir, 0o755)
}

func sharedBase() string {
	return filepath.Join(os.TempDir(), "idlink-testenv-"+strconv.Itoa(os.Getuid()))
}

func ownSharedDir() string {
	return filepath.Join(sharedBase(), "shared-"+strconv.Itoa(os.Getpid()))
}

type clusterInstance struct{ c *Cluster }

func (ci clusterInstance) deployment() Deployment {
	return Deployment{Name: DeployCluster, URL: ci.c.URL(), Client: ci.c.Client()}
}

func (ci clusterInstance) reset(ctx context.Context) error {
	if err := ci.c.WaitHealthy(leaseResetTimeout); err != nil {
		return err
	}
	return ci.c.Client().ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.FlushAll(ctx).Err()
	})
}

func (ci clusterInstance) close() error { return ci.c.close() }
func (ci clusterInstance) logs() string { return ci.c.Logs() }

type sentinelInstance struct{ s *Sentinel }

func (si sentinelInstance) deployment() Deployment {
	return Deployment{Name: DeploySentinel, URL: si.s.URL(), Client: si.s.Client()}
}

func (si sentinelInstance) reset(ctx context.Context) error {
	return si.s.Client().FlushAll(ctx).Err()
}

func (si sentinelInstance) close() error { return si.s.close() }
func (si sentinelInstance) logs() string { return si.s.Logs() }

// A FinalCheck runs after every test of the package passed, while the
