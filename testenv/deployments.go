package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Deployment names, as IDLINK_TEST_DEPLOYMENTS lists them.
const (
	// DeployStandalone is one redis-server of the test's own (StartRedis).
	DeployStandalone = "standalone"
	// DeployCluster is a Redis Cluster of 3 masters with 1 replica each,
	// started once per test binary and shared (see UseDeployment).
	DeployCluster = "cluster"
	// DeploySentinel is a primary, a replica and 3 sentinels, started once
	// per test binary and shared (see UseDeployment).
	DeploySentinel = "sentinel"
	// DeployEmbedded is no Redis at all: URL is "" and the code under test
	// uses its embedded store. Only when listed in IDLINK_TEST_DEPLOYMENTS,
	// or as the fallback when redis-server is missing outside CI.
	DeployEmbedded = "embedded"
)

// DeploymentsEnv is the environment variable that selects the deployments
// ForEachDeployment runs on: a comma-separated list of "standalone",
// "cluster", "sentinel" and "embedded". Default: standalone,cluster,sentinel.
const DeploymentsEnv = "IDLINK_TEST_DEPLOYMENTS"

// The shape of the shared cluster.
const (
	SharedClusterMasters  = 3
	SharedClusterReplicas = 1
)

const (
	// leaseTimeout bounds the wait for another test to release a shared
	// deployment.
	leaseTimeout = 5 * time.Minute
	// leaseResetTimeout bounds the health check and FLUSHALL that hand a
	// shared deployment to the next test.
	leaseResetTimeout = 10 * time.Second
)

var defaultDeployments = []string{DeployStandalone, DeployCluster, DeploySentinel}

// Deployment is one Redis deployment a test runs against, as handed out by
// UseDeployment and ForEachDeployment. It starts empty (FLUSHALL), and is
// the test's alone until the test ends.
type Deployment struct {
	// Name is "standalone", "cluster", "sentinel" or "embedded".
	Name string
	// URL is the deployment's URL in the form go-redis parses for its
	// kind: redis://127.0.0.1:p/0 (ParseURL),
	// redis://127.0.0.1:p1?addr=127.0.0.1:p2&addr=... (ParseClusterURL,
	// every node listed) or
	// redis://127.0.0.1:s1?addr=127.0.0.1:s2&addr=...&master_name=mymaster
	// (ParseFailoverURL, the sentinels). "" for embedded.
	URL string
	// Client is a go-redis client to the deployment for assertions: a
	// *redis.Client (standalone; sentinel, through the sentinels) or a
	// *redis.ClusterClient; nil for embedded. It is shared: do not close it.
	Client redis.UniversalClient
}

// ForEachMaster calls fn with a client of every master of the deployment
// (one for standalone and sentinel, each master of a cluster),
// concurrently. It does nothing for embedded.
func (d Deployment) ForEachMaster(ctx context.Context, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := d.Client.(type) {
	case nil:
		return nil
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	default:
		return fmt.Errorf("testenv: unexpected client %T", d.Client)
	}
}

// DeploymentNames returns the deployments selected by
// IDLINK_TEST_DEPLOYMENTS (default standalone, cluster, sentinel), in that
// order. It fails the test on an unknown name. When redis-server is
// missing it behaves as RequireRedis: a failure in CI, and otherwise only
// "embedded" is returned.
func DeploymentNames(tb testing.TB) []string {
	tb.Helper()
	names, err := selectedDeployments()
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	if needsRedis(names) && !RequireRedis(tb) {
		return []string{DeployEmbedded}
	}
	return names
}

func needsRedis(names []string) bool {
	for _, n := range names {
		if n != DeployEmbedded {
			return true
		}
	}
	return false
}

func selectedDeployments() ([]string, error) {
	raw := strings.TrimSpace(os.Getenv(DeploymentsEnv))
	if raw == "" {
		return defaultDeployments, nil
	}
	var names []string
	seen := map[string]bool{}
	for _, n := range strings.Split(raw, ",") {
		n = strings.TrimSpace(n)
		switch n {
		case DeployStandalone, DeployCluster, DeploySentinel, DeployEmbedded:
		case "":
			continue
		default:
			return nil, fmt.Errorf("%s=%q: unknown deployment %q (want a comma-separated list of %s, %s, %s, %s)",
				DeploymentsEnv, raw, n, DeployStandalone, DeployCluster, DeploySentinel, DeployEmbedded)
		}
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s=%q names no deployment", DeploymentsEnv, raw)
	}
	return names, nil
}

// deploymentSelected reports whether name is among the selected
// deployments.
func deploymentSelected(name string) bool {
	names, err := selectedDeployments()
	if err != nil {
		return false
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// ForEachDeployment runs f as a subtest named after each deployment of
// DeploymentNames, with that deployment (see UseDeployment). f may use
// the deployment for the whole subtest; it must not call t.Parallel with
// a shared deployment (the subtest would hold it while paused).
//
//	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) {
//		s := open(t, d.URL)
//		...
//	})
func ForEachDeployment(t *testing.T, f func(t *testing.T, d Deployment)) {
	t.Helper()
	for _, name := range DeploymentNames(t) {
		t.Run(name, func(t *testing.T) { f(t, UseDeployment(t, name)) })
	}
}

// UseDeployment hands tb the named deployment, empty, for the rest of tb:
//
//   - standalone: a redis-server of tb's own (StartRedis), stopped when tb
//     ends;
//   - cluster and sentinel: the instance shared by the whole test binary,
//     started on first use (a few seconds) and stopped by Main when every
//     test has run. tb gets it exclusively: UseDeployment waits until no
//     other test holds it, checks that it is healthy and empties it
//     (FLUSHALL on every master; loaded scripts stay), and tb holds it
//     until it ends. A subtest of the holder may use it too (it is not
//     emptied again). Tests must not kill or pause its nodes: fault tests
//     start their own with StartCluster or StartSentinel;
//   - embedded: no Redis, URL "".
//
// A package whose tests use a shared deployment must run them through Main
// (func TestMain(m *testing.M) { testenv.Main(m) }); without it each test
// starts a private instance, which is correct but slow, and says so in the
// test log.
func UseDeployment(tb testing.TB, name string) Deployment {
	tb.Helper()
	switch name {
	case DeployEmbedded:
		return Deployment{Name: name}
	case DeployStandalone:
		r := StartRedis(tb)
		if r == nil {
			return Deployment{Name: DeployEmbedded}
		}
		return Deployment{Name: name, URL: r.URL(), Client: r.Client()}
	case DeployCluster:
		requireRedisOrSkip(tb, "a Redis Cluster")
		if !mainActive.Load() {
			tb.Logf("testenv: the package does not run testenv.Main from TestMain: starting a private cluster for %s (slow)", tb.Name())
			c := StartCluster(tb, SharedClusterMasters, SharedClusterReplicas)
			return Deployment{Name: name, URL: c.URL(), Client: c.Client()}
		}
		return sharedCluster.acquire(tb)
	case DeploySentinel:
		requireRedisOrSkip(tb, "Redis Sentinel")
		if !mainActive.Load() {
			tb.Logf("testenv: the package does not run testenv.Main from TestMain: starting a private sentinel setup for %s (slow)", tb.Name())
			s := StartSentinel(tb)
			return Deployment{Name: name, URL: s.URL(), Client: s.Client()}
		}
		return sharedSentinel.acquire(tb)
	default:
		tb.Fatalf("testenv: UseDeployment(%q): unknown deployment", name)
		return Deployment{}
	}
}

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
// shared deployments still run (see Main). An error fails the run.
type FinalCheck func() error

// Main runs the package's tests (m.Run), then, if they passed, every
// check, then stops the deployments the tests shared, and exits with the
// run's status. Call it from TestMain in every package whose tests use
// ForEachDeployment or UseDeployment:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M, checks ...FinalCheck) {
	os.Exit(runMain(m, checks))
}

func runMain(m *testing.M, checks []FinalCheck) int {
	mainActive.Store(true)
	defer mainActive.Store(false)
	code := m.Run()
	if code == 0 {
		for _, check := range checks {
			if err := check(); err != nil {
				fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
				code = 1
			}
		}
	}
	for _, s := range allShared {
		if err := s.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stopping the shared %s: %v\n", s.name, err)
		}
	}
	_ = os.RemoveAll(ownSharedDir())
	return code
}

// ScriptsRanOnCluster is a FinalCheck that every Lua script of scripts
// (name → source) ran on a Redis Cluster during the tests (the shared one,
// or one a test started with StartCluster), which proves it does not
// touch keys of several slots: a script whose KEYS span slots is refused
// with CROSSSLOT before it is loaded, and one that reaches a key it was
// not given fails (and its test with it).
//
// It looks, on every live node, for the script's SHA1 in the script cache,
// where EVAL (go-redis's fallback when EVALSHA answers NOSCRIPT) leaves
// it; FLUSHALL between tests does not empty that cache. A cluster a test
// started is looked at when the test stops it. A script that ran on no
// cluster fails the run with its name: make a test of its store
// operation run on every deployment (ForEachDeployment).
//
// Call it before m.Run (as Main's argument). The check applies only to a
// complete run: it is skipped (with a note) when -run, -skip or -list
// selected tests, when the cluster is not among the selected deployments,
// or when redis-server is missing outside CI.
func ScriptsRanOnCluster(scripts map[string]string) FinalCheck {
	shas := map[string]string{} // name → SHA1
	for name, src := range scripts {
		shas[name] = redis.NewScript(src).Hash()
	}
	watchScripts(shas)
	return func() error {
		if why := partialRun(); why != "" {
			fmt.Printf("testenv: not checking that every Lua script ran on a cluster: %s\n", why)
			return nil
		}
		if inst := sharedCluster.running(); inst != nil {
			if err := recordScripts(inst.(clusterInstance).c); err != nil {
				return err
			}
		}
		if missing := scriptsNotSeen(shas); len(missing) > 0 {
			return fmt.Errorf("testenv: these Lua scripts never ran on a Redis Cluster during the tests, so nothing proves them single-slot: %s; "+
				"run a test of their store operation on every deployment (testenv.ForEachDeployment)", strings.Join(missing, ", "))
		}
		return nil
	}
}

var (
	watchMu sync.Mutex
	// watched maps the SHA1 of every script a ScriptsRanOnCluster check
	// wants to whether it was seen on a cluster.
	watched = map[string]bool{}
)

func watchScripts(shas map[string]string) {
	watchMu.Lock()
	defer watchMu.Unlock()
	for _, sha := range shas {
		if _, ok := watched[sha]; !ok {
			watched[sha] = false
		}
	}
}

// recordScripts notes which watched scripts are in the script cache of a
// live node of c. Cluster.close calls it before it stops the nodes.
func recordScripts(c *Cluster) error {
	watchMu.Lock()
	var shas []string
	for sha, seen := range watched {
		if !seen {
			shas = append(shas, sha)
		}
	}
	watchMu.Unlock()
	if len(shas) == 0 {
		return nil
	}
	var errs []error
	for _, n := range c.live() {
		res, err := probe(n.addr(), append([]any{"SCRIPT", "EXISTS"}, toAny(shas)...)...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		list, _ := res.([]any)
		watchMu.Lock()
		for i, v := range list {
			if n, _ := v.(int64); n == 1 && i < len(shas) {
				watched[shas[i]] = true
			}
		}
		watchMu.Unlock()
	}
	if len(errs) > 0 {
		return fmt.Errorf("testenv: SCRIPT EXISTS on the cluster: %w", errors.Join(errs...))
	}
	return nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// scriptsNotSeen returns the names of the scripts of shas not seen on a
// cluster, sorted.
func scriptsNotSeen(shas map[string]string) []string {
	watchMu.Lock()
	defer watchMu.Unlock()
	var missing []string
	for name, sha := range shas {
		if !watched[sha] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	return missing
}

// partialRun says why the run does not cover every test of the package
// on the cluster, or "" if it does.
func partialRun() string {
	for _, f := range []string{"test.run", "test.skip", "test.list"} {
		if fl := flagLookup(f); fl != "" {
			return "-" + strings.TrimPrefix(f, "test.") + " " + fl
		}
	}
	if !deploymentSelected(DeployCluster) {
		return DeploymentsEnv + " does not select the cluster"
	}
	if !Available() {
		if inCI() {
			return ""
		}
		return "redis-server is not installed"
	}
	return ""
}

// flagLookup returns the value of a command-line flag, "" if undefined.
func flagLookup(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}
