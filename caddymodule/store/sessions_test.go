package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// testBackend is a store under test and a client to inspect it.
type testBackend struct {
	name string
	s    *Store
}

// sessionBackends are the stores the session scripts must work on: every
// selected deployment (testenv.DeploymentNames: a real standalone Redis
// first, the shared 3-master+replica Cluster, which proves every script
// stays in one slot, and a Sentinel setup) and the embedded store (the
// default with no redis line).
func sessionBackends(t *testing.T) []testBackend {
	t.Helper()
	var out []testBackend
	open := func(name, url string) {
		s, err := Open(url, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, testBackend{name, s})
	}
	for _, d := range redisDeployments(t) {
		open(d.Name, d.URL)
	}
	e, err := OpenEmbedded(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return append(out, testBackend{"embedded", e})
}

// clock is an injectable clock for the session scripts.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                { return c.t }
func (c *clock) add(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

func newClock() *clock { return &clock{time.UnixMilli(1_800_000_000_000)} }

// newUser makes a user id in a random shard (the scripts need no user
// hash to exist).
func newUser(i int) string { return NewID(KindUser, i%Shards) }

func admit(t *testing.T, s *Store, k *Keys, p SessionPolicy, user, install string, now time.Time) (string, []string) {
	t.Helper()
	shard, _ := ParseID(KindUser, user)
	sid := NewID(KindSession, shard)
	ev, err := s.AdmitSession(context.Background(), k, p, NewSession{ID: sid, UserID: user, InstallID: install, Verified: true}, now)
	if err != nil {
		t.Fatalf("admit: %v", err)
	}
	return sid, ev
}

type outboxEvent struct {
	Type string
	Data map[string]any
}

// shardEvents reads a shard's outbox.
func shardEvents(t *testing.T, s *Store, k *Keys, shard int) []outboxEvent {
	t.Helper()
	msgs, err := s.rdb.XRange(context.Background(), k.Events(shard), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []outboxEvent
	for _, m := range msgs {
		e := outboxEvent{Type: m.Values["type"].(string)}
		if err := json.Unmarshal([]byte(m.Values["data"].(string)), &e.Data); err != nil {
			t.Fatalf("event data %v: %v", m.Values["data"], err)
		}
		if m.Values["tenant"] != k.Tenant() || m.Values["occurred_at"] == "" {
			t.Fatalf("event %v lacks tenant/occurred_at", m.Values)
		}
		out = append(out, e)
	}
	return out
}

// live returns the user's live sessions as the set says, sorted.
func liveIDs(t *testing.T, s *Store, k *Keys, user string) []string {
	t.Helper()
	shard, _ := ParseID(KindUser, user)
	ids, err := s.rdb.ZRange(context.Background(), k.UserSessions(shard, user), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(ids)
	return ids
}

func touch(t *testing.T, s *Store, k *Keys, p SessionPolicy, sid string, now time.Time) SessionState {
	t.Helper()
	st, err := s.TouchSession(context.Background(), k, p, sid, now)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSessionScripts runs the admission tests on every backend, a real
// Cluster included (started once for all of them).
func TestSessionScripts(t *testing.T) {
	backends := sessionBackends(t)
	t.Run("OrderedLogins", func(t *testing.T) { testAdmitOrderedLogins(t, backends) })
	t.Run("Concurrent", func(t *testing.T) { testAdmitConcurrent(t, backends) })
	t.Run("Attributes", func(t *testing.T) { testAdmitAttributes(t, backends) })
	t.Run("VerifiedApart", func(t *testing.T) { testAdmitVerifiedApart(t, backends) })
}

// testAdmitVerifiedApart: verified and unverified sessions are limited
// apart, so an unverified (report or off mode) login never evicts a
// verified session, and a verified login never counts unverified ones.
func testAdmitVerifiedApart(t *testing.T, backends []testBackend) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			k := NewKeys("apart")
			c := newClock()
			p := SessionPolicy{Max: 1, Idle: time.Hour, Channel: "idl:invalidate"}
			user := newUser(7)
			login := func(verified bool) (string, []string) {
				t.Helper()
				sid := NewID(KindSession, 7)
				ev, err := b.s.AdmitSession(context.Background(), k, p, NewSession{ID: sid, UserID: user, Verified: verified}, c.add(time.Second))
				if err != nil {
					t.Fatal(err)
				}
				return sid, ev
			}
			v1, _ := login(true)
			u1, ev := login(false)
			if len(ev) != 0 {
				t.Fatalf("an unverified login evicted %v", ev)
			}
			u2, ev := login(false)
			if len(ev) != 1 || ev[0] != u1 {
				t.Fatalf("second unverified login evicted %v, want [%s]", ev, u1)
			}
			v2, ev := login(true)
			if len(ev) != 1 || ev[0] != v1 {
				t.Fatalf("second verified login evicted %v, want [%s]", ev, v1)
			}
			want := []string{u2, v2}
			sort.Strings(want)
			if got := liveIDs(t, b.s, k, user); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("live %v, want %v", got, want)
			}
		})
	}
}

func testAdmitOrderedLogins(t *testing.T, backends []testBackend) {
	for _, b := range backends {
		for _, max := range []int{1, 2, 3} {
			t.Run(fmt.Sprintf("%s/max%d", b.name, max), func(t *testing.T) {
				k := NewKeys("ord")
				c := newClock()
				p := SessionPolicy{Max: max, Idle: time.Hour, Channel: "idl:invalidate"}
				user := newUser(max)
				var sids []string
				for i := range max + 3 {
					sid, ev := admit(t, b.s, k, p, user, "", c.add(time.Second))
					sids = append(sids, sid)
					// The least recently active goes, once the limit is reached.
					var want []string
					if i >= max {
						want = []string{sids[i-max]}
					}
					if fmt.Sprint(ev) != fmt.Sprint(want) && !(len(ev) == 0 && len(want) == 0) {
						t.Fatalf("login %d evicted %v, want %v", i, ev, want)
					}
				}
				want := append([]string(nil), sids[len(sids)-max:]...)
				sort.Strings(want)
				if got := liveIDs(t, b.s, k, user); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("live %v, want %v", got, want)
				}
				for i, sid := range sids {
					st := touch(t, b.s, k, p, sid, c.now())
					if i < len(sids)-max {
						if st.Status != SessionEnded || st.Reason != ReasonEvicted {
							t.Fatalf("session %d: %+v, want ended evicted", i, st)
						}
					} else if st.Status != SessionLive || st.UserID != user || !st.Verified {
						t.Fatalf("session %d: %+v, want live", i, st)
					}
				}
				// The outbox: a started per login, an ended (evicted, naming
				// the evicting session) per eviction, after its started.
				shard, _ := ParseID(KindUser, user)
				evs := shardEvents(t, b.s, k, shard)
				var started, ended int
				for j, e := range evs {
					switch e.Type {
					case EventSessionStarted:
						started++
					case EventSessionEnded:
						ended++
						if e.Data["reason"] != ReasonEvicted || e.Data["user_id"] != user {
							t.Fatalf("ended event %v", e.Data)
						}
						if j == 0 || evs[j-1].Type != EventSessionStarted && evs[j-1].Type != EventSessionEnded {
							t.Fatalf("ended event before any started")
						}
						by, _ := e.Data["evicted_by"].(string)
						if by == "" || by == e.Data["session_id"] {
							t.Fatalf("ended event names evicted_by %q", by)
						}
					}
				}
				if started != max+3 || ended != 3 {
					t.Fatalf("events: %d started, %d ended; want %d, 3", started, ended, max+3)
				}
			})
		}
	}
}

// testAdmitConcurrent: hundreds of logins of one user at once, through
// many connections, leave exactly max live sessions, and every other one
// evicted exactly once.
func testAdmitConcurrent(t *testing.T, backends []testBackend) {
	const logins = 300
	for _, b := range backends {
		for _, max := range []int{1, 2, 3} {
			t.Run(fmt.Sprintf("%s/max%d", b.name, max), func(t *testing.T) {
				k := NewKeys("conc")
				p := SessionPolicy{Max: max, Idle: time.Hour, Channel: "idl:invalidate"}
				user := newUser(max + 7)
				now := time.Now()
				var wg sync.WaitGroup
				var mu sync.Mutex
				var all, evicted []string
				errs := make(chan error, logins)
				// All 300 goroutines start at once, but Redis never sees more
				// at a time than the client's pool has connections; capping
				// the calls in flight at that number keeps the same
				// concurrency at Redis without calls queueing for a
				// connection past their deadline (the embedded store runs
				// Lua under one lock and is slow under -race).
				inflight := make(chan struct{}, 20)
				for range logins {
					wg.Go(func() {
						inflight <- struct{}{}
						defer func() { <-inflight }()
						shard, _ := ParseID(KindUser, user)
						sid := NewID(KindSession, shard)
						ev, err := b.s.AdmitSession(context.Background(), k, p, NewSession{ID: sid, UserID: user}, now)
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						all = append(all, sid)
						evicted = append(evicted, ev...)
						mu.Unlock()
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				live := liveIDs(t, b.s, k, user)
				if len(live) != max {
					t.Fatalf("%d live sessions after %d concurrent logins, want %d", len(live), logins, max)
				}
				seen := map[string]int{}
				for _, sid := range evicted {
					seen[sid]++
				}
				if len(evicted) != logins-max || len(seen) != logins-max {
					t.Fatalf("%d evictions (%d distinct), want %d", len(evicted), len(seen), logins-max)
				}
				for _, sid := range live {
					if seen[sid] != 0 {
						t.Fatalf("live session %s was reported evicted", sid)
					}
				}
				liveCount := 0
				for _, sid := range all {
					if st := touch(t, b.s, k, p, sid, now); st.Status == SessionLive {
						liveCount++
					} else if st.Reason != ReasonEvicted {
						t.Fatalf("%s: %+v", sid, st)
					}
				}
				if liveCount != max {
					t.Fatalf("%d session hashes live, want %d", liveCount, max)
				}
			})
		}
	}
}

func TestIdleAndLifetime(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			k := NewKeys("time")
			c := newClock()
			p := SessionPolicy{Max: 3, Idle: 10 * time.Minute, Lifetime: time.Hour, Channel: "idl:invalidate"}
			user := newUser(1)
			shard, _ := ParseID(KindUser, user)

			// Activity keeps a session alive past the idle timeout...
			a, _ := admit(t, b.s, k, p, user, "", c.now())
			for range 5 {
				if st := touch(t, b.s, k, p, a, c.add(9*time.Minute)); st.Status != SessionLive {
					t.Fatalf("active session: %+v", st)
				}
			}
			// ...but not past its lifetime (45 min so far).
			c.add(9 * time.Minute) // 54
			if st := touch(t, b.s, k, p, a, c.now()); st.Status != SessionLive {
				t.Fatalf("at 54 min: %+v", st)
			}
			if st := touch(t, b.s, k, p, a, c.add(6*time.Minute)); st.Status != SessionEnded || st.Reason != ReasonExpired {
				t.Fatalf("at 60 min: %+v, want expired", st)
			}
			// Without activity, a session ends after the idle timeout.
			i, _ := admit(t, b.s, k, p, user, "", c.now())
			if st := touch(t, b.s, k, p, i, c.add(10*time.Minute)); st.Status != SessionEnded || st.Reason != ReasonIdle {
				t.Fatalf("idle: %+v", st)
			}
			// Ended is forever: later lookups answer the same reason and
			// nothing revives the id.
			for range 3 {
				if st := touch(t, b.s, k, p, i, c.add(time.Minute)); st.Status != SessionEnded || st.Reason != ReasonIdle {
					t.Fatalf("ended id revived: %+v", st)
				}
			}
			// A login ends the idle ones it finds (reason idle), without
			// counting them as evictions.
			x, _ := admit(t, b.s, k, p, user, "", c.now())
			y, _ := admit(t, b.s, k, p, user, "", c.now())
			c.add(11 * time.Minute)
			z, ev := admit(t, b.s, k, p, user, "", c.now())
			if len(ev) != 0 {
				t.Fatalf("idle sessions reported evicted: %v", ev)
			}
			if got := liveIDs(t, b.s, k, user); len(got) != 1 || got[0] != z {
				t.Fatalf("live %v, want only %s", got, z)
			}
			for _, sid := range []string{x, y} {
				if st := touch(t, b.s, k, p, sid, c.now()); st.Reason != ReasonIdle {
					t.Fatalf("%+v, want idle", st)
				}
			}
			reasons := map[string]int{}
			for _, e := range shardEvents(t, b.s, k, shard) {
				if e.Type == EventSessionEnded {
					reasons[e.Data["reason"].(string)]++
				}
			}
			if reasons[ReasonExpired] != 1 || reasons[ReasonIdle] != 3 || len(reasons) != 2 {
				t.Fatalf("ended events by reason: %v", reasons)
			}
		})
	}
}

func TestEndSession(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			k := NewKeys("logout")
			c := newClock()
			p := SessionPolicy{Max: 2, Idle: time.Hour, Channel: "idl:invalidate"}
			user := newUser(2)
			sid, _ := admit(t, b.s, k, p, user, "", c.now())
			ctx := context.Background()
			why, now, known, err := b.s.EndSession(ctx, k, p, sid, ReasonLoggedOut, c.add(time.Second))
			if err != nil || !known || !now || why != ReasonLoggedOut {
				t.Fatalf("logout: %q %v %v %v", why, now, known, err)
			}
			// Idempotent, and the id is dead.
			why, now, known, err = b.s.EndSession(ctx, k, p, sid, ReasonLoggedOut, c.add(time.Second))
			if err != nil || !known || now || why != ReasonLoggedOut {
				t.Fatalf("second logout: %q %v %v %v", why, now, known, err)
			}
			if st := touch(t, b.s, k, p, sid, c.now()); st.Status != SessionEnded || st.Reason != ReasonLoggedOut {
				t.Fatalf("after logout: %+v", st)
			}
			if got := liveIDs(t, b.s, k, user); len(got) != 0 {
				t.Fatalf("live after logout: %v", got)
			}
			// Unknown and malformed ids.
			for _, id := range []string{NewID(KindSession, 3), "s_nope", NewID(KindUser, 3)} {
				if _, _, known, err := b.s.EndSession(ctx, k, p, id, ReasonLoggedOut, c.now()); known || err != nil {
					t.Fatalf("%s: known %v err %v", id, known, err)
				}
				if st := touch(t, b.s, k, p, id, c.now()); st.Status != SessionUnknown {
					t.Fatalf("%s: %+v", id, st)
				}
			}
		})
	}
}

// TestAdmitSameMillisecond: logins and activity within one millisecond
// still evict in login order (the user's admission sequence breaks ties).
func TestAdmitSameMillisecond(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			k := NewKeys("tie")
			now := newClock().now()
			p := SessionPolicy{Max: 2, Idle: time.Hour, Channel: "idl:invalidate"}
			user := newUser(3)
			var sids []string
			for i := range 12 {
				sid, ev := admit(t, b.s, k, p, user, "", now)
				sids = append(sids, sid)
				touch(t, b.s, k, p, sid, now) // same-millisecond activity changes nothing
				if i >= 2 && (len(ev) != 1 || ev[0] != sids[i-2]) {
					t.Fatalf("login %d evicted %v, want [%s]", i, ev, sids[i-2])
				}
			}
		})
	}
}

// TestSameInstallReplaces: a new login on a device ends that device's
// previous session instead of another device's.
func TestSameInstallReplaces(t *testing.T) {
	b := sessionBackends(t)[0]
	k := NewKeys("inst")
	c := newClock()
	p := SessionPolicy{Max: 2, Idle: time.Hour, Channel: "idl:invalidate"}
	user := newUser(5)
	phone, tablet := NewID(KindInstall, 5), NewID(KindInstall, 5)
	t1, _ := admit(t, b.s, k, p, user, tablet, c.add(time.Second))
	p1, _ := admit(t, b.s, k, p, user, phone, c.add(time.Second))
	p2, ev := admit(t, b.s, k, p, user, phone, c.add(time.Second))
	if len(ev) != 1 || ev[0] != p1 {
		t.Fatalf("re-login on the phone evicted %v, want its old session %s", ev, p1)
	}
	want := []string{t1, p2}
	sort.Strings(want)
	if got := liveIDs(t, b.s, k, user); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("live %v, want %v", got, want)
	}
}

func TestTombstoneTTL(t *testing.T) {
	b := sessionBackends(t)[0]
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		p       SessionPolicy
		min     time.Duration // at least this long after the end
		maxTTL  time.Duration
		advance time.Duration // between start and end
	}{
		// With a lifetime: until started+lifetime+keep (keep = idle).
		{"lifetime", SessionPolicy{Max: 1, Idle: time.Hour, Lifetime: 24 * time.Hour}, 24*time.Hour - time.Minute, 25 * time.Hour, time.Minute},
		// Without: (end)+idle+keep = 2 idle.
		{"idle", SessionPolicy{Max: 1, Idle: time.Hour}, 2*time.Hour - time.Second, 2 * time.Hour, time.Minute},
		// With neither: 30 days.
		{"neither", SessionPolicy{Max: 1}, 30*24*time.Hour - time.Second, 30 * 24 * time.Hour, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := NewKeys("tomb" + tc.name)
			c := newClock()
			user := newUser(9)
			shard, _ := ParseID(KindUser, user)
			sid, _ := admit(t, b.s, k, tc.p, user, "", c.now())
			if _, _, _, err := b.s.EndSession(ctx, k, tc.p, sid, ReasonLoggedOut, c.add(tc.advance)); err != nil {
				t.Fatal(err)
			}
			ttl, err := b.s.rdb.PTTL(ctx, k.Session(shard, sid)).Result()
			if err != nil {
				t.Fatal(err)
			}
			if ttl < tc.min || ttl > tc.maxTTL {
				t.Fatalf("tombstone TTL %v, want %v..%v", ttl, tc.min, tc.maxTTL)
			}
		})
	}
}

// testAdmitAttributes: merge keeps unset keys, replace drops them, null
// removes; the limit is on the result's compact JSON (exactly the limit
// passes, one byte more fails) and a refused admission changes nothing.
func testAdmitAttributes(t *testing.T, backends []testBackend) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			k := NewKeys("attrs")
			p := SessionPolicy{Max: 1, Idle: time.Hour, Channel: "idl:invalidate"}
			user := newUser(4)
			shard, _ := ParseID(KindUser, user)
			now := newClock().now()
			const limit = 64
			run := func(replace bool, fields ...string) error {
				u := &AttributeUpdate{Replace: replace, Limit: limit}
				for i := 0; i < len(fields); i += 2 {
					u.Fields = append(u.Fields, [2]string{fields[i], fields[i+1]})
				}
				_, err := b.s.AdmitSession(ctx, k, p, NewSession{ID: NewID(KindSession, shard), UserID: user, Attributes: u, Email: "a@example.com"}, now)
				return err
			}
			check := func(want string) {
				t.Helper()
				got, err := b.s.UserAttributes(ctx, k, user)
				if err != nil || got != want {
					t.Fatalf("attributes %s (%v), want %s", got, err, want)
				}
				if _, live, _ := b.s.UserSessions(ctx, k, p, user, now); len(live) != 1 {
					t.Fatalf("%d live sessions", len(live))
				}
				if v, _, _ := b.s.UserSessions(ctx, k, p, user, now); v != want {
					t.Fatalf("UserSessions attributes %s, want %s", v, want)
				}
			}
			steps := []struct {
				replace bool
				fields  []string
				want    string
			}{
				{false, []string{`"b"`, `1`, `"a"`, `[1,{}]`}, `{"a":[1,{}],"b":1}`},
				{false, []string{`"c"`, `"x"`}, `{"a":[1,{}],"b":1,"c":"x"}`},
				{false, []string{`"a"`, `null`, `"b"`, `2`}, `{"b":2,"c":"x"}`},
				{true, []string{`"z"`, `true`, `"y"`, `null`}, `{"z":true}`},
				{false, nil, `{"z":true}`},
				{true, nil, `{}`},
			}
			for _, s := range steps {
				if err := run(s.replace, s.fields...); err != nil {
					t.Fatal(err)
				}
				check(s.want)
			}
			// {"k":"…"}: 8 bytes plus the value.
			exact := `"` + strings.Repeat("x", limit-8) + `"`
			if err := run(true, `"k"`, exact); err != nil {
				t.Fatalf("exactly the limit: %v", err)
			}
			check(`{"k":` + exact + `}`)
			evs := len(shardEvents(t, b.s, k, shard))
			for name, fields := range map[string][]string{
				"replace one over": {`"k"`, exact[:1] + "x" + exact[1:]},
				"merge one over":   {`"j"`, `1`}, // ,"j":1 adds 6
			} {
				var tl *AttributesTooLargeError
				err := run(name == "replace one over", fields...)
				if !errors.As(err, &tl) || tl.Size != limit+1 && tl.Size != limit+6 || tl.Limit != limit {
					t.Fatalf("%s: %v", name, err)
				}
			}
			check(`{"k":` + exact + `}`)
			if n := len(shardEvents(t, b.s, k, shard)); n != evs {
				t.Fatalf("%d events appended by refused admissions", n-evs)
			}
			// Verified email stored with the user.
			if e, _ := b.s.rdb.HGet(ctx, k.User(shard, user), "email").Result(); e != "a@example.com" {
				t.Fatalf("email %q", e)
			}
		})
	}
}

// TestTombstoneThenUnknown: an ended id answers its reason until its
// tombstone expires, then it is unknown (the embedded store's clock is
// fast-forwarded).
func TestTombstoneThenUnknown(t *testing.T) {
	e, err := OpenEmbedded(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	k := NewKeys("forever")
	p := SessionPolicy{Max: 1, Idle: time.Hour, Channel: "idl:invalidate"}
	user := newUser(8)
	c := newClock()
	a, _ := admit(t, e, k, p, user, "", c.now())
	admit(t, e, k, p, user, "", c.now()) // evicts a
	e.embedded.FastForward(2*time.Hour - time.Second)
	if st := touch(t, e, k, p, a, c.add(2*time.Hour-time.Second)); st.Status != SessionEnded || st.Reason != ReasonEvicted {
		t.Fatalf("within the tombstone TTL: %+v", st)
	}
	e.embedded.FastForward(2 * time.Second)
	if st := touch(t, e, k, p, a, c.add(2*time.Second)); st.Status != SessionUnknown {
		t.Fatalf("after the tombstone TTL: %+v", st)
	}
}

// TestAdmitPublishesInvalidations: every end is announced on the channel.
func TestAdmitPublishesInvalidations(t *testing.T) {
	b := sessionBackends(t)[0]
	ctx := context.Background()
	ps := b.s.rdb.Subscribe(ctx, "idl:test-inval")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	k := NewKeys("pub")
	p := SessionPolicy{Max: 1, Idle: time.Hour, Channel: "idl:test-inval"}
	user := newUser(6)
	c := newClock()
	first, _ := admit(t, b.s, k, p, user, "", c.now())
	second, _ := admit(t, b.s, k, p, user, "", c.add(time.Second))
	if _, _, _, err := b.s.EndSession(ctx, k, p, second, ReasonLoggedOut, c.now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pub session " + first, "pub session " + second} {
		select {
		case m := <-ps.Channel():
			if m.Payload != want {
				t.Fatalf("message %q, want %q", m.Payload, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("no message %q", want)
		}
	}
}

func BenchmarkAdmit(b *testing.B) {
	var url string
	if r := testenv.StartRedis(b); r != nil {
		url = r.URL()
	}
	var s *Store
	var err error
	if url == "" {
		s, err = OpenEmbedded(time.Second)
	} else {
		s, err = Open(url, time.Second)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	k := NewKeys("bench")
	p := SessionPolicy{Max: 2, Idle: time.Hour, Channel: "idl:invalidate"}
	users := make([]string, 1024)
	for i := range users {
		users[i] = newUser(i)
	}
	ctx := context.Background()
	var n sync.Mutex
	i := 0
	b.SetParallelism(16) // admissions in flight per CPU: ns/op is 1/throughput
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			u := users[i%len(users)]
			i++
			n.Unlock()
			shard, _ := ParseID(KindUser, u)
			if _, err := s.AdmitSession(ctx, k, p, NewSession{ID: NewID(KindSession, shard), UserID: u}, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
