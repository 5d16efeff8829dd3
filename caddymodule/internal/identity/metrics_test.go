package identity

import (
	"context"
	"fmt"
	"testing"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/cache"
)

// TestObserverSessionsAndLinks: logins, an eviction, a logout and links
// reach the observer exactly once each, with their reason or outcome.
func TestObserverSessionsAndLinks(t *testing.T) {
	ctx := context.Background()
	var got []string
	d := newDomain(t, embeddedStore(t), func(c *Config) {
		c.Observe = Observer{
			Session: func(event, reason string, n int) { got = append(got, fmt.Sprintf("%s/%s/%d", event, reason, n)) },
			Link:    func(outcome string) { got = append(got, "link/"+outcome) },
		}
	})
	creds := Credentials{ExternalID: "alice", ExternalIDSig: sign("alice")}
	if _, err := d.Login(ctx, creds, nil); err != nil {
		t.Fatal(err)
	}
	second, err := d.Login(ctx, creds, nil) // max 1: evicts the first
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Logout(ctx, second.SessionID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Logout(ctx, second.SessionID); err != nil { // a repeat ends nothing
		t.Fatal(err)
	}
	installID, _, err := d.CreateInstall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := d.Link(ctx, installID, "bob"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Link(ctx, "i_nope", "bob"); err == nil {
		t.Fatal("a link of an unknown install succeeded")
	}
	want := []string{
		"started/verified/1",
		"started/verified/1", "ended/evicted/1",
		"ended/logged_out/1",
		"link/created", "link/repeat", "link/not_found",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}

// TestWouldRefuse: report mode marks the identity of a request whose
// signature (external id, or a signed email) failed; a verified one and
// off mode are not marked.
func TestWouldRefuse(t *testing.T) {
	ctx := context.Background()
	d := newDomain(t, embeddedStore(t), func(c *Config) {
		c.Platforms["web"] = &Platform{Mode: ModeReport, Keys: c.Platforms["ios"].Keys}
		c.Platforms["tv"] = &Platform{Mode: ModeOff}
	})
	for _, c := range []struct {
		name  string
		creds Credentials
		want  string
	}{
		{"report, bad signature", Credentials{Platform: "web", ExternalID: "a", ExternalIDSig: "00"}, apierr.CodeInvalidSignature},
		{"report, no signature", Credentials{Platform: "web", ExternalID: "a"}, apierr.CodeInvalidSignature},
		{"report, bad email signature", Credentials{Platform: "web", ExternalID: "a", ExternalIDSig: sign("a"),
			Email: "a@x", EmailSig: "00"}, apierr.CodeInvalidSignature},
		{"report, verified", Credentials{Platform: "web", ExternalID: "a", ExternalIDSig: sign("a")}, ""},
		{"off", Credentials{Platform: "tv", ExternalID: "a"}, ""},
		{"anonymous", Credentials{}, ""},
	} {
		id, aerr := d.Authenticate(ctx, &c.creds)
		if aerr != nil {
			t.Fatalf("%s: refused: %v", c.name, aerr)
		}
		if id.WouldRefuse != c.want {
			t.Errorf("%s: WouldRefuse %q, want %q", c.name, id.WouldRefuse, c.want)
		}
	}
}

// TestCacheStats: the users cache counts a first lookup as a miss and the
// next as a hit.
func TestCacheStats(t *testing.T) {
	ctx := context.Background()
	d := newDomain(t, embeddedStore(t), nil)
	stats := func() map[string]cache.Stats {
		m := map[string]cache.Stats{}
		d.CacheStats(func(name string, s cache.Stats) { m[name] = s })
		return m
	}
	for range 3 {
		if _, err := d.users.resolve(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	if got := stats()[CacheUsers]; got != (cache.Stats{Hits: 2, Misses: 1}) {
		t.Fatalf("users cache %+v, want 2 hits, 1 miss", got)
	}
	if _, ok := stats()[CacheContactTokens]; ok {
		t.Fatal("a tenant without contact tokens reports their cache")
	}
}
