package store

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOldSchemaExternalKeys writes external id mappings raw as idlink did
// before buckets (a permanent key of their own, ext:<id>) and uses them:
// every path finds the old mapping's user, and the first script that
// reads a permanent one moves it into its bucket in the same call. A
// mapping that expires keeps its own key until something makes it
// permanent, which moves it then.
func TestOldSchemaExternalKeys(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s := b.store(t)
			ctx := context.Background()
			k := NewKeys("old" + strconv.FormatInt(time.Now().UnixNano(), 36))
			now := time.Now()
			oldUser := func(ext string, ttl time.Duration) string {
				t.Helper()
				sh := ExternalShard(ext)
				u := NewID(KindUser, sh)
				if err := s.rdb.Set(ctx, k.External(ext), u, ttl).Err(); err != nil {
					t.Fatal(err)
				}
				if err := s.rdb.HSet(ctx, k.User(sh, u), "ext", ext, "created", now.UnixMilli()).Err(); err != nil {
					t.Fatal(err)
				}
				if ttl > 0 {
					s.rdb.PExpire(ctx, k.User(sh, u), ttl)
				}
				return u
			}
			moved := func(ext, u string) {
				t.Helper()
				if n := s.rdb.Exists(ctx, k.External(ext)).Val(); n != 0 {
					t.Errorf("%s: the old key is still there", ext)
				}
				if got := s.rdb.HGet(ctx, k.ExternalBucket(ext), ext).Val(); got != u {
					t.Errorf("%s: bucket holds %q, want %q", ext, got, u)
				}
				if got := extUser(t, s.rdb, k, ext); got != u {
					t.Errorf("%s: ExternalUser = %q, want %q", ext, got, u)
				}
			}

			// A verified credential (ResolveExternal) finds an old user.
			alice := oldUser("alice", 0)
			if u, created, err := s.ResolveExternal(ctx, k, "alice", now); err != nil || created || u != alice {
				t.Fatalf("ResolveExternal(alice) = %q, %v, %v; want the old user %q", u, created, err, alice)
			}
			moved("alice", alice)
			if u, created, err := s.ResolveExternal(ctx, k, "alice", now); err != nil || created || u != alice {
				t.Fatalf("again: ResolveExternal(alice) = %q, %v, %v; want %q", u, created, err, alice)
			}

			// An unverified one (ResolveUnverified) too.
			bob := oldUser("bob", 0)
			if u, created, left, err := s.ResolveUnverified(ctx, k, "bob", now, testExpiry); err != nil || created || u != bob || left != 0 {
				t.Fatalf("ResolveUnverified(bob) = %q, %v, %v, %v; want %q, permanent", u, created, left, err, bob)
			}
			moved("bob", bob)

			// A link of an install to an old external id merges into it.
			carol := oldUser("carol", 0)
			inst, _, err := s.CreateInstall(ctx, k, now, testExpiry)
			if err != nil {
				t.Fatal(err)
			}
			res, err := s.Link(ctx, k, LinkRequest{InstallID: inst, ExternalID: "carol", Now: now}, LinkOptions{})
			if err != nil || res.UserID != carol || res.Created {
				t.Fatalf("Link(carol) = %+v, %v; want the old user %q", res, err, carol)
			}
			moved("carol", carol)
			if u, err := s.GetUser(ctx, k, carol); err != nil || len(u.Installs) != 1 || u.Installs[0] != inst || u.ExternalID != "carol" {
				t.Fatalf("GetUser(carol) = %+v, %v", u, err)
			}

			// An old mapping that expires (made unverified) stays in its
			// own key while it expires, and moves once a verified
			// credential makes it permanent.
			dave := oldUser("dave", time.Hour)
			if u, created, left, err := s.ResolveUnverified(ctx, k, "dave", now, testExpiry); err != nil || created || u != dave || left <= 0 {
				t.Fatalf("ResolveUnverified(dave) = %q, %v, %v, %v; want %q, expiring", u, created, left, err, dave)
			}
			if s.rdb.PTTL(ctx, k.External("dave")).Val() <= 0 || s.rdb.HExists(ctx, k.ExternalBucket("dave"), "dave").Val() {
				t.Fatal("dave: an expiring mapping left its own key")
			}
			if u, _, err := s.ResolveExternal(ctx, k, "dave", now); err != nil || u != dave {
				t.Fatalf("ResolveExternal(dave) = %q, %v; want %q", u, err, dave)
			}
			moved("dave", dave)
			if d := s.rdb.PTTL(ctx, k.User(ExternalShard("dave"), dave)).Val(); d != -1 {
				t.Fatalf("dave's user hash has TTL %v after a verified credential, want none", d)
			}

			// An install listed the old way (a member of its user's
			// installs set) is listed, and a link that moves it away
			// unlists it.
			inst2, anon2, err := s.CreateInstall(ctx, k, now, testExpiry)
			if err != nil {
				t.Fatal(err)
			}
			sa, _ := ParseID(KindUser, anon2)
			s.rdb.HDel(ctx, k.User(sa, anon2), InstallField(inst2))
			s.rdb.SAdd(ctx, k.UserInstalls(sa, anon2), inst2)
			s.rdb.PExpire(ctx, k.UserInstalls(sa, anon2), time.Hour)
			if u, err := s.GetUser(ctx, k, anon2); err != nil || len(u.Installs) != 1 || u.Installs[0] != inst2 {
				t.Fatalf("GetUser of an old-schema install list = %+v, %v", u, err)
			}
			if res, err := s.Link(ctx, k, LinkRequest{InstallID: inst2, ExternalID: "alice", Now: now}, LinkOptions{}); err != nil || res.UserID != alice || res.MergedFrom != anon2 {
				t.Fatalf("Link(inst2, alice) = %+v, %v", res, err)
			}
			if n := s.rdb.Exists(ctx, k.UserInstalls(sa, anon2), k.User(sa, anon2)).Val(); n != 0 {
				t.Fatalf("the merged-away user's old installs set or hash is still there (%d keys)", n)
			}
			if u, err := s.GetUser(ctx, k, alice); err != nil || len(u.Installs) != 1 || u.Installs[0] != inst2 {
				t.Fatalf("GetUser(alice) = %+v, %v; want inst2", u, err)
			}

			// An id too long for a bucket keeps its own key, permanent.
			long := strings.Repeat("e", MaxBucketedExternal+1)
			u, created, err := s.ResolveExternal(ctx, k, long, now)
			if err != nil || !created {
				t.Fatalf("ResolveExternal(long) = %q, %v, %v", u, created, err)
			}
			if got := s.rdb.Get(ctx, k.External(long)).Val(); got != u || s.rdb.PTTL(ctx, k.External(long)).Val() != -1 {
				t.Fatalf("a long id's own key holds %q (want %q), permanent", got, u)
			}
			if got := extUser(t, s.rdb, k, long); got != u {
				t.Fatalf("ExternalUser(long) = %q, want %q", got, u)
			}
		})
	}
}
