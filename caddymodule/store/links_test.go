package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

var testNow = time.UnixMilli(1_700_000_000_000)

func newInstall(t *testing.T, s *Store, k *Keys) (string, string) {
	t.Helper()
	i, u, err := s.CreateInstall(context.Background(), k, testNow, testExpiry)
	if err != nil {
		t.Fatal(err)
	}
	return i, u
}

// newEarlierInstall makes an install as earlier releases did: a random
// anonymous user (not AnonymousUserOf the install) named by the install's
// anon_user field, so a link makes it permanent in a step of its own (1b),
// and a global tenant entry.
func newEarlierInstall(t *testing.T, s *Store, k *Keys) (string, string) {
	t.Helper()
	ctx := context.Background()
	shard := rand.IntN(Shards)
	i, u := NewID(KindInstall, shard), NewID(KindUser, shard)
	ttl := ttlArg(testExpiry.TTL)
	if err := s.rdb.Set(ctx, InstallTenant(i), k.Tenant(), testExpiry.TTL).Err(); err != nil {
		t.Fatal(err)
	}
	n, err := installCreateScript.Run(ctx, s.rdb, []string{k.Install(shard, i), k.User(shard, u), k.Events(shard)},
		i, u, strconv.FormatInt(testNow.UnixMilli(), 10), k.Tenant(), `{"user_id":"`+u+`","install_id":"`+i+`"}`, ttl).Int()
	if err != nil || n != 1 {
		t.Fatalf("install of an earlier release: %d, %v", n, err)
	}
	if err := s.rdb.HSet(ctx, k.Install(shard, i), "anon_user", u).Err(); err != nil {
		t.Fatal(err)
	}
	return i, u
}

func link(t *testing.T, s *Store, k *Keys, install, ext string) LinkResult {
	t.Helper()
	r, err := s.Link(context.Background(), k, LinkRequest{InstallID: install, ExternalID: ext, Now: testNow,
		Channel: "idl:invalidate", Message: k.Tenant() + " install " + install}, LinkOptions{})
	if err != nil {
		t.Fatalf("Link(%s, %q): %v", install, ext, err)
	}
	return r
}

// TestStore runs the store tests on every backend; one Redis per backend.
func TestStore(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s := b.store(t)
			n := 0
			keys := func() *Keys { n++; return NewKeys(fmt.Sprintf("t%d", n)) }
			t.Run("CreateInstall", func(t *testing.T) { testCreateInstall(t, s, keys()) })
			t.Run("Outcomes", func(t *testing.T) { testLinkOutcomes(t, s, keys(), keys()) })
			t.Run("GetUser", func(t *testing.T) { testGetUser(t, s, keys()) })
			t.Run("Concurrent", func(t *testing.T) { testLinkConcurrent(t, s, keys()) })
			t.Run("SameInstallConcurrent", func(t *testing.T) { testSameInstallConcurrent(t, s, keys()) })
			t.Run("LockBusy", func(t *testing.T) { testLockBusy(t, s, keys()) })
			t.Run("Interrupted", func(t *testing.T) { testInterrupted(t, s, keys) })
		})
	}
}

func testCreateInstall(t *testing.T, s *Store, k *Keys) {
	ctx := context.Background()
	i, u := newInstall(t, s, k)
	si, err := ParseID(KindInstall, i)
	if err != nil {
		t.Fatalf("install id %q: %v", i, err)
	}
	if su, err := ParseID(KindUser, u); err != nil || su != si {
		t.Fatalf("user %q not in the install's shard %d (%v)", u, si, err)
	}
	if got, _, err := s.InstallUser(ctx, k, i, testExpiry); err != nil || got != u {
		t.Fatalf("InstallUser = %q, %v", got, err)
	}
	if u != AnonymousUserOf(i) {
		t.Fatalf("anonymous user %s, want AnonymousUserOf(%s) = %s", u, i, AnonymousUserOf(i))
	}
	if n := s.rdb.Exists(ctx, InstallTenant(i)).Val(); n != 0 {
		t.Fatal("CreateInstall wrote a global tenant entry")
	}
	if s.rdb.HExists(ctx, k.Install(si, i), "anon_user").Val() {
		t.Fatal("CreateInstall stored the anonymous user, which the install id tells")
	}
	evs := events(t, s, k)
	if len(evs) != 1 || evs[0].Type != EventUserCreated || evs[0].Shard != si ||
		evs[0].Data["user_id"] != u || evs[0].Data["install_id"] != i {
		t.Fatalf("events %+v", evs)
	}
	if err := readState(t, s, k).settled(false); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "nope", u, "i_zz" + i[4:]} {
		if _, _, err := s.InstallUser(ctx, k, bad, testExpiry); !errors.Is(err, ErrInstallNotFound) {
			t.Errorf("InstallUser(%q) = %v", bad, err)
		}
	}
}

func testLinkOutcomes(t *testing.T, s *Store, k, other *Keys) {
	ctx := context.Background()
	i1, a1 := newInstall(t, s, k)
	i2, a2 := newInstall(t, s, k)
	i3, a3 := newInstall(t, s, k)
	type want struct {
		user       string
		created    bool
		mergedFrom string
		moved      bool
		repeat     bool
		newEvents  map[string]int
	}
	var alice, bob string
	steps := []struct {
		name, install, ext string
		want               func() want
	}{
		{"new external id, anonymous install: it becomes identified", i1, "alice", func() want {
			return want{user: a1, created: true, newEvents: map[string]int{EventUserLinked: 1}}
		}},
		{"same again: idempotent", i1, "alice", func() want {
			return want{user: a1, created: true, repeat: true}
		}},
		{"known external id: the install moves, merged_from", i2, "alice", func() want {
			return want{user: a1, mergedFrom: a2, moved: true, newEvents: map[string]int{EventUserMerged: 1}}
		}},
		{"same again: same answer, merged_from kept", i2, "alice", func() want {
			return want{user: a1, mergedFrom: a2, repeat: true}
		}},
		{"shared device: new user, the other untouched", i2, "bob", func() want {
			return want{user: "new", created: true, moved: true,
				newEvents: map[string]int{EventUserCreated: 1, EventUserLinked: 1}}
		}},
		{"back to a known id from an identified user: no merged_from", i2, "alice", func() want {
			return want{user: a1, moved: true, newEvents: map[string]int{EventUserLinked: 1}}
		}},
		{"third install joins bob", i3, "bob", func() want {
			return want{user: bob, mergedFrom: a3, moved: true, newEvents: map[string]int{EventUserMerged: 1}}
		}},
	}
	for _, st := range steps {
		before := events(t, s, k)
		r := link(t, s, k, st.install, st.ext)
		w := st.want()
		if w.user == "new" {
			if r.UserID == a1 || r.UserID == a2 || r.UserID == a3 {
				t.Fatalf("%s: user %s is not new", st.name, r.UserID)
			}
			if sh, _ := ParseID(KindUser, r.UserID); sh != ExternalShard(st.ext) {
				t.Fatalf("%s: new user not in the external id's shard", st.name)
			}
			w.user, bob = r.UserID, r.UserID
		}
		got := want{r.UserID, r.Created, r.MergedFrom, r.Moved, r.Repeat, nil}
		w.newEvents = nil
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("%s: got %+v, want %+v", st.name, got, w)
		}
		after := events(t, s, k)
		for _, typ := range []string{EventUserCreated, EventUserLinked, EventUserMerged} {
			if d := countEvents(after, typ) - countEvents(before, typ); d != st.want().newEvents[typ] {
				t.Fatalf("%s: %d new %s events, want %d: %+v", st.name, d, typ, st.want().newEvents[typ], after[len(before):])
			}
		}
		if u, _, _ := s.InstallUser(ctx, k, st.install, testExpiry); u != r.UserID {
			t.Fatalf("%s: install points to %s", st.name, u)
		}
		if err := readState(t, s, k).settled(false); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if st.ext == "alice" {
			alice = r.UserID
		}
	}
	if alice != a1 {
		t.Fatalf("alice is %s", alice)
	}
	// Event payloads: alice's claim by i1, i2's merge into alice.
	var linked, merged *event
	evs := events(t, s, k)
	for i := range evs {
		e := &evs[i]
		if e.Type == EventUserLinked && e.Data["install_id"] == i1 {
			linked = e
		}
		if e.Type == EventUserMerged && e.Data["install_id"] == i2 {
			merged = e
		}
	}
	if linked == nil || linked.Data["user_id"] != a1 || linked.Data["external_id"] != "alice" ||
		linked.Shard != ExternalShard("alice") {
		t.Fatalf("user.linked %+v", linked)
	}
	si2, _ := ParseID(KindInstall, i2)
	if merged == nil || merged.Data["user_id"] != a1 || merged.Data["merged_from"] != a2 ||
		merged.Data["external_id"] != "alice" || merged.Shard != si2 {
		t.Fatalf("user.merged %+v", merged)
	}

	// Unknown, malformed and another tenant's installs: another tenant is
	// told by its install hash (it is in the Tenants set since it made
	// one); an install of an earlier release by its global tenant entry,
	// which this release only reads.
	oi, _ := newInstall(t, s, other)
	if ok, err := s.rdb.SIsMember(ctx, Tenants, other.Tenant()).Result(); err != nil || !ok {
		t.Fatalf("tenant %s not in %s: %v", other.Tenant(), Tenants, err)
	}
	legacy := NewID(KindInstall, 5)
	if err := s.rdb.Set(ctx, InstallTenant(legacy), "elsewhere", 0).Err(); err != nil {
		t.Fatal(err)
	}
	ownLegacy := NewID(KindInstall, 6)
	if err := s.rdb.Set(ctx, InstallTenant(ownLegacy), k.Tenant(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		install string
		want    error
	}{
		{NewID(KindInstall, 3), ErrInstallNotFound},
		{"i_not-an-id", ErrInstallNotFound},
		{a1, ErrInstallNotFound},
		{oi, ErrInstallWrongTenant},
		{legacy, ErrInstallWrongTenant},
		{ownLegacy, ErrInstallNotFound}, // its entry outlived it
	} {
		_, err := s.Link(ctx, k, LinkRequest{InstallID: c.install, ExternalID: "x", Now: testNow}, LinkOptions{})
		if !errors.Is(err, c.want) {
			t.Errorf("Link(%q) = %v, want %v", c.install, err, c.want)
		}
	}
	// The other tenant's install is untouched and still anonymous.
	if u, err := s.GetUser(ctx, other, mustInstallUser(t, s, other, oi)); err != nil || u.ExternalID != "" {
		t.Fatalf("other tenant's user %+v, %v", u, err)
	}
}

func mustInstallUser(t *testing.T, s *Store, k *Keys, i string) string {
	t.Helper()
	u, _, err := s.InstallUser(context.Background(), k, i, testExpiry)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func testGetUser(t *testing.T, s *Store, k *Keys) {
	ctx := context.Background()
	i1, a1 := newInstall(t, s, k)
	i2, a2 := newInstall(t, s, k)
	link(t, s, k, i1, "carol")
	link(t, s, k, i2, "carol")
	u, err := s.GetUser(ctx, k, a1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{i1, i2}
	if i2 < i1 {
		want = []string{i2, i1}
	}
	if u.ExternalID != "carol" || fmt.Sprint(u.Installs) != fmt.Sprint(want) || !u.Created.Equal(testNow) {
		t.Fatalf("GetUser = %+v", u)
	}
	// A stale member (as an interrupted link leaves it) is not listed.
	sa1, _ := ParseID(KindUser, a1)
	s.rdb.SAdd(ctx, k.UserInstalls(sa1, a1), NewID(KindInstall, 2), "garbage")
	if u, _ := s.GetUser(ctx, k, a1); len(u.Installs) != 2 {
		t.Fatalf("stale members listed: %v", u.Installs)
	}
	// The merged anonymous user is gone (the user.merged event named it).
	if u, err := s.GetUser(ctx, k, a2); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("merged user = %+v, %v; want ErrUserNotFound", u, err)
	}
	for _, bad := range []string{"", "u_x", i1, NewID(KindUser, 1)} {
		if _, err := s.GetUser(ctx, k, bad); !errors.Is(err, ErrUserNotFound) {
			t.Errorf("GetUser(%q) = %v", bad, err)
		}
	}
	if _, err := s.GetUser(ctx, NewKeys("someone-else"), a1); !errors.Is(err, ErrUserNotFound) {
		t.Errorf("another tenant's user: %v", err)
	}
}

// testLinkConcurrent links one external id from many installs at once.
func testLinkConcurrent(t *testing.T, s *Store, k *Keys) {
	const n = 200
	installs := make([]string, n)
	anons := map[string]bool{}
	for i := range installs {
		var a string
		installs[i], a = newInstall(t, s, k)
		anons[a] = true
	}
	results := make([]LinkResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	// At most the pool's 20 connections' worth of links in flight: Redis
	// sees the same concurrency, and no call queues for a connection past
	// its deadline (the embedded store runs Lua under one lock, slowly
	// under -race).
	inflight := make(chan struct{}, 20)
	for i := range installs {
		wg.Go(func() {
			<-start
			inflight <- struct{}{}
			defer func() { <-inflight }()
			results[i], errs[i] = s.Link(context.Background(), k,
				LinkRequest{InstallID: installs[i], ExternalID: "shared@example.com", Now: testNow}, LinkOptions{})
		})
	}
	close(start)
	wg.Wait()
	user, created := "", 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("link %d: %v", i, errs[i])
		}
		if user == "" {
			user = r.UserID
		}
		if r.UserID != user {
			t.Fatalf("two users for one external id: %s and %s", user, r.UserID)
		}
		if r.Created {
			created++
			if r.MergedFrom != "" {
				t.Fatalf("created and merged: %+v", r)
			}
		} else if !anons[r.MergedFrom] {
			t.Fatalf("merged_from %q is not an anonymous user", r.MergedFrom)
		}
	}
	if created != 1 || !anons[user] {
		t.Fatalf("%d created; user %s", created, user)
	}
	st := readState(t, s, k)
	if err := st.settled(false); err != nil {
		t.Fatal(err)
	}
	if len(st.userInstalls[user]) != n {
		t.Fatalf("user lists %d installs", len(st.userInstalls[user]))
	}
	evs := events(t, s, k)
	if countEvents(evs, EventUserLinked) != 1 || countEvents(evs, EventUserMerged) != n-1 ||
		countEvents(evs, EventUserCreated) != n {
		t.Fatalf("events: %d linked, %d merged, %d created", countEvents(evs, EventUserLinked),
			countEvents(evs, EventUserMerged), countEvents(evs, EventUserCreated))
	}
	u, err := s.GetUser(context.Background(), k, user)
	if err != nil || len(u.Installs) != n || u.ExternalID != "shared@example.com" {
		t.Fatalf("GetUser: %d installs, %v", len(u.Installs), err)
	}
}

// testSameInstallConcurrent races links of one install to different
// external ids: each either succeeds or is told another link is in
// progress; the end state is consistent and no user has two ids.
func testSameInstallConcurrent(t *testing.T, s *Store, k *Keys) {
	i, _ := newInstall(t, s, k)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for n := range errs {
		wg.Go(func() {
			_, errs[n] = s.Link(context.Background(), k, LinkRequest{InstallID: i, ExternalID: fmt.Sprintf("e%d", n%4), Now: testNow},
				LinkOptions{LockWait: 2 * time.Second})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, ErrLinkInProgress) {
			t.Fatal(err)
		}
	}
	if err := readState(t, s, k).settled(false); err != nil {
		t.Fatal(err)
	}
}

func testLockBusy(t *testing.T, s *Store, k *Keys) {
	ctx := context.Background()
	i, a := newInstall(t, s, k)
	si, _ := ParseID(KindInstall, i)
	// A link that crashed holding the lock.
	s.rdb.Set(ctx, k.InstallLock(si, i), "dead", 300*time.Millisecond)
	begin := time.Now()
	_, err := s.Link(ctx, k, LinkRequest{InstallID: i, ExternalID: "dave", Now: testNow}, LinkOptions{LockWait: 100 * time.Millisecond})
	if !errors.Is(err, ErrLinkInProgress) || time.Since(begin) > time.Second {
		t.Fatalf("Link under a held lock = %v after %v", err, time.Since(begin))
	}
	// The lock expires; a link waiting long enough goes through.
	if m := s.embedded; m != nil {
		m.FastForward(time.Second) // miniredis expires keys only when told
	}
	r, err := s.Link(ctx, k, LinkRequest{InstallID: i, ExternalID: "dave", Now: testNow}, LinkOptions{LockWait: time.Second})
	if err != nil || r.UserID != a || !r.Created {
		t.Fatalf("after expiry: %+v, %v", r, err)
	}
	if s.rdb.Exists(ctx, k.InstallLock(si, i)).Val() != 0 {
		t.Fatal("lock not released")
	}
}

var errCrash = errors.New("injected crash")

// testInterrupted interrupts each kind of link after each of its steps,
// checks the invariants in between, then retries: with the same external
// id it must end as an uninterrupted link would (same answer, same events);
// with another one it must stay consistent.
func testInterrupted(t *testing.T, s *Store, newKeys func() *Keys) {
	type scenario struct {
		name  string
		setup func(t *testing.T, k *Keys) (install string) // the install to link to "target"
		// the answer of an uninterrupted link, given the setup's users
		created, merged bool
		events          map[string]int
	}
	var scenarios []scenario
	// A claim and a merge of an install made by this release (step 1b in
	// step 1) and of one made by an earlier release (1b by itself).
	for _, made := range []struct {
		suffix string
		make   func(t *testing.T, s *Store, k *Keys) (string, string)
	}{{"", newInstall}, {", install of an earlier release", newEarlierInstall}} {
		scenarios = append(scenarios,
			scenario{"claim" + made.suffix, func(t *testing.T, k *Keys) string { i, _ := made.make(t, s, k); return i },
				true, false, map[string]int{EventUserLinked: 1}},
			scenario{"merge" + made.suffix, func(t *testing.T, k *Keys) string {
				j, _ := newInstall(t, s, k)
				link(t, s, k, j, "target")
				i, _ := made.make(t, s, k)
				return i
			}, false, true, map[string]int{EventUserMerged: 1}})
	}
	scenarios = append(scenarios, []scenario{
		{"shared device, new id", func(t *testing.T, k *Keys) string {
			i, _ := newInstall(t, s, k)
			link(t, s, k, i, "first")
			return i
		}, true, false, map[string]int{EventUserCreated: 1, EventUserLinked: 1}},
		{"shared device, known id", func(t *testing.T, k *Keys) string {
			j, _ := newInstall(t, s, k)
			link(t, s, k, j, "target")
			i, _ := newInstall(t, s, k)
			link(t, s, k, i, "first")
			return i
		}, false, false, map[string]int{EventUserLinked: 1}},
		{"known unverified id", func(t *testing.T, k *Keys) string {
			// target's user was made for it unverified, and expires: the
			// link makes it permanent before the install joins it.
			if _, _, _, err := s.ResolveUnverified(context.Background(), k, "target", testNow, testExpiry); err != nil {
				t.Fatal(err)
			}
			i, _ := newInstall(t, s, k)
			return i
		}, false, true, map[string]int{EventUserMerged: 1}},
		{"shared device, user in another shard", func(t *testing.T, k *Keys) string {
			// i moves to first's user, in another shard than i: a move
			// away from it must drop i from that user's set in a step
			// of its own.
			j, _ := newInstall(t, s, k)
			link(t, s, k, j, "first")
			sj, _ := ParseID(KindInstall, j)
			for {
				i, _ := newInstall(t, s, k)
				if si, _ := ParseID(KindInstall, i); si != sj {
					link(t, s, k, i, "first")
					return i
				}
			}
		}, true, false, map[string]int{EventUserCreated: 1, EventUserLinked: 1}},
	}...)
	steps := []string{"locked", "persisted", "dropped", "claimed", "adopted", "moved", "finished"}
	for _, sc := range scenarios {
		for _, step := range steps {
			for _, retryExt := range []string{"target", "other"} {
				t.Run(fmt.Sprintf("%s/%s/retry %s", sc.name, step, retryExt), func(t *testing.T) {
					k := newKeys()
					ctx := context.Background()
					i := sc.setup(t, k)
					before := events(t, s, k)
					req := LinkRequest{InstallID: i, ExternalID: "target", Now: testNow}
					hit := false
					_, err := s.Link(ctx, k, req, LinkOptions{hook: func(name string) error {
						if name == step && !hit {
							hit = true
							return errCrash
						}
						return nil
					}})
					if !hit {
						if err != nil {
							t.Fatal(err)
						}
						t.Skip("this link has no such step")
					}
					if !errors.Is(err, errCrash) {
						t.Fatalf("interrupted link: %v", err)
					}
					if err := readState(t, s, k).check(); err != nil {
						t.Fatalf("after the interruption: %v", err)
					}
					req.ExternalID = retryExt
					r, err := s.Link(ctx, k, req, LinkOptions{})
					if err != nil {
						t.Fatalf("retry: %v", err)
					}
					// A retry with another id cannot know which user the
					// interrupted link had the install adopted by: that
					// user may keep a stale member (GetUser filters it).
					if err := readState(t, s, k).settled(retryExt != "target"); err != nil {
						t.Fatalf("after the retry: %v", err)
					}
					if u := mustInstallUser(t, s, k, i); u != r.UserID {
						t.Fatalf("install points to %s, answer %s", u, r.UserID)
					}
					if retryExt != "target" {
						return
					}
					if r.Created != sc.created || (r.MergedFrom != "") != sc.merged {
						t.Fatalf("retry answered %+v; want created=%v merged=%v", r, sc.created, sc.merged)
					}
					after := events(t, s, k)
					for _, typ := range []string{EventUserCreated, EventUserLinked, EventUserMerged} {
						if d := countEvents(after, typ) - countEvents(before, typ); d != sc.events[typ] {
							t.Fatalf("%d new %s events, want %d", d, typ, sc.events[typ])
						}
					}
					again := link(t, s, k, i, "target")
					if !again.Repeat || again.UserID != r.UserID || again.Created != r.Created || again.MergedFrom != r.MergedFrom {
						t.Fatalf("repeat %+v after %+v", again, r)
					}
				})
			}
		}
	}
}

// TestLinkRedisPausedMidway stops a real Redis (SIGSTOP) in the middle of
// a link, after each step in turn: the link fails with ErrUnavailable
// within its deadlines; once Redis resumes (running whatever commands were
// already in its buffers), a retry converges to the uninterrupted outcome.
func TestLinkRedisPausedMidway(t *testing.T) {
	if !testenv.RequireRedis(t) {
		return
	}
	r := testenv.StartRedis(t)
	s, err := Open(r.URL(), 150*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	for n, step := range []string{"locked", "claimed", "adopted"} {
		t.Run(step, func(t *testing.T) {
			k := NewKeys(fmt.Sprintf("p%d", n))
			j, owner := newInstall(t, s, k)
			link(t, s, k, j, "paused")
			i, anon := newInstall(t, s, k)
			opts := LinkOptions{LockTTL: 600 * time.Millisecond, hook: func(name string) error {
				if name == step {
					r.Pause()
				}
				return nil
			}}
			begin := time.Now()
			_, err := s.Link(ctx, k, LinkRequest{InstallID: i, ExternalID: "paused", Now: testNow}, opts)
			r.Resume()
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("link with Redis paused after %s: %v", step, err)
			}
			if d := time.Since(begin); d > 2*time.Second {
				t.Fatalf("failed after %v", d)
			}
			if err := readState(t, s, k).check(); err != nil {
				t.Fatal(err)
			}
			res, err := s.Link(ctx, k, LinkRequest{InstallID: i, ExternalID: "paused", Now: testNow}, LinkOptions{LockWait: 2 * time.Second})
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if res.UserID != owner || res.MergedFrom != anon || res.Created {
				t.Fatalf("retry = %+v", res)
			}
			if err := readState(t, s, k).settled(false); err != nil {
				t.Fatal(err)
			}
			if n := countEvents(events(t, s, k), EventUserMerged); n != 1 {
				t.Fatalf("%d user.merged events", n)
			}
		})
	}
}

// TestLinkRecordOfEarlierRelease: an install whose last link was recorded
// by an earlier release (with link_user and an empty link_merged_from) is
// answered as a repeat, and its next link drops the fields this release
// no longer stores.
func TestLinkRecordOfEarlierRelease(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		i, u := newEarlierInstall(t, s, k)
		first := link(t, s, k, i, "early")
		sh, _ := ParseID(KindInstall, i)
		inst := k.Install(sh, i)
		if err := s.rdb.HSet(ctx, inst, "link_user", u, "link_merged_from", "").Err(); err != nil {
			t.Fatal(err)
		}
		if r := link(t, s, k, i, "early"); !r.Repeat || r.UserID != first.UserID || r.Created != first.Created {
			t.Fatalf("repeat = %+v after %+v", r, first)
		}
		if r := link(t, s, k, i, "later"); r.Repeat || r.UserID == u || !r.Created {
			t.Fatalf("link to another id = %+v", r)
		}
		if n := s.rdb.HExists(ctx, inst, "link_user").Val() || s.rdb.HExists(ctx, inst, "link_merged_from").Val(); n {
			t.Fatalf("the install keeps the fields of an earlier release: %v", s.rdb.HGetAll(ctx, inst).Val())
		}
		if err := readState(t, s, k).settled(false); err != nil {
			t.Fatal(err)
		}
	})
}
