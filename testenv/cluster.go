package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterNodeTimeout is cluster-node-timeout in milliseconds: how long
	// a node may be unreachable before it is considered failing.
	clusterNodeTimeout = 1000
	// clusterSlots is the number of hash slots of a Redis Cluster.
	clusterSlots = 16384
	// clusterCreateTimeout bounds `redis-cli --cluster create`.
	clusterCreateTimeout = 30 * time.Second
	// clusterReadyTimeout bounds the wait for a new cluster to settle.
	clusterReadyTimeout = 20 * time.Second
)

// Cluster is a Redis Cluster of redis-server processes started by
// StartCluster. KillMaster must be called from the goroutine running the
// test that started it.
type Cluster struct {
	t     testing.TB
	nodes []*server

	mu     sync.Mutex
	client *redis.ClusterClient
}

// StartCluster starts masters*(1+replicas) redis-server processes with
// cluster-enabled yes (each on a free port with an explicit free
// cluster-port, cluster-node-timeout 1000 ms, files in t.TempDir()), joins
// them with `redis-cli --cluster create ... --cluster-replicas N
// --cluster-yes`, and waits until every node reports cluster_state:ok with
// all 16384 slots assigned and sees every node, and every replica is in
// sync with its master. Everything is stopped when the test ends.
//
// masters must be at least 3 and replicas at least 0. If redis-server is
// missing the test fails in CI and is skipped otherwise.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	if masters < 3 || replicas < 0 {
		t.Fatalf("testenv: StartCluster(%d, %d): a cluster needs at least 3 masters and 0 or more replicas", masters, replicas)
	}
	requireRedisOrSkip(t, "a Redis Cluster")
	c, err := startCluster(t.TempDir(), masters, replicas)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	c.t = t
	t.Cleanup(func() {
		if err := c.close(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return c
}

// startCluster starts a cluster with its files in dir. On error, whatever
// it started is stopped again. The returned Cluster has no test: the
// caller sets c.t (for KillMaster) and calls close.
func startCluster(dir string, masters, replicas int) (c *Cluster, err error) {
	c = &Cluster{}
	defer func() {
		if err != nil {
			_ = c.close()
			c = nil
		}
	}()

	n := masters * (1 + replicas)
	for i := range n {
		nodeDir := filepath.Join(dir, fmt.Sprintf("node%d", i))
		srv, err := startServer(nodeDir, false, true, clusterConf)
		if err != nil {
			return c, fmt.Errorf("starting cluster node %d: %v", i, err)
		}
		c.nodes = append(c.nodes, srv)
	}

	out, err := runRedisCLI(clusterCreateTimeout, append(append([]string{"--cluster", "create"}, c.Addrs()...),
		"--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")...)
	if err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %v\n%s\n%s", err, out, c.allLogs())
	}

	err = waitFor(clusterReadyTimeout, 50*time.Millisecond, nil, func() (bool, string) {
		return c.settled(masters, replicas)
	})
	if err != nil {
		return c, fmt.Errorf("cluster of %d masters and %d replicas each did not settle: %v\n--- redis-cli ---\n%s\n%s",
			masters, replicas, err, out, c.allLogs())
	}
	return c, nil
}

// close closes the client and stops every node, after noting which
// scripts watched by ScriptsRanOnCluster ran on it.
func (c *Cluster) close() error {
	_ = recordScripts(c) // best effort: a cluster without live nodes ran nothing we can see
	c.mu.Lock()
	if c.client != nil {
		_ = c.client.Close()
		c.client = nil
	}
	c.mu.Unlock()
	return c.stopAll()
}

// clusterConf is the config of a cluster node.
func clusterConf(s *server) string {
	lines := []string{
		"cluster-enabled yes",
		"cluster-config-file " + confQuote(filepath.Join(s.dir, "nodes.conf")),
		"cluster-port " + strconv.Itoa(s.busPort),
		"cluster-node-timeout " + strconv.Itoa(clusterNodeTimeout),
		"cluster-announce-ip 127.0.0.1",
		// A replica may always take over, however long it lost its master.
		"cluster-replica-validity-factor 0",
		// Keep the layout StartCluster made.
		"cluster-allow-replica-migration no",
	}
	return baseConf(s) + strings.Join(lines, "\n") + "\n"
}

// runRedisCLI runs redis-cli with args and returns its combined output.
func runRedisCLI(timeout time.Duration, args ...string) (string, error) {
	bin, err := exec.LookPath("redis-cli")
	if err != nil {
		return "", err
	}
	p, err := startProc("redis-cli", "", "", os.Environ(), bin, args...)
	if err != nil {
		return "", err
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.kill()
		return p.out.String(), fmt.Errorf("redis-cli did not finish within %v", timeout)
	}
	return p.out.String(), p.waitErr
}

// Addrs returns the addresses of all nodes, masters and replicas, in the
// order they were started (including nodes killed since).
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr()
	}
	return addrs
}

// URL returns the cluster's URL in the form go-redis's ParseClusterURL
// reads: "redis://127.0.0.1:p1?addr=127.0.0.1:p2&addr=127.0.0.1:p3...",
// listing every node.
func (c *Cluster) URL() string {
	addrs := c.Addrs()
	var b strings.Builder
	b.WriteString("redis://" + addrs[0])
	for i, a := range addrs[1:] {
		if i == 0 {
			b.WriteString("?")
		} else {
			b.WriteString("&")
		}
		b.WriteString("addr=" + a)
	}
	return b.String()
}

// Client returns a go-redis cluster client seeded with every node, for
// assertions. It is created on first use, shared by later calls and closed
// at cleanup.
//
// Note that after KillMaster go-redis (v9.23) keeps sending a dead master's
// slots to it (connection refused) until it gets a MOVED reply or its
// ClusterStateReloadInterval (60 s by default) passes; call
// Client().ReloadState after WaitHealthy.
func (c *Cluster) Client() *redis.ClusterClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		c.client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	}
	return c.client
}

// KillMaster SIGKILLs the i-th current master and returns its address.
// Masters are the nodes that CLUSTER NODES (asked of a live node) shows as
// healthy masters owning slots, ordered by their lowest slot, so master 0
// is the one that serves slot 0. It fails the test if there is no such
// master.
func (c *Cluster) KillMaster(i int) string {
	c.t.Helper()
	masters, err := c.currentMasters()
	if err != nil {
		c.t.Fatalf("testenv: KillMaster(%d): %v", i, err)
	}
	if i < 0 || i >= len(masters) {
		c.t.Fatalf("testenv: KillMaster(%d): there are %d live masters %v", i, len(masters), masters)
	}
	addr := masters[i]
	srv := c.node(addr)
	if srv == nil {
		c.t.Fatalf("testenv: KillMaster(%d): master %s is not a node of this cluster", i, addr)
	}
	if err := srv.stop(); err != nil {
		c.t.Fatalf("testenv: KillMaster(%d): %v", i, err)
	}
	return addr
}

// KillMasterOf SIGKILLs the master that serves key's hash slot, as
// CLUSTER SLOTS asked of a live node tells, and returns its address. Use
// it to take down the node a client must move away from, e.g. the one
// holding a pub/sub channel's subscriptions. It fails the test if no live
// node answers or the master is not a running node of this cluster.
func (c *Cluster) KillMasterOf(key string) string {
	c.t.Helper()
	addr, err := c.masterOf(key)
	if err != nil {
		c.t.Fatalf("testenv: KillMasterOf(%q): %v", key, err)
	}
	srv := c.node(addr)
	if srv == nil || !srv.running() {
		c.t.Fatalf("testenv: KillMasterOf(%q): master %s is not a running node of this cluster", key, addr)
	}
	if err := srv.stop(); err != nil {
		c.t.Fatalf("testenv: KillMasterOf(%q): %v", key, err)
	}
	return addr
}

func (c *Cluster) masterOf(key string) (string, error) {
	var lastErr error = errors.New("no live node")
	for _, n := range c.live() {
		cl := redis.NewClient(probeOptions(n.addr()))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		slot, err := cl.ClusterKeySlot(ctx, key).Result()
		var slots []redis.ClusterSlot
		if err == nil {
			slots, err = cl.ClusterSlots(ctx).Result()
		}
		cancel()
		cl.Close()
		if err != nil {
			lastErr = err
			continue
		}
		for _, r := range slots {
			if int64(r.Start) <= slot && slot <= int64(r.End) && len(r.Nodes) > 0 {
				return r.Nodes[0].Addr, nil
			}
		}
		return "", fmt.Errorf("%s: no master serves slot %d", n.addr(), slot)
	}
	return "", lastErr
}

// WaitHealthy waits until every live node reports cluster_state:ok with all
// 16384 slots ok, and every slot is served by a master that is alive, as
// CLUSTER SLOTS tells from every live node. It returns an error when
// timeout passes first.
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	err := waitFor(timeout, 50*time.Millisecond, nil, c.healthy)
	if err != nil {
		return fmt.Errorf("testenv: cluster not healthy: %w", err)
	}
	return nil
}

// Logs returns the output and log files of every node, for failure
// messages.
func (c *Cluster) Logs() string { return c.allLogs() }

func (c *Cluster) node(addr string) *server {
	for _, n := range c.nodes {
		if n.addr() == addr {
			return n
		}
	}
	return nil
}

func (c *Cluster) live() []*server {
	var live []*server
	for _, n := range c.nodes {
		if n.running() {
			live = append(live, n)
		}
	}
	return live
}

func (c *Cluster) stopAll() error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.stop()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Cluster) allLogs() string {
	var b strings.Builder
	for _, n := range c.nodes {
		b.WriteString(n.logs())
	}
	return b.String()
}

// clusterNode is one line of CLUSTER NODES.
