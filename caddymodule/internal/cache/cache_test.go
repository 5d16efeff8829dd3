package cache

import (
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
