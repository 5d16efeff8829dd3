// Package testenv starts and stops the real services that idlink's tests
// talk to: standalone Redis servers, Redis Clusters, Redis Sentinel setups,
// recording HTTP upstreams, and Caddy (in process or as a separate process).
//
// Every Redis process runs from the redis-server binary found on PATH, on
// free ports of 127.0.0.1 chosen at run time, with its files in the test's
// temporary folder. Nothing in this package ever talks to a Redis the machine
// may already run on 127.0.0.1:6379.
//
// All helpers register t.Cleanup functions that stop what they started, and
// every child process is started in its own process group with
// Pdeathsig=SIGKILL (Linux), so that it dies with the test binary even if the
// binary is killed before its cleanups run.
//
// When redis-server is not installed, RequireRedis and StartRedis let tests
// fall back to an embedded store outside CI, while in CI (CI=true) a missing
// redis-server is a test failure, never a skip. StartCluster and
// StartSentinel have no embedded fallback: outside CI they skip the test.
//
// ForEachDeployment and UseDeployment run a test on each deployment shape
// (standalone, a 3-master + 1-replica Cluster, a Sentinel setup; selected
// by IDLINK_TEST_DEPLOYMENTS). The Cluster and the Sentinel setup start once
// per test binary and are leased to one test at a time, emptied first; a
// package that uses them calls Main from its TestMain, which stops them
// when the tests are done and runs final checks such as
// ScriptsRanOnCluster.
//
// The package is meant for Linux (it relies on process groups, SIGSTOP and
// Pdeathsig); it builds on other Unix systems without the Pdeathsig safety net.
package testenv
