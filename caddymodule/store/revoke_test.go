package store

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSessionHandle: the handle is the hex SHA-1 of the id (as the scripts'
// redis.sha1hex computes it), and ValidHandle accepts exactly that shape.
func TestSessionHandle(t *testing.T) {
	sid := NewID(KindSession, 4)
	sum := sha1.Sum([]byte(sid))
	if h := SessionHandle(sid); h != hex.EncodeToString(sum[:]) || !ValidHandle(h) {
		t.Fatalf("handle %q", h)
	}
	for _, bad := range []string{"", sid, "current", SessionHandle(sid)[1:], SessionHandle(sid) + "0",
		"ABCDEF0123456789abcdef0123456789abcdef01", "g000000000000000000000000000000000000000"} {
		if ValidHandle(bad) {
			t.Errorf("ValidHandle(%q)", bad)
		}
	}
}

// TestEndUserSessions on every backend: one session by its handle, all
// but one, then all of them, each with its session.ended (revoked) event and its
// announcement; another user's handle, a handle already ended and malformed
// input end nothing.
func TestEndUserSessions(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			ps := b.s.rdb.Subscribe(ctx, "idl:test-revoke")
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			k := NewKeys("revoke")
			c := newClock()
			p := SessionPolicy{Max: 3, Idle: time.Hour, Channel: "idl:test-revoke"}
			user, other := newUser(5), newUser(5) // same shard: only the user's set counts
			s1, _ := admit(t, b.s, k, p, user, "", c.now())
			s2, _ := admit(t, b.s, k, p, user, "", c.add(time.Second))
			s3, _ := admit(t, b.s, k, p, user, "", c.add(time.Second))
			o1, _ := admit(t, b.s, k, p, other, "", c.add(time.Second))

			keep := ""
			end := func(u, handle string) []EndedSession {
				t.Helper()
				got, err := b.s.EndUserSessions(ctx, k, p, u, handle, keep, ReasonRevoked, c.add(time.Second))
				if err != nil {
					t.Fatal(err)
				}
				return got
			}
			// Another user's session, by its handle: nothing.
			if got := end(user, SessionHandle(o1)); len(got) != 0 {
				t.Fatalf("ended another user's session: %v", got)
			}
			for _, bad := range []string{s1, "not-a-handle", SessionHandle(NewID(KindSession, 5))} {
				if got := end(user, bad); len(got) != 0 {
					t.Fatalf("%q ended %v", bad, got)
				}
			}
			if got, err := b.s.EndUserSessions(ctx, k, p, "u_nope", "", "", ReasonRevoked, c.now()); err != nil || len(got) != 0 {
				t.Fatalf("malformed user: %v %v", got, err)
			}
			if got := end(user, SessionHandle(s2)); !slices.Equal(got, []EndedSession{{s2, ReasonRevoked}}) {
				t.Fatalf("end one: %v", got)
			}
			if got := end(user, SessionHandle(s2)); len(got) != 0 {
				t.Fatalf("end it again: %v", got)
			}
			if st := touch(t, b.s, k, p, s2, c.now()); st.Status != SessionEnded || st.Reason != ReasonRevoked {
				t.Fatalf("revoked session: %+v", st)
			}
			if got := liveIDs(t, b.s, k, user); len(got) != 2 || !slices.Contains(got, s1) || !slices.Contains(got, s3) {
				t.Fatalf("live after ending one: %v", got)
			}
			// All but one: the one kept, even by its handle, stays.
			s4, _ := admit(t, b.s, k, p, user, "", c.add(time.Second))
			keep = s3
			if got := end(user, SessionHandle(s3)); len(got) != 0 {
				t.Fatalf("ended the kept session: %v", got)
			}
			got := end(user, "")
			slices.SortFunc(got, func(a, b EndedSession) int { return strings.Compare(a.ID, b.ID) })
			want := []EndedSession{{s1, ReasonRevoked}, {s4, ReasonRevoked}}
			slices.SortFunc(want, func(a, b EndedSession) int { return strings.Compare(a.ID, b.ID) })
			if !slices.Equal(got, want) {
				t.Fatalf("end all but s3: %v, want %v", got, want)
			}
			if got := liveIDs(t, b.s, k, user); !slices.Equal(got, []string{s3}) {
				t.Fatalf("live after ending all but s3: %v", got)
			}
			keep = ""
			if got := end(user, ""); !slices.Equal(got, []EndedSession{{s3, ReasonRevoked}}) {
				t.Fatalf("end all: %v", got)
			}
			for _, sid := range []string{s1, s3, s4} {
				if st := touch(t, b.s, k, p, sid, c.now()); st.Status != SessionEnded || st.Reason != ReasonRevoked {
					t.Fatalf("%s after end all: %+v", sid, st)
				}
			}
			if got := liveIDs(t, b.s, k, user); len(got) != 0 {
				t.Fatalf("live after end all: %v", got)
			}
			if st := touch(t, b.s, k, p, o1, c.now()); st.Status != SessionLive {
				t.Fatalf("the other user's session: %+v", st)
			}
			// One session.ended (revoked) per end, and one announcement.
			shard, _ := ParseID(KindUser, user)
			revoked := map[string]bool{}
			for _, e := range shardEvents(t, b.s, k, shard) {
				if e.Type == EventSessionEnded {
					if e.Data["reason"] != ReasonRevoked || e.Data["user_id"] != user {
						t.Fatalf("ended event %v", e.Data)
					}
					revoked[e.Data["session_id"].(string)] = true
				}
			}
			if len(revoked) != 4 || !revoked[s1] || !revoked[s2] || !revoked[s3] || !revoked[s4] {
				t.Fatalf("revoked events %v", revoked)
			}
			heard := map[string]bool{}
			for range 4 {
				select {
				case m := <-ps.Channel():
					heard[m.Payload] = true
				case <-time.After(2 * time.Second):
					t.Fatalf("announcements %v", heard)
				}
			}
			for _, sid := range []string{s1, s2, s3, s4} {
				if !heard["revoke session "+sid] {
					t.Fatalf("no announcement of %s: %v", sid, heard)
				}
			}
		})
	}
}
