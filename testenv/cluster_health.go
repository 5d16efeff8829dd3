package testenv

// Reading a Cluster's state: CLUSTER NODES, its masters, whether it is healthy and settled.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

type clusterNode struct {
	id, addr, masterID string
	flags              map[string]bool
	firstSlot          int // -1 if none
	slots              int
}

func (n clusterNode) failing() bool { return n.flags["fail"] || n.flags["fail?"] }

func parseClusterNodes(s string) []clusterNode {
	var nodes []clusterNode
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := clusterNode{id: f[0], addr: addr, masterID: f[3], flags: map[string]bool{}, firstSlot: -1}
		for _, fl := range strings.Split(f[2], ",") {
			n.flags[fl] = true
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				continue
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					continue
				}
			}
			n.slots += b - a + 1
			if n.firstSlot < 0 || a < n.firstSlot {
				n.firstSlot = a
			}
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// clusterNodes asks addr for CLUSTER NODES.
func clusterNodes(addr string) ([]clusterNode, error) {
	res, err := probe(addr, "CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	return parseClusterNodes(fmt.Sprint(res)), nil
}

// currentMasters returns the addresses of the healthy masters owning slots,
// ordered by lowest slot, as the first live node that answers sees them.
func (c *Cluster) currentMasters() ([]string, error) {
	var lastErr error = errors.New("no live node")
	for _, n := range c.live() {
		nodes, err := clusterNodes(n.addr())
		if err != nil {
			lastErr = err
			continue
		}
		var masters []clusterNode
		for _, cn := range nodes {
			if cn.flags["master"] && !cn.failing() && cn.slots > 0 {
				if srv := c.node(cn.addr); srv != nil && srv.running() {
					masters = append(masters, cn)
				}
			}
		}
		sort.Slice(masters, func(i, j int) bool { return masters[i].firstSlot < masters[j].firstSlot })
		addrs := make([]string, len(masters))
		for i, m := range masters {
			addrs[i] = m.addr
		}
		return addrs, nil
	}
	return nil, lastErr
}

// healthy checks the condition of WaitHealthy once.
func (c *Cluster) healthy() (bool, string) {
	live := c.live()
	if len(live) == 0 {
		return false, "no live node"
	}
	for _, n := range live {
		res, err := probe(n.addr(), "CLUSTER", "INFO")
		if err != nil {
			return false, err.Error()
		}
		info := fmt.Sprint(res)
		if st := infoField(info, "cluster_state"); st != "ok" {
			return false, fmt.Sprintf("%s: cluster_state:%s", n.addr(), st)
		}
		if ok := infoField(info, "cluster_slots_ok"); ok != strconv.Itoa(clusterSlots) {
			return false, fmt.Sprintf("%s: cluster_slots_ok:%s", n.addr(), ok)
		}
		if msg := c.slotsServedByLive(n.addr()); msg != "" {
			return false, msg
		}
	}
	return true, ""
}

// slotsServedByLive checks, from addr's view (CLUSTER SLOTS), that every
// slot has a master and that the master is a live node of the cluster.
func (c *Cluster) slotsServedByLive(addr string) string {
	cl := redis.NewClient(probeOptions(addr))
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	slots, err := cl.ClusterSlots(ctx).Result()
	if err != nil {
		return fmt.Sprintf("%s: CLUSTER SLOTS: %v", addr, err)
	}
	covered := 0
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			return fmt.Sprintf("%s: slots %d-%d have no master", addr, s.Start, s.End)
		}
		m := s.Nodes[0].Addr
		if srv := c.node(m); srv == nil || !srv.running() {
			return fmt.Sprintf("%s: slots %d-%d are served by %s, which is not alive", addr, s.Start, s.End, m)
		}
		covered += s.End - s.Start + 1
	}
	if covered != clusterSlots {
		return fmt.Sprintf("%s: CLUSTER SLOTS covers %d slots", addr, covered)
	}
	return ""
}

// settled checks, once, that a new cluster is complete: healthy, every node
// sees every node, the expected number of masters each with the expected
// number of replicas, and every replica in sync.
func (c *Cluster) settled(masters, replicas int) (bool, string) {
	if ok, msg := c.healthy(); !ok {
		return false, msg
	}
	for _, n := range c.nodes {
		nodes, err := clusterNodes(n.addr())
		if err != nil {
			return false, err.Error()
		}
		if len(nodes) != len(c.nodes) {
			return false, fmt.Sprintf("%s knows %d nodes, want %d", n.addr(), len(nodes), len(c.nodes))
		}
		replicasOf := map[string]int{}
		gotMasters := 0
		for _, cn := range nodes {
			switch {
			case cn.failing():
				return false, fmt.Sprintf("%s sees %s as %v", n.addr(), cn.addr, cn.flags)
			case cn.flags["master"] && cn.slots > 0:
				gotMasters++
			case cn.flags["slave"]:
				replicasOf[cn.masterID]++
			}
		}
		if gotMasters != masters {
			return false, fmt.Sprintf("%s sees %d masters with slots, want %d", n.addr(), gotMasters, masters)
		}
		for _, cn := range nodes {
			if cn.flags["master"] && replicasOf[cn.id] != replicas {
				return false, fmt.Sprintf("%s sees %d replicas of %s, want %d", n.addr(), replicasOf[cn.id], cn.addr, replicas)
			}
		}
		res, err := probe(n.addr(), "INFO", "replication")
		if err != nil {
			return false, err.Error()
		}
		info := fmt.Sprint(res)
		if infoField(info, "role") == "slave" && infoField(info, "master_link_status") != "up" {
			return false, fmt.Sprintf("replica %s: master_link_status:%s", n.addr(), infoField(info, "master_link_status"))
		}
	}
	return true, ""
}
