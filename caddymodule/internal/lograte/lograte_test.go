package lograte

import (
	"sync"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var l Limiter
	t0 := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		at    time.Duration
		every time.Duration
		want  bool
	}{
		{0, time.Second, true},
		{300 * time.Millisecond, time.Second, false},
		{time.Second, time.Second, true},
		{time.Second + 900*time.Millisecond, time.Second, false},
		{2 * time.Second, time.Minute, false},
		{61 * time.Second, time.Minute, true},
	} {
		if got := l.Allow(t0.Add(c.at), c.every); got != c.want {
			t.Fatalf("allow(+%v, %v) = %v, want %v", c.at, c.every, got, c.want)
		}
	}
	// Concurrent callers in one second: exactly one line.
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	at := t0.Add(time.Hour)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l.Allow(at, time.Second) {
				mu.Lock()
				n++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n != 1 {
		t.Fatalf("%d concurrent callers were let through, want 1", n)
	}
}
