package store

import (
	"io/fs"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// TestMain runs the store tests, then checks that every script the
// package runs (scriptSources) ran on a Redis Cluster
// (testenv.ScriptsRanOnCluster): a script added without a store test on
// every deployment fails the run.
func TestMain(m *testing.M) {
	testenv.Main(m, testenv.ScriptsRanOnCluster(scriptSources))
}

// luaSources returns every script of lua/ by name.
func luaSources() map[string]string {
	files, err := fs.Glob(luaFiles, "lua/*.lua")
	if err != nil {
		panic(err)
	}
	out := map[string]string{}
	for _, f := range files {
		src, err := luaFiles.ReadFile(f)
		if err != nil {
			panic(err)
		}
		out[strings.TrimSuffix(path.Base(f), ".lua")] = string(src)
	}
	return out
}

// testTimeout is the per-call deadline of the stores the tests open.
const testTimeout = time.Second

// forEachDeployment runs f with a store on each deployment of
// testenv.ForEachDeployment (standalone, the shared 3-master+replica
// cluster, the shared sentinel setup; IDLINK_TEST_DEPLOYMENTS selects), each
// empty at the start. Store operations tested this way are proven on the
// cluster, which TestMain's check requires of every script.
func forEachDeployment(t *testing.T, f func(t *testing.T, s *Store, d testenv.Deployment)) {
	t.Helper()
	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) {
		f(t, storeFor(t, d), d)
	})
}

// redisDeployments returns the selected deployments with a real Redis
// (testenv.DeploymentNames without embedded; none without redis-server
// outside CI), each the test's alone and empty (testenv.UseDeployment),
// for store tests that keep their own list of backends.
func redisDeployments(t *testing.T) []testenv.Deployment {
	t.Helper()
	var out []testenv.Deployment
	for _, name := range testenv.DeploymentNames(t) {
		if name != testenv.DeployEmbedded {
			out = append(out, testenv.UseDeployment(t, name))
		}
	}
	return out
}

// storeFor opens a store on d (the embedded store when d.URL is "") and
// closes it when the test ends.
func storeFor(tb testing.TB, d testenv.Deployment) *Store {
	tb.Helper()
	var s *Store
	var err error
	if d.URL == "" {
		s, err = OpenEmbedded(testTimeout)
	} else {
		s, err = Open(d.URL, testTimeout)
	}
	if err != nil {
		tb.Fatal(err)
	}
	if want := d.Name; s.Kind() != want {
		tb.Fatalf("a store on the %s deployment is of kind %s", want, s.Kind())
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// TestEveryLuaFileIsInAScript: every file of lua/ is part of a script
// registered with newScript, so the cluster check of TestMain covers it.
func TestEveryLuaFileIsInAScript(t *testing.T) {
	files := luaSources()
	if files["resolve"] == "" {
		t.Fatalf("luaSources() = %v, want at least resolve", files)
	}
	for name, src := range files {
		found := false
		for _, script := range scriptSources {
			if strings.Contains(script, src) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("lua/%s.lua is part of no script built with newScript (scripts.go): nothing checks it runs on a cluster", name)
		}
	}
}
