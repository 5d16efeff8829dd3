package store

import (
	"context"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// TestDurableOperations: with durability on, every state-changing
// operation (install, link, session start and end) goes through runWrite:
// where every master has a replica its writes are acknowledged, and on a
// lone server each write is a shortfall, counted, and the operation still
// succeeds.
func TestDurableOperations(t *testing.T) {
	forEachDeployment(t, func(t *testing.T, s *Store, d testenv.Deployment) {
		if d.Client == nil {
			t.Skip("no durability on the embedded store")
		}
		var rec shortfallRecorder
		// Without a replica every write waits the whole timeout: keep it
		// short there. With replicas, give them a realistic budget: they
		// acknowledge in milliseconds, but a loaded CI machine (-race)
		// can take longer than Redis's 100ms WAIT tick.
		wait := 400 * time.Millisecond
		if d.Name == testenv.DeployStandalone {
			wait = 20 * time.Millisecond
		}
		if err := s.SetDurability(Durability{Replicas: 1, Timeout: wait}, rec.hook); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		k := NewKeys("durable")
		now := time.UnixMilli(1_800_000_000_000)
		type step struct {
			name string
			run  func() error
		}
		var install, user, session string
		p := SessionPolicy{Max: 1, Idle: time.Hour, Channel: "idl:invalidate"}
		steps := []step{
			{"create install", func() (err error) {
				install, _, err = s.CreateInstall(ctx, k, now, Expiry{})
				return err
			}},
			{"link", func() error {
				r, err := s.Link(ctx, k, LinkRequest{InstallID: install, ExternalID: "alice", Now: now,
					Channel: "idl:invalidate", Message: "durable install " + install}, LinkOptions{})
				user = r.UserID
				return err
			}},
			{"admit session", func() error {
				shard, _ := ParseID(KindUser, user)
				session = NewID(KindSession, shard)
				_, err := s.AdmitSession(ctx, k, p, NewSession{ID: session, UserID: user, InstallID: install, Verified: true}, now)
				return err
			}},
			{"end session", func() error {
				_, ended, _, err := s.EndSession(ctx, k, p, session, ReasonLoggedOut, now.Add(time.Second))
				if err == nil && !ended {
					t.Errorf("the session was not ended")
				}
				return err
			}},
		}
		for _, step := range steps {
			before := s.Shortfalls()
			if err := step.run(); err != nil {
				t.Fatalf("%s with durability: %v", step.name, err)
			}
			got := s.Shortfalls() - before
			switch {
			case d.Name == testenv.DeployStandalone && got == 0:
				t.Errorf("%s: no shortfall on a server without replicas: its writes skip runWrite", step.name)
			case d.Name != testenv.DeployStandalone && got != 0:
				t.Errorf("%s: %d shortfalls with a replica per master: %v", step.name, got, rec.all())
			}
		}
		if got := d.Client.HGet(ctx, k.Install(mustShard(t, KindInstall, install), install), "user").Val(); got != user {
			t.Fatalf("the install points to %q, want %q", got, user)
		}
	})
}

func mustShard(t *testing.T, kind byte, id string) int {
	t.Helper()
	shard, err := ParseID(kind, id)
	if err != nil {
		t.Fatal(err)
	}
	return shard
}
