package verify

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestLogoutUntil: a logout token is accepted until iat + max_age or its
// exp, whichever is sooner (leeway included): what its jti must be
// remembered for. A sid alone verifies (the caller decides what it can
// match); the tenant's own signing keys never verify one.
func TestLogoutUntil(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	es := newSigner(t, "es-1", "ES256")
	toks := newTestTokens(t, clock, nil, es)
	l, err := NewLogout(LogoutConfig{Tokens: toks, Issuer: "https://issuer.example", Audience: []string{"app"},
		MaxAge: 2 * time.Minute, Leeway: time.Second, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	claims := func(mutate func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"iss": "https://issuer.example", "aud": []string{"other", "app"}, "sub": "alice", "jti": "j",
			"iat": now.Add(-30 * time.Second).Unix(), "events": map[string]any{BackchannelLogoutEvent: map[string]any{}}}
		mutate(c)
		return c
	}
	for _, c := range []struct {
		name  string
		c     jwt.MapClaims
		until time.Time
	}{
		{"no exp", claims(func(jwt.MapClaims) {}), now.Add(90*time.Second + time.Second)},
		{"exp sooner", claims(func(c jwt.MapClaims) { c["exp"] = now.Add(10 * time.Second).Unix() }), now.Add(11 * time.Second)},
		{"exp later", claims(func(c jwt.MapClaims) { c["exp"] = now.Add(time.Hour).Unix() }), now.Add(91 * time.Second)},
		{"sid only", claims(func(c jwt.MapClaims) { delete(c, "sub"); c["sid"] = "s-1" }), now.Add(91 * time.Second)},
	} {
		lt, err := l.Verify(context.Background(), es.sign(t, c.c, "es-1"))
		if err != nil || !lt.Until.Equal(c.until) || lt.JTI != "j" || lt.Issuer != "https://issuer.example" {
			t.Errorf("%s: %+v %v, want until %v", c.name, lt, err, c.until)
		}
	}
	own := newSigner(t, "own-1", "ES256")
	toks.static["own-1"] = Key{KID: "own-1", Alg: "ES256", Pub: own.priv.Public(), Own: true}
	_, err = l.Verify(context.Background(), own.sign(t, claims(func(jwt.MapClaims) {}), "own-1"))
	var rf *Refusal
	if !errors.As(err, &rf) {
		t.Fatalf("own key: %v, want a refusal", err)
	}
	for typ, ok := range map[string]bool{"logout+jwt": true, "application/logout+jwt": true, "JWT": true, "Logout+JWT": true, "at+jwt": false, "secevent+jwt": false} {
		if got := logoutTyp([]byte(`"` + typ + `"`)); got != ok {
			t.Errorf("typ %q: %v", typ, got)
		}
	}
	if logoutTyp([]byte(`5`)) || !logoutTyp(nil) {
		t.Error("typ 5 accepted, or no typ refused")
	}
}
