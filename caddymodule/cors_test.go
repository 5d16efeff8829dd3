package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/idlink/idlink/testenv"
)

// TestCORSThroughCaddy: a page on an allowed origin can call the API (its
// preflight is answered with the SDK's headers, its answers marked for
// it, WWW-Authenticate and Retry-After readable); another origin gets no
// permission; the protected site's own preflights still reach the
// upstream.
func TestCORSThroughCaddy(t *testing.T) {
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	redis := ""
	if u := testRedisURL(t); u != "" {
		redis = "redis " + u
	}
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		%s
		tenant acme {
			platform ios {
				secret {env.IDLINK_E2E_NEW}
			}
			default_platform ios
			cors {
				origins https://app.example.com http://localhost:3000
				max_age 5m
			}
		}
	}
}

http://127.0.0.1:%d {
	idlink acme {
		api /idlink
	}
	reverse_proxy %s
}
`, redis, port, up.Addr()))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	do := func(method, path string, h ...[2]string) (*http.Response, string) {
		t.Helper()
		up.Reset()
		req, _ := http.NewRequest(method, base+path, nil)
		for _, kv := range h {
			req.Header.Set(kv[0], kv[1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	preflight := func(origin, path string) *http.Response {
		resp, _ := do("OPTIONS", path, [2]string{"Origin", origin}, [2]string{"Access-Control-Request-Method", "POST"},
			[2]string{"Access-Control-Request-Headers", "content-type,x-external-id,x-external-id-signature,x-install-id"})
		return resp
	}

	resp := preflight("https://app.example.com", "/idlink/sessions")
	h := resp.Header
	if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		h.Get("Access-Control-Allow-Credentials") != "true" || h.Get("Access-Control-Max-Age") != "300" ||
		!strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "x-external-id-signature") ||
		!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") || !strings.Contains(h.Get("Vary"), "Origin") {
		t.Fatalf("preflight of an allowed origin: %d %v", resp.StatusCode, h)
	}
	if _, ok := up.Last(); ok {
		t.Fatal("the API's preflight reached the upstream")
	}
	// Another origin, or a header the SDK does not send (an API key): no permission.
	for _, o := range []string{"https://evil.example.com", "https://app.example.com.evil.com", "null"} {
		if resp := preflight(o, "/idlink/sessions"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight of %s allowed: %v", o, resp.Header)
		}
	}
	resp, _ = do("OPTIONS", "/idlink/users/u/link", [2]string{"Origin", "https://app.example.com"},
		[2]string{"Access-Control-Request-Method", "POST"}, [2]string{"Access-Control-Request-Headers", "x-api-key"})
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight asking for X-Api-Key allowed: %v", resp.Header)
	}

	// The call itself: answered, marked, the refusal's headers exposed.
	resp, body := do("POST", "/idlink/sessions", [2]string{"Origin", "https://app.example.com"},
		[2]string{"X-External-Id", "alice"}, [2]string{"X-External-Id-Signature", sign(e2eNew, "alice")})
	if resp.StatusCode != 201 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("cross-origin login: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	resp, _ = do("POST", "/idlink/contact-token", [2]string{"Origin", "https://app.example.com"})
	if exp := resp.Header.Get("Access-Control-Expose-Headers"); !strings.Contains(exp, "Www-Authenticate") && !strings.Contains(exp, "WWW-Authenticate") || !strings.Contains(exp, "Retry-After") {
		t.Errorf("exposed headers %q", exp)
	}
	resp, _ = do("POST", "/idlink/sessions", [2]string{"Origin", "https://evil.example.com"})
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("answer marked for another origin: %v", resp.Header)
	}

	// The protected site's own preflight passes to the upstream, unanswered by idlink.
	resp = preflight("https://app.example.com", "/app")
	if got, ok := up.Last(); !ok || got.Header.Get("Access-Control-Request-Method") != "POST" || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("site preflight: upstream saw it %v; answer %v", ok, resp.Header)
	}
}

func TestCORSCaddyfile(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"cors {\n origins https://a.example.com http://localhost:3000\n max_age 1m\n}", ""},
		{"cors {\n origins *\n}", "no wildcard"},
		{"cors {\n origins https://*.example.com\n}", "no wildcard"},
		{"cors {\n origins https://a.example.com/path\n}", "scheme://host"},
		{"cors {\n origins ftp://a.example.com\n}", "scheme://host"},
		{"cors {\n origins a.example.com\n}", "scheme://host"},
		{"cors {\n max_age 1m\n}", "at least one origin"},
		{"cors {\n origins\n}", "wrong argument count"},
		{"cors {\n allow_all\n}", "unrecognized cors subdirective"},
	} {
		app := new(App)
		err := app.UnmarshalCaddyfile(caddyfileDispenser("idlink {\n tenant acme {\n" + tc.in + "\n}\n}"))
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
		}
	}
	c := &CORS{Origins: []string{"https://A.example.com:8443"}}
	if err := c.provision(); err != nil || !c.allows("https://a.example.com:8443") {
		t.Fatal(err, c.origins)
	}
	if err := (&CORS{}).provision(); err == nil {
		t.Fatal("no origins: no error")
	}
}
