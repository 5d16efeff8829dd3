package store

import (
	"context"
	"testing"
	"time"
)

// TestEmbeddedExpires: keys with a TTL (link locks, session tombstones)
// expire in the embedded store as in a real Redis.
func TestEmbeddedExpires(t *testing.T) {
	s, err := OpenEmbedded(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.rdb.Set(ctx, "idl:test", "x", 100*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for s.rdb.Exists(ctx, "idl:test").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("a key with a 100ms TTL still exists after 3s in the embedded store")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
