// Package cache is the bounded, expiring in-process cache every part of
// idlink uses (install, session, token, SSO and claims lookups).
package cache

import (
	"context"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// TTL is a bounded LRU whose entries also expire. It starts no
// goroutine (expired entries are dropped when looked up or pushed out by
// newer ones), so nothing outlives a config reload.
type TTL[K comparable, V any] struct {
	lru *lru.Cache[K, ttlEntry[V]]
	ttl time.Duration
	now func() time.Time

	hits, misses atomic.Uint64 // lookups (Get, Load) that found a live entry, or did not
}

// Stats are a cache's lookups since it was made.
type Stats struct{ Hits, Misses uint64 }

type ttlEntry[V any] struct {
	val     V
	expires int64 // unix nanoseconds
}

// New returns a cache of at most size entries (at least 1), each kept at
// most ttl by the clock now.
func New[K comparable, V any](size int, ttl time.Duration, now func() time.Time) *TTL[K, V] {
	if size <= 0 {
		size = 1
	}
	c, _ := lru.New[K, ttlEntry[V]](size) // only fails for size <= 0
	return &TTL[K, V]{lru: c, ttl: ttl, now: now}
}

// Get returns the live value of key, counted as a hit or a miss.
func (c *TTL[K, V]) Get(key K) (V, bool) {
	v, ok := c.get(key)
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return v, ok
}

// get is Get uncounted.
func (c *TTL[K, V]) get(key K) (V, bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		var zero V
		return zero, false
	}
	if c.now().UnixNano() >= e.expires {
		c.lru.Remove(key)
		var zero V
		return zero, false
	}
	return e.val, true
}

// Stats returns the lookups of the cache so far (two atomic loads: cheap
// enough for every scrape). A nil cache has none.
func (c *TTL[K, V]) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load()}
}

// Add stores key for the cache's ttl.
func (c *TTL[K, V]) Add(key K, val V) { c.AddFor(key, val, c.ttl) }

// AddFor stores key for at most ttl (capped at the cache's ttl).
func (c *TTL[K, V]) AddFor(key K, val V, ttl time.Duration) {
	if ttl > c.ttl || ttl <= 0 {
		ttl = c.ttl
	}
	c.lru.Add(key, ttlEntry[V]{val: val, expires: c.now().Add(ttl).UnixNano()})
}

// Remove drops key.
func (c *TTL[K, V]) Remove(key K) { c.lru.Remove(key) }

// Purge drops every entry.
func (c *TTL[K, V]) Purge() { c.lru.Purge() }

// Len is the number of entries, expired ones included.
func (c *TTL[K, V]) Len() int { return c.lru.Len() }

// Loader is a TTL cache that fills itself: a missing key is loaded once
// for every concurrent caller of it.
type Loader[K comparable, V any] struct {
	*TTL[K, V]
	flight    singleflight.Group
	flightKey func(K) string
	gen       atomic.Uint64 // counts drops: a load that raced one caches nothing
}

// NewLoader returns a loader of at most size entries, each kept at most
// ttl; flightKey names a key for sharing its load.
func NewLoader[K comparable, V any](size int, ttl time.Duration, now func() time.Time, flightKey func(K) string) *Loader[K, V] {
	return &Loader[K, V]{TTL: New[K, V](size, ttl, now), flightKey: flightKey}
}

// Load returns the value of key: cached, or from load, run once for every
// concurrent caller of key and detached from their cancellation (only its
// own deadline ends it, so one caller that hangs up fails no other). The
// value is kept for the duration load returns (0 or more than the cache's
// ttl: the cache's ttl; negative: not kept), unless the key was dropped
// while it loaded. A caller whose ctx ends first gets ctx's error.
func (l *Loader[K, V]) Load(ctx context.Context, key K, load func(ctx context.Context) (V, time.Duration, error)) (V, error) {
	if v, ok := l.get(key); ok {
		l.hits.Add(1)
		return v, nil
	}
	l.misses.Add(1)
	ch := l.flight.DoChan(l.flightKey(key), func() (any, error) {
		gen := l.gen.Load()
		v, keep, err := load(context.WithoutCancel(ctx))
		if err == nil && keep >= 0 && l.gen.Load() == gen {
			l.AddFor(key, v, keep)
		}
		return v, err
	})
	select {
	case res := <-ch:
		v, _ := res.Val.(V)
		return v, res.Err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}

// Get returns the live value of key. A hit counts as one; a miss does
// not, since a loader's misses are its loads (callers look a key up with
// Get before they make Load's closure, then Load it).
func (l *Loader[K, V]) Get(key K) (V, bool) {
	v, ok := l.get(key)
	if ok {
		l.hits.Add(1)
	}
	return v, ok
}

// Forget drops key; a load of it in flight keeps what it read to itself.
func (l *Loader[K, V]) Forget(key K) {
	l.gen.Add(1)
	l.Remove(key)
}

// ForgetIf drops every entry whose value drop reports, and what every load
// in flight reads. It walks the whole cache: for rare events only.
func (l *Loader[K, V]) ForgetIf(drop func(V) bool) {
	l.gen.Add(1)
	for _, k := range l.lru.Keys() {
		if e, ok := l.lru.Peek(k); ok && drop(e.val) {
			l.lru.Remove(k)
		}
	}
}

// Flush drops every entry, and what every load in flight reads.
func (l *Loader[K, V]) Flush() {
	l.gen.Add(1)
	l.Purge()
}
