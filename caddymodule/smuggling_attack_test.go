package caddymodule

import (
	"net/http"
	"testing"
)

// Attack tests of what a client can smuggle past idlink on the way to the
// upstream (issue 11, items 2 and 3).

// TestSmugglingConnectionTokens: a client naming idlink's identity headers
// in Connection must not make reverse_proxy drop them as hop-by-hop.
func TestSmugglingConnectionTokens(t *testing.T) {
	p := startPerimeter(t, "")
	for _, conn := range []string{
		"X-Platform-User-Id, X-Identity-Verified",
		"x-platform-user-id,x-identity-verified, X-External-Id",
		"X_Platform_User_Id, X-Identity-Source, X-Session-Id, X-Install-Id",
	} {
		status, body, got := p.raw(http.MethodGet, "/app", "", signed("alice", testSecret, [2]string{"Connection", conn}))
		if status != http.StatusOK || got == nil {
			t.Fatalf("Connection: %s: %d %s", conn, status, body)
		}
		for _, h := range []string{"X-Platform-User-Id", "X-Identity-Verified", "X-Identity-Source", "X-External-Id"} {
			if got.Header.Get(h) == "" {
				t.Fatalf("Connection: %s: the upstream got no %s (headers %v)", conn, h, got.Header)
			}
		}
		if got.Header.Get("X-Identity-Verified") != "true" || got.Header.Get("X-External-Id") != "alice" {
			t.Fatalf("Connection: %s: identity %v", conn, got.Header)
		}
	}
}

// TestStripConnectionTokens: only the tokens naming a header of the set
// go; the rest of Connection is left to Caddy.
func TestStripConnectionTokens(t *testing.T) {
	s := newHeaderSet(identityHeaders, credentialHeaders)
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{[]string{"keep-alive"}, []string{"keep-alive"}},
		{[]string{"keep-alive, X-Platform-User-Id"}, []string{"keep-alive"}},
		{[]string{"X_Identity_Verified", "Upgrade"}, []string{"Upgrade"}},
		{[]string{"x-contact-token , x-external-id-signature"}, nil},
	} {
		h := http.Header{"Connection": tc.in}
		s.stripConnectionTokens(h)
		if got := h["Connection"]; len(got) != len(tc.want) || (len(got) > 0 && got[0] != tc.want[0]) {
			t.Errorf("Connection %q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}
