package store

import (
	"context"
	"testing"
	"time"
)

// TestEndAllUserSessions (back-channel logout's use of EndUserSessions):
// one script ends every live session of a user, each
// with its session.ended event (reason given, or idle/expired for one
// already over), leaves other users' sessions alone, and answers nothing
// the second time.
func TestEndAllUserSessions(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			k := NewKeys("bcl")
			c := newClock()
			p := SessionPolicy{Max: 3, Idle: time.Hour, Channel: "idl:invalidate"}
			user, other := newUser(5), newUser(5)
			s1, _ := admit(t, b.s, k, p, user, "", c.now())
			s2, _ := admit(t, b.s, k, p, user, "", c.add(time.Second))
			keep, _ := admit(t, b.s, k, p, other, "", c.now())
			ended, err := endAll(b.s, ctx, k, p, user, ReasonLoggedOut, c.add(time.Second))
			if err != nil || len(ended) != 2 || !(ended[0] == s1 && ended[1] == s2 || ended[0] == s2 && ended[1] == s1) {
				t.Fatalf("ended %v, %v; want %s %s", ended, err, s1, s2)
			}
			for _, sid := range []string{s1, s2} {
				if st := touch(t, b.s, k, p, sid, c.now()); st.Status != SessionEnded || st.Reason != ReasonLoggedOut {
					t.Fatalf("%s after: %+v", sid, st)
				}
			}
			if st := touch(t, b.s, k, p, keep, c.now()); st.Status != SessionLive {
				t.Fatalf("other user's session: %+v", st)
			}
			n := 0
			for _, e := range shardEvents(t, b.s, k, 5) {
				if e.Type == EventSessionEnded && e.Data["user_id"] == user {
					if e.Data["reason"] != ReasonLoggedOut {
						t.Fatalf("event %+v", e)
					}
					n++
				}
			}
			if n != 2 {
				t.Fatalf("%d session.ended events, want 2", n)
			}
			if again, err := endAll(b.s, ctx, k, p, user, ReasonLoggedOut, c.now()); err != nil || len(again) != 0 {
				t.Fatalf("again: %v %v", again, err)
			}
			// A session over by its idle timeout ends with that reason.
			s3, _ := admit(t, b.s, k, p, user, "", c.now())
			if ended, err := endAll(b.s, ctx, k, p, user, ReasonLoggedOut, c.add(2*time.Hour)); err != nil || len(ended) != 1 || ended[0] != s3 {
				t.Fatalf("idle: %v %v", ended, err)
			}
			if st := touch(t, b.s, k, p, s3, c.now()); st.Reason != ReasonIdle {
				t.Fatalf("idle session: %+v", st)
			}
		})
	}
}

// TestLogoutJTIAndExternalUser: a jti is claimed once until its ttl
// passes or it is released; ExternalUser finds a user without making one.
func TestLogoutJTIAndExternalUser(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			k := NewKeys("bcl")
			for i, want := range []bool{true, false} {
				if fresh, err := b.s.ClaimLogoutJTI(ctx, k, "https://idp", "j-1", time.Minute); err != nil || fresh != want {
					t.Fatalf("claim %d: %v %v", i, fresh, err)
				}
			}
			// Another issuer's jti of the same value is another token.
			if fresh, err := b.s.ClaimLogoutJTI(ctx, k, "https://other", "j-1", time.Minute); err != nil || !fresh {
				t.Fatalf("other issuer: %v %v", fresh, err)
			}
			if err := b.s.ReleaseLogoutJTI(ctx, k, "https://idp", "j-1"); err != nil {
				t.Fatal(err)
			}
			if fresh, err := b.s.ClaimLogoutJTI(ctx, k, "https://idp", "j-1", 50*time.Millisecond); err != nil || !fresh {
				t.Fatalf("after release: %v %v", fresh, err)
			}
			if ttl, err := b.s.rdb.PTTL(ctx, k.LogoutJTI("https://idp", "j-1")).Result(); err != nil || ttl <= 0 || ttl > 50*time.Millisecond {
				t.Fatalf("ttl %v %v", ttl, err)
			}
			if u, err := b.s.ExternalUser(ctx, k, "nobody"); err != nil || u != "" {
				t.Fatalf("unknown: %q %v", u, err)
			}
			made, _, err := b.s.ResolveExternal(ctx, k, "alice", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if u, err := b.s.ExternalUser(ctx, k, "alice"); err != nil || u != made {
				t.Fatalf("alice: %q %v, want %s", u, err, made)
			}
			if u, err := b.s.ExternalUser(ctx, k, "nobody"); err != nil || u != "" {
				t.Fatalf("still nobody: %q %v", u, err)
			}
		})
	}
}

// endAll is EndUserSessions of every session of user, answering the ids.
func endAll(s *Store, ctx context.Context, k *Keys, p SessionPolicy, user, reason string, now time.Time) ([]string, error) {
	ended, err := s.EndUserSessions(ctx, k, p, user, "", "", reason, now)
	ids := make([]string, 0, len(ended))
	for _, e := range ended {
		ids = append(ids, e.ID)
	}
	return ids, err
}
