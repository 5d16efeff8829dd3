package caddymodule

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// Attack tests of the SSO path (issue 10, item 6): what a token-info
// answer does not say is never injected as verified.

// TestAttackSSOEmailWithoutEmailVerified: an answer whose email carries no
// email_verified (or a false one) gives no X-Verified-Email; only
// email_verified true does. Through real Caddy with a recording upstream.
func TestAttackSSOEmailWithoutEmailVerified(t *testing.T) {
	srv := startTokenInfoServer(t)
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		redis %s
		tenant acme {
			sso {
				token_info_url %s/tokeninfo
				audience sdk
				timeout 500ms
			}
		}
	}
}
http://127.0.0.1:%d {
	idlink acme
	reverse_proxy %s
}
`, testRedisURL(t), srv.URL, port, up.Addr()))
	exp := time.Now().Add(10 * time.Minute).Unix()
	for i, c := range []struct {
		name     string
		verified any // nil: absent
		want     string
	}{
		{"absent", nil, ""},
		{"false", false, ""},
		{"string false", "false", ""},
		{"true", true, "mallory@corp.example"},
		{"string true", "true", "mallory@corp.example"},
	} {
		t.Run(c.name, func(t *testing.T) {
			answer := map[string]any{"sub": "sso-mallory", "aud": "sdk", "exp": exp, "email": "mallory@corp.example"}
			if c.verified != nil {
				answer["email_verified"] = c.verified
			}
			token := fmt.Sprintf("opaque-%d", i)
			srv.answer(token, jsonAnswer(200, answer))
			up.Reset()
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/app", port), nil)
			req.Header.Set("X-Sso-Token", token)
			req.Header.Set("X-Verified-Email", "spoofed@corp.example")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got, ok := up.Last()
			if resp.StatusCode != http.StatusOK || !ok {
				t.Fatalf("status %d, upstream reached %v", resp.StatusCode, ok)
			}
			if e := got.Header.Get("X-Verified-Email"); e != c.want {
				t.Fatalf("email_verified %v: the upstream saw X-Verified-Email=%q, want %q", c.verified, e, c.want)
			}
		})
	}
}
