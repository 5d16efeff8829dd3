package caddymodule

import (
	"testing"

	"github.com/idlink/idlink/testenv"
)

// TestMain runs the tests through testenv.Main, which stops the Redis
// Cluster and Sentinel setups the tests share when they are done.
func TestMain(m *testing.M) { testenv.Main(m) }

// forEachStore runs test once per Redis deployment (testenv.ForEachDeployment:
// standalone, the shared 3-master+replica cluster and the shared Sentinel
// setup by default; IDLINK_TEST_DEPLOYMENTS selects), as a subtest named
// after it, with the deployment's URL ("" for the embedded store when
// redis-server is missing). Each run starts on an empty deployment. A test
// whose behaviour touches Redis is written as
//
//	func TestX(t *testing.T) { forEachStore(t, testX) }
//	func testX(t *testing.T, redisURL string) { app := newTestApp(t, redisURL, nil); ... }
func forEachStore(t *testing.T, test func(t *testing.T, redisURL string)) {
	t.Helper()
	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) { test(t, d.URL) })
}
