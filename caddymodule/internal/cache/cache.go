// Package cache is the bounded, expiring in-process cache every part of
// idlink uses (install, session, token, SSO and claims lookups).
package cache

import (
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// TTL is a bounded LRU whose entries also expire. It starts no
// goroutine (expired entries are dropped when looked up or pushed out by
// newer ones), so nothing outlives a config reload.
type TTL[K comparable, V any] struct {
	lru *lru.Cache[K, ttlEntry[V]]
	ttl time.Duration
	now func() time.Time
}

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

// Get returns the live value of key.
func (c *TTL[K, V]) Get(key K) (V, bool) {
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
