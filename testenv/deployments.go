package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"
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
