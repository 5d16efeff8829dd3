package store

import (
	"context"
	"testing"
	"time"
)

// TestRecordActivity: activity written behind the requests moves a
// session's last activity forward, batched per shard in one round trip,
// and so decides which session the limit evicts; it never moves a session
// back, revives an ended one, or keeps alive one already past its idle
// timeout. On every backend, the Cluster included (one slot per batch).
func TestRecordActivity(t *testing.T) {
	for _, b := range sessionBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			k := NewKeys("activity")
			c := newClock()
			p := SessionPolicy{Max: 2, Idle: 10 * time.Minute, Channel: "idl:invalidate"}
			u1, u2 := newUser(1), newUser(2) // two shards: two scripts in one pipeline
			record := func(want int, acts ...Activity) {
				t.Helper()
				n, err := b.s.RecordActivity(ctx, k, p, acts, c.now())
				if err != nil || n != want {
					t.Fatalf("RecordActivity %v: moved %d, %v; want %d", acts, n, err, want)
				}
			}
			first, _ := admit(t, b.s, k, p, u1, "", c.now())
			second, _ := admit(t, b.s, k, p, u1, "", c.add(time.Second))
			other, _ := admit(t, b.s, k, p, u2, "", c.now())
			c.add(5 * time.Second)
			record(2, Activity{first, c.now().Add(-time.Second)}, Activity{other, c.now()},
				Activity{"s_not-an-id", c.now()})
			// Older than what Redis has: ignored.
			record(0, Activity{first, c.now().Add(-3 * time.Second)})
			if st := touch(t, b.s, k, p, first, c.now()); st.Last.UnixMilli() != c.now().UnixMilli() {
				t.Fatalf("touch: last %v", st.Last)
			}
			// A future time (another instance's clock ahead) is taken as now.
			record(1, Activity{second, c.now().Add(time.Hour)})
			if st := touch(t, b.s, k, p, second, c.now()); st.Status != SessionLive || st.Last.UnixMilli() != c.now().UnixMilli() {
				t.Fatalf("future activity: %+v", st)
			}

			// The limit evicts the least recently active: first, by the
			// activity recorded for it, is more recent than second.
			c.add(time.Second)
			record(1, Activity{first, c.now()})
			_, evicted := admit(t, b.s, k, p, u1, "", c.add(time.Second))
			if len(evicted) != 1 || evicted[0] != second {
				t.Fatalf("evicted %v, want the second session %s", evicted, second)
			}
			// Ended sessions stay ended.
			record(0, Activity{second, c.add(time.Second)})
			if st := touch(t, b.s, k, p, second, c.now()); st.Status != SessionEnded {
				t.Fatalf("evicted session after activity: %+v", st)
			}
			// Activity that came after the idle timeout does not revive.
			c.add(11 * time.Minute)
			record(0, Activity{other, c.now()})
			if st := touch(t, b.s, k, p, other, c.now()); st.Status != SessionEnded || st.Reason != ReasonIdle {
				t.Fatalf("idle session after late activity: %+v", st)
			}
			if n, err := b.s.RecordActivity(ctx, k, p, nil, c.now()); n != 0 || err != nil {
				t.Fatalf("empty batch: %d %v", n, err)
			}
		})
	}
}
