package store

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// claimPairs turns claims into an update's fields (keys JSON-encoded,
// values compact JSON).
func claimPairs(t *testing.T, replace bool, limit int, kv ...string) AttributeUpdate {
	t.Helper()
	u := AttributeUpdate{Replace: replace, Limit: limit}
	for i := 0; i+1 < len(kv); i += 2 {
		k, _ := json.Marshal(kv[i])
		u.Fields = append(u.Fields, [2]string{string(k), kv[i+1]})
	}
	return u
}

// TestUserClaims: the customer backend's claims are merged or replaced
// atomically in the user's slot, bounded, and announced once per change.
func TestUserClaims(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("claims")
		now := time.UnixMilli(1_800_000_000_000)
		_, user, err := s.CreateInstall(ctx, k, now, Expiry{})
		if err != nil {
			t.Fatal(err)
		}
		shard, _ := ParseID(KindUser, user)
		claimEvents := func() []outboxEvent {
			var out []outboxEvent
			for _, e := range shardEvents(t, s, k, shard) {
				if e.Type == EventUserClaimsUpdated {
					out = append(out, e)
				}
			}
			return out
		}
		set := func(u AttributeUpdate, want string, wantChanged bool) {
			t.Helper()
			got, changed, err := s.SetUserClaims(ctx, k, user, u, now)
			if err != nil || got != want || changed != wantChanged {
				t.Fatalf("SetUserClaims = %q, %v, %v; want %q, %v", got, changed, err, want, wantChanged)
			}
			if read, err := s.UserClaims(ctx, k, user); err != nil || read != want {
				t.Fatalf("UserClaims = %q, %v; want %q", read, err, want)
			}
		}
		set(claimPairs(t, false, 100, "contact_id", `"c-1"`, "tier", `2`), `{"contact_id":"c-1","tier":2}`, true)
		set(claimPairs(t, false, 100, "predict_id", `"p-1"`), `{"contact_id":"c-1","predict_id":"p-1","tier":2}`, true)
		// The same values again: nothing changed, no event.
		set(claimPairs(t, false, 100, "predict_id", `"p-1"`), `{"contact_id":"c-1","predict_id":"p-1","tier":2}`, false)
		set(claimPairs(t, false, 100, "tier", `null`), `{"contact_id":"c-1","predict_id":"p-1"}`, true)
		set(claimPairs(t, true, 100, "contact_id", `"c-2"`), `{"contact_id":"c-2"}`, true)

		// Over the limit: refused, nothing stored, no event.
		var tooLarge *ClaimsTooLargeError
		if _, _, err := s.SetUserClaims(ctx, k, user, claimPairs(t, false, 30, "predict_id", `"p-123456789"`), now); !errors.As(err, &tooLarge) ||
			tooLarge.Size != len(`{"contact_id":"c-2","predict_id":"p-123456789"}`) || tooLarge.Limit != 30 {
			t.Fatalf("over the limit: %v", err)
		}
		if read, _ := s.UserClaims(ctx, k, user); read != `{"contact_id":"c-2"}` {
			t.Fatalf("a refused update changed the claims: %s", read)
		}

		evs := claimEvents()
		if len(evs) != 4 {
			t.Fatalf("%d user.claims_updated events, want 4 (one per change): %v", len(evs), evs)
		}
		last := evs[3].Data
		if last["user_id"] != user || last["claims"].(map[string]any)["contact_id"] != "c-2" || len(last["claims"].(map[string]any)) != 1 {
			t.Fatalf("last event data: %v", last)
		}

		// An unknown or malformed user: not found, and nothing written.
		ghost := NewID(KindUser, shard)
		for _, id := range []string{ghost, "u_nope", ""} {
			if _, _, err := s.SetUserClaims(ctx, k, id, claimPairs(t, false, 100, "contact_id", `"x"`), now); !errors.Is(err, ErrUserNotFound) {
				t.Fatalf("SetUserClaims(%q) = %v, want ErrUserNotFound", id, err)
			}
		}
		if n, _ := s.rdb.Exists(ctx, k.UserClaims(shard, ghost)).Result(); n != 0 {
			t.Fatal("claims were written for an unknown user")
		}
	})
}

// TestUserClaimsOnlyForPermanentUsers: a user that expires (an install's
// anonymous user no link has named) takes no claims, so that nothing
// outlives the user it describes; a merged-away anonymous user is deleted
// with its claims.
func TestUserClaimsOnlyForPermanentUsers(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		ctx := context.Background()
		k := NewKeys("claimsexp")
		now := time.UnixMilli(1_800_000_000_000)
		_, anon, err := s.CreateInstall(ctx, k, now, Expiry{TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.SetUserClaims(ctx, k, anon, claimPairs(t, false, 100, "contact_id", `"c"`), now); !errors.Is(err, ErrUserExpires) {
			t.Fatalf("claims of an expiring user: %v, want ErrUserExpires", err)
		}
		shard, _ := ParseID(KindUser, anon)
		if n, _ := s.rdb.Exists(ctx, k.UserClaims(shard, anon)).Result(); n != 0 {
			t.Fatal("claims were written for an expiring user")
		}

		// A permanent anonymous user with claims, merged into alice's
		// user: deleted, claims and all.
		if _, _, err := s.ResolveExternal(ctx, k, "alice", now); err != nil {
			t.Fatal(err)
		}
		inst, anon2, err := s.CreateInstall(ctx, k, now, Expiry{})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.SetUserClaims(ctx, k, anon2, claimPairs(t, false, 100, "contact_id", `"c-anon"`), now); err != nil {
			t.Fatal(err)
		}
		res, err := s.Link(ctx, k, LinkRequest{InstallID: inst, ExternalID: "alice", Now: now}, LinkOptions{})
		if err != nil || res.MergedFrom != anon2 {
			t.Fatalf("link: %+v, %v", res, err)
		}
		s2, _ := ParseID(KindUser, anon2)
		if n, _ := s.rdb.Exists(ctx, k.User(s2, anon2), k.UserClaims(s2, anon2)).Result(); n != 0 {
			t.Fatalf("the merged-away user left %d keys (its hash or its claims)", n)
		}
	})
}
