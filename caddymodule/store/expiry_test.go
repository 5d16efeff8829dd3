package store

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// testExpiry is the expiry of the store tests' installs and unverified
// users: long enough that nothing expires during a test.
var testExpiry = Expiry{TTL: time.Hour}

// ttls returns the TTL of each key: -1 for none, -2 for a missing key.
func ttls(t *testing.T, s *Store, keys ...string) map[string]time.Duration {
	t.Helper()
	out := map[string]time.Duration{}
	for _, k := range keys {
		d, err := s.rdb.PTTL(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = d
	}
	return out
}

// extKey is the key that holds an external id's mapping: its bucket when
// the mapping is there, else its own key.
func extKey(t *testing.T, s *Store, k *Keys, ext string) string {
	t.Helper()
	in, err := s.rdb.HExists(context.Background(), k.ExternalBucket(ext), ext).Result()
	if err != nil {
		t.Fatal(err)
	}
	if in {
		return k.ExternalBucket(ext)
	}
	return k.External(ext)
}

// expiring fails unless every key exists with a TTL in (min, max].
func expiring(t *testing.T, what string, got map[string]time.Duration, min, max time.Duration) {
	t.Helper()
	for k, d := range got {
		if d <= min || d > max {
			t.Errorf("%s: %s has TTL %v, want (%v, %v]", what, k, d, min, max)
		}
	}
}

// persistent fails unless every key exists without a TTL.
func persistent(t *testing.T, what string, got map[string]time.Duration) {
	t.Helper()
	for k, d := range got {
		if d != -1 {
			t.Errorf("%s: %s has TTL %v, want none (-1)", what, k, d)
		}
	}
}

// gone fails unless no key exists.
func gone(t *testing.T, what string, got map[string]time.Duration) {
	t.Helper()
	for k, d := range got {
		if d != -2 {
			t.Errorf("%s: %s still exists (TTL %v)", what, k, d)
		}
	}
}

// installKeys are every key of an install and its anonymous user.
func installKeys(k *Keys, install, user string) []string {
	sh, _ := ParseID(KindInstall, install)
	return []string{k.Install(sh, install), k.User(sh, user)}
}

// shorten sets the TTL of every key to d, as if time had passed since
// they were last renewed.
func shorten(t *testing.T, s *Store, d time.Duration, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if err := s.rdb.PExpire(context.Background(), k, d).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestInstallExpiry: an install made with a TTL expires with its
// anonymous user, its installs set and its tenant entry; a lookup renews
// them once a tenth of the TTL has passed since the last renewal (not
// before); with expiry off nothing expires, and a lookup makes an install
// that had a TTL permanent; an install no link touched takes the TTL at a
// lookup with expiry on; a linked one never does.
func TestInstallExpiry(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		i, u, err := s.CreateInstall(ctx, k, testNow, testExpiry)
		if err != nil {
			t.Fatal(err)
		}
		keys := installKeys(k, i, u)
		expiring(t, "a new install", ttls(t, s, keys...), 59*time.Minute, time.Hour)

		got, left, err := s.InstallUser(ctx, k, i, testExpiry)
		if err != nil || got != u || left <= 59*time.Minute || left > time.Hour {
			t.Fatalf("InstallUser = %q, %v, %v; want %q and about an hour left", got, left, err, u)
		}

		// Less than a tenth of the TTL since the last renewal: left alone.
		shorten(t, s, 55*time.Minute, keys...)
		if _, left, err := s.InstallUser(ctx, k, i, testExpiry); err != nil || left > 55*time.Minute {
			t.Fatalf("InstallUser 5 minutes after a renewal: %v left, %v; want no renewal", left, err)
		}
		expiring(t, "5 minutes after a renewal", ttls(t, s, keys...), 50*time.Minute, 55*time.Minute)

		// More than a tenth: renewed, every key.
		shorten(t, s, 50*time.Minute, keys...)
		if _, left, err := s.InstallUser(ctx, k, i, testExpiry); err != nil || left <= 59*time.Minute {
			t.Fatalf("InstallUser 10 minutes after a renewal: %v left, %v; want a renewal", left, err)
		}
		expiring(t, "renewed on use", ttls(t, s, keys...), 59*time.Minute, time.Hour)

		// Expiry turned off: the next use makes it permanent; turned on
		// again, the next use gives it the TTL again, since no link ever
		// touched it.
		if _, left, err := s.InstallUser(ctx, k, i, Expiry{}); err != nil || left != 0 {
			t.Fatalf("InstallUser with expiry off: %v left, %v", left, err)
		}
		persistent(t, "used with expiry off", ttls(t, s, keys...))
		if _, left, err := s.InstallUser(ctx, k, i, testExpiry); err != nil || left <= 59*time.Minute {
			t.Fatalf("InstallUser of an untouched install with expiry on again: %v left, %v", left, err)
		}
		expiring(t, "an untouched install used with expiry on again", ttls(t, s, keys...), 59*time.Minute, time.Hour)

		// Made with expiry off: permanent, until a use with expiry on.
		i2, u2, err := s.CreateInstall(ctx, k, testNow, Expiry{})
		if err != nil {
			t.Fatal(err)
		}
		persistent(t, "an install made with expiry off", ttls(t, s, installKeys(k, i2, u2)...))
		if _, left, err := s.InstallUser(ctx, k, i2, Expiry{}); err != nil || left != 0 {
			t.Fatalf("InstallUser with expiry off: %v left, %v", left, err)
		}
		persistent(t, "an install made and used with expiry off", ttls(t, s, installKeys(k, i2, u2)...))
		if _, left, err := s.InstallUser(ctx, k, i2, testExpiry); err != nil || left <= 59*time.Minute {
			t.Fatalf("InstallUser with expiry on of an install made with it off: %v left, %v", left, err)
		}
		expiring(t, "an install made with expiry off, used with it on", ttls(t, s, installKeys(k, i2, u2)...), 59*time.Minute, time.Hour)

		// A linked install never takes a TTL again.
		link(t, s, k, i2, "linked-"+k.Tenant())
		if _, left, err := s.InstallUser(ctx, k, i2, testExpiry); err != nil || left != 0 {
			t.Fatalf("InstallUser of a linked install: %v left, %v", left, err)
		}
		persistent(t, "a linked install used", ttls(t, s, installKeys(k, i2, u2)...))

		// Gone when the TTL runs out.
		i3, u3, err := s.CreateInstall(ctx, k, testNow, testExpiry)
		if err != nil {
			t.Fatal(err)
		}
		shorten(t, s, time.Millisecond, installKeys(k, i3, u3)...)
		time.Sleep(10 * time.Millisecond)
		if _, _, err := s.InstallUser(ctx, k, i3, testExpiry); err != ErrInstallNotFound {
			t.Fatalf("InstallUser of an expired install: %v", err)
		}
		gone(t, "an expired install", ttls(t, s, installKeys(k, i3, u3)...))
	})
}

// TestLinkPersists: a link makes the install and the user it ends on
// permanent: the install's own anonymous user when it takes a new external
// id, the user of a known external id (also one made for an unverified
// id) when the install moves to it.
func TestLinkPersists(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		i, u, err := s.CreateInstall(ctx, k, testNow, testExpiry)
		if err != nil {
			t.Fatal(err)
		}
		// The first step makes it permanent in its own script: no step 1b
		// of its own (one round trip fewer).
		var steps []string
		r, err := s.Link(ctx, k, LinkRequest{InstallID: i, ExternalID: "alice", Now: testNow},
			LinkOptions{hook: func(step string) error { steps = append(steps, step); return nil }})
		if err != nil || r.UserID != u || !r.Created {
			t.Fatalf("link = %+v, %v, want the anonymous user %s made alice", r, err, u)
		}
		if slices.Contains(steps, "persisted") {
			t.Fatalf("steps %v: a new install was made permanent in a step of its own", steps)
		}
		persistent(t, "an install linked to a new external id, and its user", ttls(t, s, append(installKeys(k, i, u), extKey(t, s, k, "alice"))...))
		// The same for an install of an earlier release, whose anonymous
		// user the first step cannot name: step 1b runs by itself.
		ei, eu := newEarlierInstall(t, s, k)
		expiring(t, "an install of an earlier release", ttls(t, s, installKeys(k, ei, eu)...), 59*time.Minute, time.Hour)
		steps = nil
		r, err = s.Link(ctx, k, LinkRequest{InstallID: ei, ExternalID: "erin", Now: testNow},
			LinkOptions{hook: func(step string) error { steps = append(steps, step); return nil }})
		if err != nil || r.UserID != eu || !r.Created {
			t.Fatalf("link = %+v, %v, want the anonymous user %s made erin", r, err, eu)
		}
		if !slices.Contains(steps, "persisted") {
			t.Fatalf("steps %v: an install of an earlier release was not made permanent by step 1b", steps)
		}
		persistent(t, "an install of an earlier release linked to a new external id, and its user", ttls(t, s, append(installKeys(k, ei, eu), extKey(t, s, k, "erin"))...))

		// A user made for an unverified id, then linked by the backend.
		bob, created, left, err := s.ResolveUnverified(ctx, k, "bob", testNow, testExpiry)
		if err != nil || !created || left <= 59*time.Minute {
			t.Fatalf("ResolveUnverified(bob) = %q, %v, %v, %v", bob, created, left, err)
		}
		sb, _ := ParseID(KindUser, bob)
		bobKeys := []string{extKey(t, s, k, "bob"), k.User(sb, bob)}
		expiring(t, "a user made for an unverified id", ttls(t, s, bobKeys...), 59*time.Minute, time.Hour)
		j, anon, err := s.CreateInstall(ctx, k, testNow, testExpiry)
		if err != nil {
			t.Fatal(err)
		}
		if r := link(t, s, k, j, "bob"); r.UserID != bob || r.MergedFrom != anon {
			t.Fatalf("link = %+v, want bob's user %s merged from %s", r, bob, anon)
		}
		sj, _ := ParseID(KindInstall, j)
		bobKeys[0] = extKey(t, s, k, "bob") // now permanent: in its bucket
		persistent(t, "an unverified user a link named, and the install", ttls(t, s,
			append(bobKeys, k.Install(sj, j))...))
	})
}

// TestLinkDeletesMergedUser: when a link moves an install away from its
// anonymous user, that user (its hash and its installs set) is deleted in
// the same step, and the user.merged event names it.
func TestLinkDeletesMergedUser(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		for _, e := range []Expiry{testExpiry, {}} {
			owner, _, err := s.ResolveExternal(ctx, k, "carol", testNow)
			if err != nil {
				t.Fatal(err)
			}
			i, anon, err := s.CreateInstall(ctx, k, testNow, e)
			if err != nil {
				t.Fatal(err)
			}
			r := link(t, s, k, i, "carol")
			if r.UserID != owner || r.MergedFrom != anon {
				t.Fatalf("link = %+v, want %s merged from %s", r, owner, anon)
			}
			sh, _ := ParseID(KindInstall, i)
			gone(t, "the merged-away anonymous user", ttls(t, s, k.User(sh, anon), k.UserInstalls(sh, anon)))
			persistent(t, "the moved install", ttls(t, s, k.Install(sh, i)))
			if _, err := s.GetUser(ctx, k, anon); err != ErrUserNotFound {
				t.Fatalf("GetUser(merged-away user) = %v, want ErrUserNotFound", err)
			}
			named := false
			for _, ev := range events(t, s, k) {
				if ev.Type == EventUserMerged && ev.Data["merged_from"] == anon && ev.Data["user_id"] == owner {
					named = true
				}
			}
			if !named {
				t.Fatalf("no user.merged event names %s", anon)
			}
			if err := readState(t, s, k).settled(false); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestUnverifiedUserExpiry: a user made for an unverified external id
// expires (its ext key, its hash, its sessions set) unless it is used: a
// resolution or a session request once a tenth of the TTL has passed
// renews it; a verified resolution makes it permanent, and then an
// unverified one never gives it a TTL again. A verified external id's
// user never had one.
func TestUnverifiedUserExpiry(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		p := SessionPolicy{Max: 2, Idle: time.Hour, Channel: "idl:invalidate"}
		u, created, left, err := s.ResolveUnverified(ctx, k, "dave", testNow, testExpiry)
		if err != nil || !created || left <= 59*time.Minute || left > time.Hour {
			t.Fatalf("ResolveUnverified = %q, %v, %v, %v", u, created, left, err)
		}
		sh, _ := ParseID(KindUser, u)
		sid := NewID(KindSession, sh)
		if _, err := s.AdmitSession(ctx, k, p, NewSession{ID: sid, UserID: u}, time.Now()); err != nil {
			t.Fatal(err)
		}
		keys := []string{extKey(t, s, k, "dave"), k.User(sh, u), k.UserSessions(sh, u)}
		expiring(t, "an unverified user with a session", ttls(t, s, keys...), 59*time.Minute, time.Hour)

		shorten(t, s, 55*time.Minute, keys...)
		if again, created, left, err := s.ResolveUnverified(ctx, k, "dave", testNow, testExpiry); err != nil || again != u || created || left > 55*time.Minute {
			t.Fatalf("ResolveUnverified soon after a renewal = %q, %v, %v, %v; want %s, no renewal", again, created, left, err, u)
		}
		shorten(t, s, 50*time.Minute, keys...)
		if _, _, left, err := s.ResolveUnverified(ctx, k, "dave", testNow, testExpiry); err != nil || left <= 59*time.Minute {
			t.Fatalf("ResolveUnverified 10 minutes after a renewal: %v left, %v", left, err)
		}
		expiring(t, "renewed by a resolution", ttls(t, s, keys...), 59*time.Minute, time.Hour)

		// A session request tells how long the user has; RenewUser renews.
		shorten(t, s, 50*time.Minute, keys...)
		st, err := s.TouchSession(ctx, k, p, sid, time.Now())
		if err != nil || st.Status != SessionLive || st.UserTTL <= 49*time.Minute || st.UserTTL > 50*time.Minute {
			t.Fatalf("TouchSession = %+v, %v; want live with 50 minutes left to its user", st, err)
		}
		if left, err := s.RenewUser(ctx, k, st.ExternalID, st.UserID, testExpiry); err != nil || left <= 59*time.Minute {
			t.Fatalf("RenewUser: %v left, %v", left, err)
		}
		expiring(t, "renewed through a session", ttls(t, s, keys...), 59*time.Minute, time.Hour)

		// A verified credential names it: permanent.
		if again, created, err := s.ResolveExternal(ctx, k, "dave", testNow); err != nil || again != u || created {
			t.Fatalf("ResolveExternal = %q, %v, %v", again, created, err)
		}
		if keys[0] = extKey(t, s, k, "dave"); keys[0] != k.ExternalBucket("dave") {
			t.Fatalf("the permanent mapping stayed in %s, not its bucket", keys[0])
		}
		persistent(t, "named by a verified credential", ttls(t, s, keys...))
		if _, _, left, err := s.ResolveUnverified(ctx, k, "dave", testNow, testExpiry); err != nil || left != 0 {
			t.Fatalf("ResolveUnverified of a permanent user: %v left, %v", left, err)
		}
		if st, err := s.TouchSession(ctx, k, p, sid, time.Now()); err != nil || st.UserTTL != 0 {
			t.Fatalf("TouchSession of a permanent user's session: %+v, %v", st, err)
		}
		persistent(t, "then resolved unverified", ttls(t, s, keys...))

		// Verified from the start: never a TTL.
		v, _, err := s.ResolveExternal(ctx, k, "erin", testNow)
		if err != nil {
			t.Fatal(err)
		}
		sv, _ := ParseID(KindUser, v)
		persistent(t, "a verified id's user", ttls(t, s, extKey(t, s, k, "erin"), k.User(sv, v)))
		if _, _, left, err := s.ResolveUnverified(ctx, k, "erin", testNow, testExpiry); err != nil || left != 0 {
			t.Fatalf("ResolveUnverified of a verified id's user: %v left, %v", left, err)
		}

		// Expiry off: an unverified id's user is permanent.
		f, _, left, err := s.ResolveUnverified(ctx, k, "frank", testNow, Expiry{})
		if err != nil || left != 0 {
			t.Fatalf("ResolveUnverified with expiry off: %v left, %v", left, err)
		}
		sf, _ := ParseID(KindUser, f)
		persistent(t, "an unverified id's user with expiry off", ttls(t, s, extKey(t, s, k, "frank"), k.User(sf, f)))
	})
}

// TestSessionOfExpiredUserEnds: the sessions set of an unverified user
// expires with it, so a session of a user that expired ends (reason
// expired) at its next request instead of naming a user that is gone.
func TestSessionOfExpiredUserEnds(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("acme")
		p := SessionPolicy{Max: 1, Idle: time.Hour, Channel: "idl:invalidate"}
		u, _, _, err := s.ResolveUnverified(ctx, k, "gina", testNow, testExpiry)
		if err != nil {
			t.Fatal(err)
		}
		sh, _ := ParseID(KindUser, u)
		sid := NewID(KindSession, sh)
		if _, err := s.AdmitSession(ctx, k, p, NewSession{ID: sid, UserID: u}, time.Now()); err != nil {
			t.Fatal(err)
		}
		// A request on the session does not make the set outlive the user.
		if st, err := s.TouchSession(ctx, k, p, sid, time.Now().Add(time.Second)); err != nil || st.Status != SessionLive {
			t.Fatalf("TouchSession = %+v, %v", st, err)
		}
		keys := []string{extKey(t, s, k, "gina"), k.User(sh, u), k.UserSessions(sh, u)}
		expiring(t, "after a session request", ttls(t, s, keys...), 59*time.Minute, time.Hour)
		shorten(t, s, time.Millisecond, keys...)
		time.Sleep(10 * time.Millisecond)
		st, err := s.TouchSession(ctx, k, p, sid, time.Now())
		if err != nil || st.Status != SessionEnded || st.Reason != ReasonExpired {
			t.Fatalf("TouchSession after the user expired = %+v, %v; want ended (expired)", st, err)
		}
	})
}
