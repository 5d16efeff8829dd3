package store

import (
	"strings"
	"testing"
)

func TestNewIDParseID(t *testing.T) {
	seen := map[string]bool{}
	for shard := range Shards {
		for _, kind := range []byte{KindUser, KindInstall, KindSession} {
			id := NewID(kind, shard)
			if seen[id] {
				t.Fatalf("duplicate id %s", id)
			}
			seen[id] = true
			got, err := ParseID(kind, id)
			if err != nil || got != shard {
				t.Fatalf("ParseID(%q) = %d, %v; want shard %d", id, got, err, shard)
			}
			if strings.ContainsAny(id, "{}:/+= ") {
				t.Fatalf("id %q is not URL- and key-safe", id)
			}
		}
	}
	good := NewID(KindUser, 3)
	bad := []string{
		"", good[:len(good)-1], good + "A", "i" + good[1:], // wrong kind
		good[:2] + "10" + good[4:], // shard out of range
		good[:2] + "0A" + good[4:], // upper-case shard
		good[:10] + "." + good[11:], good[:10] + "}" + good[11:], good[:10] + "\n" + good[11:],
		"u-" + good[2:],
	}
	for _, b := range bad {
		if _, err := ParseID(KindUser, b); err == nil {
			t.Errorf("ParseID accepted %q", b)
		}
	}
}

func TestKeysShareTagWithinShard(t *testing.T) {
	k := NewKeys("acme")
	ext := "alice@example.com"
	s := ExternalShard(ext)
	u := NewID(KindUser, s)
	tag := func(key string) string { return key[strings.IndexByte(key, '{') : strings.IndexByte(key, '}')+1] }
	if tag(k.External(ext)) != tag(k.User(s, u)) || tag(k.User(s, u)) != tag(k.Events(s)) {
		t.Fatalf("keys of one shard differ in hash tag: %s %s %s", k.External(ext), k.User(s, u), k.Events(s))
	}
	if tag(k.Events(0)) == tag(k.Events(1)) {
		t.Fatal("different shards share a tag")
	}
	// An external id with braces cannot move the tag: the first {...} wins.
	if tag(k.External("{evil}")) != tag(k.Events(ExternalShard("{evil}"))) {
		t.Fatal("braces in an external id changed the hash tag")
	}
	if NewKeys("other").Events(0) == k.Events(0) {
		t.Fatal("tenants share keys")
	}
}

func TestExternalShardStable(t *testing.T) {
	// The shard of an external id is part of the stored data: it must never change.
	for ext, want := range map[string]int{"": 5, "alice": 7, "bob": 4, "user-12345": 0} {
		if got := ExternalShard(ext); got != want {
			t.Errorf("ExternalShard(%q) = %d, want %d: the placement function changed", ext, got, want)
		}
	}
}

func FuzzParseID(f *testing.F) {
	f.Add(NewID(KindUser, 0))
	f.Add("u_0f")
	f.Add("u_0fAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		shard, err := ParseID(KindUser, s)
		if err != nil {
			return
		}
		if shard < 0 || shard >= Shards || strings.ContainsAny(s, "{}\r\n :") {
			t.Fatalf("ParseID accepted %q (shard %d)", s, shard)
		}
	})
}
