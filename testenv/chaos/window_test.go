package chaos

import (
	"testing"
	"time"
)

// TestInWindow: only a write answered shortly before the kill, in a shard
// of the killed master, counts as possibly lost in the failover.
func TestInWindow(t *testing.T) {
	w := &world{killStart: 6 * time.Second, killedAt: 6*time.Second + 20*time.Millisecond, killedShards: map[int]bool{3: true}}
	ms := time.Millisecond
	for _, tc := range []struct {
		name        string
		at, latency time.Duration
		shards      []int
		want        bool
	}{
		{"answered just before the kill, killed shard", 5990 * ms, 5 * ms, []int{3}, true},
		{"one of several shards killed", 5500 * ms, ms, []int{1, 3}, true},
		{"started during the kill, answered after", 6010 * ms, 100 * ms, []int{3}, true},
		{"shard of a surviving master", 5990 * ms, 5 * ms, []int{1, 2}, false},
		{"too long before the kill", 4 * time.Second, ms, []int{3}, false},
		{"sent after the kill", 6100 * ms, ms, []int{3}, false},
		{"no shard (malformed id)", 5990 * ms, ms, []int{-1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := w.inWindow(answer{at: tc.at, latency: tc.latency}, tc.shards...); got != tc.want {
				t.Errorf("inWindow = %v, want %v", got, tc.want)
			}
		})
	}
}
