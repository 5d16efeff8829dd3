package testenv

// Main: the package's run, its final checks, and the script coverage check on the Cluster.

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

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
