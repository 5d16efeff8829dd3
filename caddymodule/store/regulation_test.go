package store

import (
	"context"
	"testing"
	"time"
)

// TestRecordFailure: a client's failures are counted in its window; more
// than the limit bans it for the ban time (answered on every failure
// until it ends); the window starts again after it passes. A live
// session's failures end it past the limit, with its event; a session
// that is not live gets no counter. On every backend, the Cluster
// included.
func TestRecordFailure(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			k := NewKeys("regulated")
			c := newClock()
			fp := FailurePolicy{Max: 3, Window: time.Minute, Ban: 10 * time.Minute}
			sp := SessionPolicy{Max: 5, Channel: InvalidationChannel}
			fail := func(subject, sid string) Failures {
				t.Helper()
				f, err := b.s.RecordFailure(ctx, k, fp, sp, subject, sid, c.now())
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			for i := range 3 {
				if f := fail("ip:192.0.2.1", ""); f.BannedFor != 0 {
					t.Fatalf("failure %d banned: %+v", i+1, f)
				}
			}
			if f := fail("ip:192.0.2.1", ""); f.BannedFor != 10*time.Minute {
				t.Fatalf("4th failure: %+v, want a 10m ban", f)
			}
			c.add(4 * time.Minute)
			if f := fail("ip:192.0.2.1", ""); f.BannedFor != 6*time.Minute {
				t.Fatalf("failure while banned: %+v, want 6m left", f)
			}
			if f := fail("ip:192.0.2.2", ""); f.BannedFor != 0 {
				t.Fatalf("another client: %+v", f)
			}
			// After the ban, a fresh window.
			c.add(7 * time.Minute)
			if f := fail("ip:192.0.2.1", ""); f.BannedFor != 0 {
				t.Fatalf("after the ban: %+v", f)
			}
			// A window that passes forgets its failures.
			fail("ip:198.51.100.7", "")
			fail("ip:198.51.100.7", "")
			fail("ip:198.51.100.7", "")
			c.add(time.Minute)
			if f := fail("ip:198.51.100.7", ""); f.BannedFor != 0 {
				t.Fatalf("failures of a past window counted: %+v", f)
			}

			// Sessions: past the limit, the session ends with its event.
			user := newUser(3)
			shard, _ := ParseID(KindUser, user)
			sid, _ := admit(t, b.s, k, sp, user, "", c.now())
			for i := range 3 {
				if f := fail("ip:203.0.113."+string(rune('1'+i)), sid); f.SessionEnded {
					t.Fatalf("session failure %d ended it", i+1)
				}
			}
			if f := fail("ip:203.0.113.9", sid); !f.SessionEnded {
				t.Fatalf("4th session failure: %+v, want it ended", f)
			}
			if st := touch(t, b.s, k, sp, sid, c.now()); st.Status != SessionEnded || st.Reason != ReasonTooManyFailures {
				t.Fatalf("session after too many failures: %+v", st)
			}
			evs := shardEvents(t, b.s, k, shard)
			last := evs[len(evs)-1]
			if last.Type != EventSessionEnded || last.Data["reason"] != ReasonTooManyFailures || last.Data["session_id"] != sid {
				t.Fatalf("last event %+v", last)
			}
			// An unknown (or ended) session stores nothing.
			unknown := NewID(KindSession, shard)
			fail("ip:203.0.113.10", unknown)
			if n, err := b.s.rdb.Exists(ctx, k.SessionFailures(shard, unknown), k.SessionFailures(shard, sid)).Result(); err != nil || n != 0 {
				t.Fatalf("counters left for unknown/ended sessions: %d %v", n, err)
			}
		})
	}
}
