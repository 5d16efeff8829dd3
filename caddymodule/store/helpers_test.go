package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/testenv"
)

// backend is one kind of Redis deployment the store tests run against.
type backend struct {
	name  string
	store func(t *testing.T) *Store
}

// backends are every selected deployment (testenv.DeploymentNames: a real
// standalone Redis, the shared 3-master+replica Redis Cluster, which
// proves every script stays in one slot, and a Sentinel setup) and the
// embedded store. Without redis-server (outside CI) only the embedded one
// runs.
func backends(t *testing.T) []backend {
	bs := []backend{{"embedded", func(t *testing.T) *Store {
		s, err := OpenEmbedded(time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}}}
	if !testenv.RequireRedis(t) {
		return bs
	}
	for _, name := range testenv.DeploymentNames(t) {
		if name == testenv.DeployEmbedded {
			continue
		}
		bs = append(bs, backend{name, func(t *testing.T) *Store {
			return openStore(t, testenv.UseDeployment(t, name).URL)
		}})
	}
	return bs
}

func openStore(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(url, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// scanKeys returns every key matching pattern, on every master.
func scanKeys(t *testing.T, s *Store, pattern string) []string {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			keys = append(keys, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	var err error
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		t.Fatalf("unexpected client %T", s.rdb)
	}
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	return keys
}

// event is one outbox entry.
type event struct {
	Shard int
	Type  string
	Data  map[string]string
}

// events returns every outbox entry of the tenant, shard by shard.
func events(t *testing.T, s *Store, k *Keys) []event {
	t.Helper()
	var out []event
	for shard := range Shards {
		msgs, err := s.rdb.XRange(context.Background(), k.Events(shard), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			var data map[string]string
			if err := json.Unmarshal([]byte(m.Values["data"].(string)), &data); err != nil {
				t.Fatalf("event data %v: %v", m.Values, err)
			}
			if m.Values["tenant"] != k.Tenant() || m.Values["occurred_at"] == "" {
				t.Fatalf("event %v lacks tenant or occurred_at", m.Values)
			}
			out = append(out, event{Shard: shard, Type: m.Values["type"].(string), Data: data})
		}
	}
	return out
}

func countEvents(evs []event, typ string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// state is the tenant's linking state as read from Redis.
type state struct {
	installUser  map[string]string          // install → user
	userExt      map[string]string          // user → ext field
	userInstalls map[string]map[string]bool // user → installs set
	extUser      map[string]string          // external id → user
	// expires holds the keys above that have a TTL: "install:<id>",
	// "user:<id>", "installs:<user id>", "ext:<external id>".
	expires map[string]bool
}

func readState(t *testing.T, s *Store, k *Keys) state {
	t.Helper()
	ctx := context.Background()
	st := state{map[string]string{}, map[string]string{}, map[string]map[string]bool{}, map[string]string{}, map[string]bool{}}
	prefix := "idl:{" + k.Tenant() + ":"
	for _, key := range scanKeys(t, s, prefix+"*") {
		rest := key[strings.IndexByte(key, '}')+2:]
		name := ""
		switch {
		case strings.HasPrefix(rest, "inst:") && !strings.HasSuffix(rest, ":lock"):
			st.installUser[rest[5:]] = s.rdb.HGet(ctx, key, "user").Val()
			name = "install:" + rest[5:]
		case strings.HasPrefix(rest, "user:") && strings.HasSuffix(rest, ":installs"):
			u := strings.TrimSuffix(rest[5:], ":installs")
			if st.userInstalls[u] == nil {
				st.userInstalls[u] = map[string]bool{}
			}
			for _, i := range s.rdb.SMembers(ctx, key).Val() {
				st.userInstalls[u][i] = true
			}
			name = "installs:" + u
		case strings.HasPrefix(rest, "user:") && !strings.Contains(rest[5:], ":"):
			u := rest[5:]
			fields := s.rdb.HGetAll(ctx, key).Val()
			st.userExt[u] = fields["ext"]
			for f := range fields {
				if i, ok := strings.CutPrefix(f, "i:"); ok {
					if st.userInstalls[u] == nil {
						st.userInstalls[u] = map[string]bool{}
					}
					st.userInstalls[u][i] = true
				}
			}
			name = "user:" + u
		case strings.HasPrefix(rest, "x:"):
			for e, u := range s.rdb.HGetAll(ctx, key).Val() {
				st.extUser[e] = u
			}
		case strings.HasPrefix(rest, "ext:"):
			st.extUser[rest[4:]] = s.rdb.Get(ctx, key).Val()
			name = "ext:" + rest[4:]
		}
		if name != "" && s.rdb.PTTL(ctx, key).Val() > 0 {
			st.expires[name] = true
		}
	}
	return st
}

// check verifies the invariants that hold at every instant, even between
// the steps of an interrupted link: every install's user exists and lists
// the install; every external id names an existing user; no user is the
// user of two external ids, and a user's ext field, when set, is the one
// external id that names it; nothing permanent names what may expire (a
// permanent install or ext key, a permanent user and its installs set).
func (st state) check() error {
	for i, u := range st.installUser {
		if !st.expires["install:"+i] && st.expires["user:"+u] {
			return fmt.Errorf("permanent install %s points to user %s, which expires", i, u)
		}
	}
	for e, u := range st.extUser {
		if !st.expires["ext:"+e] && st.expires["user:"+u] {
			return fmt.Errorf("permanent external id %q names user %s, which expires", e, u)
		}
	}
	for u := range st.userInstalls {
		if _, ok := st.userExt[u]; ok && !st.expires["user:"+u] && st.expires["installs:"+u] {
			return fmt.Errorf("permanent user %s has an installs set that expires", u)
		}
	}
	for i, u := range st.installUser {
		if _, ok := st.userExt[u]; !ok {
			return fmt.Errorf("install %s points to missing user %s", i, u)
		}
		if !st.userInstalls[u][i] {
			return fmt.Errorf("install %s points to user %s, which does not list it", i, u)
		}
	}
	owner := map[string]string{}
	for e, u := range st.extUser {
		if _, ok := st.userExt[u]; !ok {
			return fmt.Errorf("external id %q names missing user %s", e, u)
		}
		if o, ok := owner[u]; ok {
			return fmt.Errorf("user %s is the user of two external ids: %q and %q", u, o, e)
		}
		owner[u] = e
	}
	for u, ext := range st.userExt {
		if ext != "" && st.extUser[ext] != u {
			return fmt.Errorf("user %s says external id %q, which names %q", u, ext, st.extUser[ext])
		}
	}
	return nil
}

// settled verifies what holds once no link is in flight or interrupted:
// every user named by an external id records it, and no set lists an
// install that points elsewhere, except where a link was interrupted and
// not retried (allowStale).
func (st state) settled(allowStale bool) error {
	if err := st.check(); err != nil {
		return err
	}
	for e, u := range st.extUser {
		if st.userExt[u] != e {
			return fmt.Errorf("user %s of external id %q records ext %q", u, e, st.userExt[u])
		}
	}
	if !allowStale {
		for u, set := range st.userInstalls {
			for i := range set {
				if st.installUser[i] != u {
					return fmt.Errorf("user %s lists install %s, which points to %s", u, i, st.installUser[i])
				}
			}
		}
	}
	return nil
}

// extUser is the user an external id names ("" if none), read through c.
func extUser(t *testing.T, c redis.Cmdable, k *Keys, ext string) string {
	t.Helper()
	u, err := ExternalUser(context.Background(), c, k, ext)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
