package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func TestTTLCache(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	c := New[string, string](2, time.Minute, clock.Now)
	c.Add("a", "1")
	if v, ok := c.Get("a"); !ok || v != "1" {
		t.Fatalf("Get(a) = %q, %v", v, ok)
	}
	clock.Advance(59 * time.Second)
	if _, ok := c.Get("a"); !ok {
		t.Fatal("expired early")
	}
	clock.Advance(time.Second)
	if _, ok := c.Get("a"); ok {
		t.Fatal("did not expire after its ttl")
	}

	c.Add("a", "1")
	c.Add("b", "2")
	c.Get("a") // a is now the most recent
	c.Add("c", "3")
	if _, ok := c.Get("b"); ok {
		t.Fatal("the least recently used entry was not evicted at the bound")
	}
	if c.Len() > 2 {
		t.Fatalf("Len = %d, bound is 2", c.Len())
	}

	c.AddFor("short", "x", 10*time.Second)
	clock.Advance(11 * time.Second)
	if _, ok := c.Get("short"); ok {
		t.Fatal("AddFor ttl ignored")
	}
	c.AddFor("long", "x", time.Hour) // capped at the cache's ttl
	clock.Advance(61 * time.Second)
	if _, ok := c.Get("long"); ok {
		t.Fatal("AddFor must not outlive the cache ttl")
	}
}

func TestLoader(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := NewLoader[string, string](8, time.Minute, clock.Now, func(k string) string { return k })
	var calls atomic.Int32
	release := make(chan struct{})
	slow := func(ctx context.Context) (string, time.Duration, error) {
		calls.Add(1)
		<-release
		return "v", 0, nil
	}
	// Concurrent callers of one key: one load, every caller gets its value.
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if v, err := l.Load(context.Background(), "k", slow); v != "v" || err != nil {
				t.Errorf("Load = %q, %v", v, err)
			}
		})
	}
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d loads for 10 concurrent callers", n)
	}
	// Cached now.
	if v, _ := l.Load(context.Background(), "k", slow); v != "v" || calls.Load() != 1 {
		t.Fatal("not cached")
	}
	// A load that races a Forget keeps nothing.
	l.Forget("k")
	inLoad := make(chan struct{})
	go func() { <-inLoad; l.Forget("k") }()
	_, _ = l.Load(context.Background(), "k", func(context.Context) (string, time.Duration, error) {
		inLoad <- struct{}{}
		time.Sleep(20 * time.Millisecond)
		return "stale", 0, nil
	})
	if _, ok := l.Get("k"); ok {
		t.Fatal("a load that raced a Forget was cached")
	}
	// A negative keep is not cached; an error neither.
	_, _ = l.Load(context.Background(), "n", func(context.Context) (string, time.Duration, error) { return "x", -1, nil })
	_, _ = l.Load(context.Background(), "e", func(context.Context) (string, time.Duration, error) { return "", 0, errors.New("down") })
	if _, ok := l.Get("n"); ok {
		t.Fatal("negative keep cached")
	}
	if _, ok := l.Get("e"); ok {
		t.Fatal("error cached")
	}
	// A caller whose context ends first returns; the load goes on, detached.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_, err := l.Load(ctx, "c", func(lctx context.Context) (string, time.Duration, error) {
			<-done
			return "later", 0, lctx.Err()
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("canceled caller: %v", err)
		}
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	time.Sleep(10 * time.Millisecond)
	close(done)
	deadline := time.Now().Add(time.Second)
	for {
		if v, ok := l.Get("c"); ok && v == "later" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the detached load was not cached")
		}
		time.Sleep(time.Millisecond)
	}
}
