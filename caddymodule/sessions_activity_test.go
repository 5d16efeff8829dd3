package caddymodule

import (
	"testing"
	"time"
)

// TestSessionOldestIdleExactToASecond: the session limit evicts the least
// recently active session as every instance saw it a second ago, although
// a warm request makes no Redis call (the activity is written behind it,
// once a second: identity/activity.go). Two devices; the first, warm on
// instance B, is used there after the second logged in; a third login on
// instance A 1.5 s later evicts the second, not the first. Before
// write-behind, the first device's use was not in Redis for up to five
// minutes (idle/10), and the first device went.
func TestSessionOldestIdleExactToASecond(t *testing.T) {
	forEachStore(t, testSessionOldestIdleExactToASecond)
}

func testSessionOldestIdleExactToASecond(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	a := newTestApp(t, url, withSessions(&Sessions{Max: 2}, nil))
	b := newTestApp(t, url, withSessions(&Sessions{Max: 2}, nil))
	api, hB := newSessionsAPI(t, a), newTestHandler(t, b, nil)
	use := func(sid string) {
		t.Helper()
		if w, _, _ := serve(hB, sessionRequest(sid)); w.Code != 200 {
			t.Fatalf("device %s on B: %d %s", sid, w.Code, w.Body)
		}
	}
	first := login(t, api, "two-phones")
	use(first.SessionID) // cached on B: later uses make no Redis call
	time.Sleep(20 * time.Millisecond)
	second := login(t, api, "two-phones")
	time.Sleep(20 * time.Millisecond)
	use(first.SessionID) // after the second device's login: the first is the more recent
	time.Sleep(1500 * time.Millisecond)
	third := login(t, api, "two-phones")
	if len(third.Evicted) != 1 || third.Evicted[0] != second.SessionID {
		t.Fatalf("third login evicted %v; want the second device %s (the first, %s, was used after it)",
			third.Evicted, second.SessionID, first.SessionID)
	}
	use(first.SessionID)
}
