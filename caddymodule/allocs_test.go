package caddymodule

import (
	"context"
	"testing"
	"time"
)

// TestWarmPathAllocations: the warm lookups of a request allocate no more
// than they do today, counted exactly (wall-clock ratios are too noisy on
// a shared machine to guard against such a regression). A closure or an
// errors.As target made before a cache hit is one more allocation on every
// request.
func TestWarmPathAllocations(t *testing.T) {
	ec := newTestKey(t, "ec", "ES256")
	srv := startTokenInfoServer(t)
	srv.answer("sso-tok", jsonAnswer(200, map[string]any{"sub": "bob", "aud": "sdk", "exp": time.Now().Add(time.Hour).Unix()}))
	a := startTestApp(t, nil, map[string]*Tenant{"acme": {
		ContactToken: &ContactToken{SignKeys: []TokenKey{{KID: "ec", File: ec.writePEM(t, true)}}},
		SSO:          &SSO{TokenInfoURL: srv.URL, Audience: []string{"sdk"}},
	}})
	tn := a.Tenants["acme"]
	ctx := context.Background()
	userID, err := tn.resolveExternal(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	installID, _, err := tn.app.store.CreateInstall(ctx, tn.keys, time.Now(), tn.expiry.policy)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := tn.issueToken(userID, "", "alice", nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	tokCreds := &credentials{contactToken: tok}
	ssoCreds := &credentials{ssoToken: "sso-tok"}
	for _, c := range []struct {
		name string
		max  float64
		run  func() error
	}{
		{"resolveExternal", 0, func() error { _, err := tn.resolveExternal(ctx, "alice"); return err }},
		{"installUser", 0, func() error { _, err := tn.installUser(ctx, installID); return err }},
		{"checkContactToken", 1, func() error { _, err := tn.checkContactToken(ctx, tokCreds); return err }}, // the identity
		{"checkSSO", 2, func() error { _, err := tn.checkSSO(ctx, ssoCreds); return err }},
	} {
		if err := c.run(); err != nil { // warm it
			t.Fatalf("%s: %v", c.name, err)
		}
		var runErr error
		n := testing.AllocsPerRun(200, func() {
			if err := c.run(); err != nil {
				runErr = err
			}
		})
		if runErr != nil {
			t.Fatalf("%s: %v", c.name, runErr)
		}
		if n > c.max {
			t.Errorf("%s allocates %.0f times when warm, at most %.0f expected", c.name, n, c.max)
		}
	}
}
