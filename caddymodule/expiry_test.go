package caddymodule

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestInstallTTLConfig: install_ttl from JSON: 0 (absent) is 30 days, a
// negative value is off, below a second is refused at validation.
func TestInstallTTLConfig(t *testing.T) {
	for _, c := range []struct {
		ttl     caddy.Duration
		want    time.Duration
		refused bool
	}{
		{0, 30 * 24 * time.Hour, false},
		{-1, 0, false},
		{caddy.Duration(2 * time.Second), 2 * time.Second, false},
		{caddy.Duration(500 * time.Millisecond), 0, true},
	} {
		a := &App{Tenants: map[string]*Tenant{"acme": {InstallTTL: c.ttl}}}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := a.Provision(ctx)
		if err == nil {
			err = a.Validate()
		}
		switch {
		case c.refused && (err == nil || !strings.Contains(err.Error(), "install_ttl must be at least 1s")):
			t.Errorf("install_ttl %v: %v, want refused", time.Duration(c.ttl), err)
		case !c.refused && err != nil:
			t.Errorf("install_ttl %v: %v", time.Duration(c.ttl), err)
		case !c.refused && a.Tenants["acme"].id.Expiry().TTL != c.want:
			t.Errorf("install_ttl %v: expiry %v, want %v", time.Duration(c.ttl), a.Tenants["acme"].id.Expiry().TTL, c.want)
		}
		_ = a.Cleanup()
		cancel()
	}
}
