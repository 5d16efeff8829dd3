package testenv

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// multiKeyScript writes two keys and reads both back, so both keys must be
// in one slot.
var multiKeyScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('MGET', KEYS[1], KEYS[2])
`)

func checkClusterBasics(t *testing.T, c *Cluster, nodes int) {
	t.Helper()
	ctx := context.Background()
	addrs := c.Addrs()
	if len(addrs) != nodes {
		t.Fatalf("Addrs() = %v, want %d nodes", addrs, nodes)
	}
	if slices.Contains(addrs, "127.0.0.1:6379") {
		t.Fatalf("Addrs() = %v contains 6379", addrs)
	}
	opts, err := redis.ParseClusterURL(c.URL())
	if err != nil {
		t.Fatalf("ParseClusterURL(%q): %v", c.URL(), err)
	}
	if !slices.Equal(opts.Addrs, addrs) {
		t.Fatalf("ParseClusterURL(%q).Addrs = %v, want %v", c.URL(), opts.Addrs, addrs)
	}
	fromURL := redis.NewClusterClient(opts)
	defer fromURL.Close()

	for _, cl := range []*redis.ClusterClient{c.Client(), fromURL} {
		got, err := multiKeyScript.Run(ctx, cl, []string{"{user:1}:a", "{user:1}:b"}, "x", "y").StringSlice()
		if err != nil || !slices.Equal(got, []string{"x", "y"}) {
			t.Fatalf("script on keys with one hash tag = %v, %v; want [x y]", got, err)
		}
		_, err = multiKeyScript.Run(ctx, cl, []string{"{user:1}:a", "{user:2}:b"}, "x", "y").Result()
		if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
			t.Fatalf("script on keys with two hash tags: err = %v, want CROSSSLOT", err)
		}
	}
}

func TestCluster3Masters(t *testing.T) {
	t.Parallel()
	c := StartCluster(t, 3, 0)
	checkClusterBasics(t, c, 3)
	if err := c.WaitHealthy(time.Second); err != nil {
		t.Fatalf("WaitHealthy on a new cluster: %v", err)
	}
}

func TestCluster3Masters1ReplicaFailover(t *testing.T) {
	t.Parallel()
	c := StartCluster(t, 3, 1)
	checkClusterBasics(t, c, 6)
	ctx := context.Background()
	cl := c.Client()

	// Keys spread over every master.
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
		if err := cl.Set(ctx, keys[i], "v", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", keys[i], err)
		}
	}

	masters, err := c.currentMasters()
	if err != nil || len(masters) != 3 {
		t.Fatalf("currentMasters = %v, %v", masters, err)
	}
	start := time.Now()
	killed := c.KillMaster(0)
	if killed != masters[0] {
		t.Fatalf("KillMaster(0) = %s, want %s (the master of slot 0)", killed, masters[0])
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, c.Logs())
	}
	t.Logf("cluster healthy again %v after killing %s", time.Since(start).Round(time.Millisecond), killed)

	after, err := c.currentMasters()
	if err != nil || len(after) != 3 || slices.Contains(after, killed) {
		t.Fatalf("masters after failover = %v, %v; want 3 without %s", after, err, killed)
	}
	// go-redis (v9.23) keeps routing a dead master's slots to it until a
	// MOVED reply or ClusterStateReloadInterval (60 s by default): a
	// connection refused does not refresh its slot map. Ask for a refresh.
	cl.ReloadState(ctx)
	for _, k := range keys {
		poll(t, 10*time.Second, "SET "+k+" after failover", func() error {
			return cl.Set(ctx, k, "w", 0).Err()
		})
	}
	checkClusterBasics(t, c, 6)
}

func TestClusterKillMasterOf(t *testing.T) {
	t.Parallel()
	c := StartCluster(t, 3, 1)
	ctx := context.Background()
	cl := c.Client()
	want, err := cl.MasterForKey(ctx, "{chan}")
	if err != nil {
		t.Fatal(err)
	}
	killed := c.KillMasterOf("{chan}")
	if killed != want.Options().Addr {
		t.Fatalf("KillMasterOf killed %s, the master of the key is %s", killed, want.Options().Addr)
	}
	if err := c.WaitHealthy(20 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, c.Logs())
	}
	after, err := c.masterOf("{chan}")
	if err != nil || after == killed {
		t.Fatalf("master of the key after failover: %s, %v", after, err)
	}
}

func TestParseClusterNodes(t *testing.T) {
	out := `07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,hostname2 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001,hostname1 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005,hostname5 master,fail - 1426238316232 1426238315233 5 connected 10923 10924-16383`
	nodes := parseClusterNodes(out)
	if len(nodes) != 4 {
		t.Fatalf("%d nodes", len(nodes))
	}
	if n := nodes[0]; n.addr != "127.0.0.1:30004" || !n.flags["slave"] || n.masterID != "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca" || n.slots != 0 {
		t.Errorf("replica: %+v", n)
	}
	if n := nodes[2]; !n.flags["master"] || n.firstSlot != 0 || n.slots != 5461 || n.failing() {
		t.Errorf("master: %+v", n)
	}
	if n := nodes[3]; !n.failing() || n.firstSlot != 10923 || n.slots != 16384-10923 {
		t.Errorf("failed master: %+v", n)
	}
}
