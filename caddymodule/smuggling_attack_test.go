package caddymodule

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// Attacks that try to get an identity header past idlink, or make Caddy drop
// the ones idlink sets, with HTTP/1.1 framing rather than plain headers:
// hop-by-hop nominations in Connection, and chunked-body trailers. Every test
// runs through a real in-process Caddy in front of a recording upstream.

const smuggleSecret = "smuggle-secret-0123456789"

// smuggleSite is a site with a site-level idlink (tenant acme, HMAC enforce)
// in front of up, and a /fwd/* block whose idlink forwards credentials.
func smuggleSite(t *testing.T) (addr string, up *testenv.Upstream) {
	t.Helper()
	t.Setenv("IDLINK_SMUGGLE_SECRET", smuggleSecret)
	redisLine := ""
	if u := testRedisURL(t); u != "" {
		redisLine = "redis " + u
	}
	up = testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	servers {
		expected_underscore_headers X_Platform_User_Id
	}
	idlink {
		%s
		tenant acme {
			platform ios {
				secret {env.IDLINK_SMUGGLE_SECRET}
				mode enforce
			}
			default_platform ios
		}
	}
}

http://127.0.0.1:%d {
	handle /fwd/* {
		idlink acme {
			forward_credentials
		}
		reverse_proxy %s
	}
	handle {
		idlink acme
		reverse_proxy %s
	}
}
`, redisLine, port, up.Addr(), up.Addr()))
	return fmt.Sprintf("127.0.0.1:%d", port), up
}

// rawRequest writes raw (an HTTP/1.1 request, sent as given) on a new
// connection and returns the response's status and body.
func rawRequest(t *testing.T, addr, raw string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	raw = strings.Replace(raw, "\r\nHost: x\r\n", "\r\nHost: "+addr+"\r\n", 1) // the site's host
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// signedLines are the header lines of a valid HMAC credential for ext.
func signedLines(ext string) string {
	return "X-External-Id: " + ext + "\r\nX-External-Id-Signature: " + sign(smuggleSecret, ext) + "\r\n"
}

func lastRequest(t *testing.T, up *testenv.Upstream, status int, body string) testenv.Recorded {
	t.Helper()
	last, ok := up.Last()
	if !ok {
		t.Fatalf("nothing reached the upstream: %d %s", status, body)
	}
	return last
}

// TestSmuggleConnectionDropsIdentity: a client naming idlink's headers in
// Connection must not make reverse_proxy remove them as hop-by-hop; the
// other nominations are still Caddy's to honour.
func TestSmuggleConnectionDropsIdentity(t *testing.T) {
	addr, up := smuggleSite(t)
	for _, tc := range []struct{ name, conn string }{
		{"one header", "Connection: X-Platform-User-Id, X-Identity-Verified, X-Custom-Hop\r\n"},
		{"every identity header, odd spellings", "Connection: keep-alive, x-platform-user-id,X-IDENTITY-VERIFIED , X-Identity-Source, X-External-Id, X_Platform_User_Id\r\nConnection: X-Custom-Hop\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up.Reset()
			status, body := rawRequest(t, addr, "GET /app HTTP/1.1\r\nHost: x\r\n"+signedLines("alice")+
				"X-Custom-Hop: dropped\r\n"+tc.conn+"\r\n")
			got := lastRequest(t, up, status, body).Header
			if status != 200 || !strings.HasPrefix(got.Get("X-Platform-User-Id"), "u_") ||
				got.Get("X-Identity-Verified") != "true" || got.Get("X-Identity-Source") != "hmac" ||
				got.Get("X-External-Id") != "alice" {
				t.Fatalf("%d %s: the upstream received %v", status, body, got)
			}
			if got.Get("X-Custom-Hop") != "" {
				t.Fatalf("a header the client nominated as hop-by-hop reached the upstream: %v", got)
			}
		})
	}
	// forward_credentials: a nominated credential is forwarded all the same.
	up.Reset()
	status, body := rawRequest(t, addr, "GET /fwd/x HTTP/1.1\r\nHost: x\r\n"+signedLines("alice")+
		"Connection: X-External-Id-Signature, X-Platform-User-Id\r\n\r\n")
	got := lastRequest(t, up, status, body).Header
	if status != 200 || got.Get("X-External-Id-Signature") != sign(smuggleSecret, "alice") ||
		!strings.HasPrefix(got.Get("X-Platform-User-Id"), "u_") {
		t.Fatalf("forward_credentials: %d %s: the upstream received %v", status, body, got)
	}
}

// TestSmuggleTrailers: identity and credential names sent as chunked-body
// trailers never reach the upstream, neither as a trailer nor in its
// Trailer declaration, on every path; other trailers do.
func TestSmuggleTrailers(t *testing.T) {
	addr, up := smuggleSite(t)
	const declared = "Trailer: X-Platform-User-Id, X-Identity-Verified, x_platform_user_id, X-Sso-Token, X-Checksum\r\n"
	const trailer = "X-Platform-User-Id: u_evil\r\nX-Identity-Verified: true\r\nx_platform_user_id: u_evil2\r\nX-Sso-Token: evil-token\r\nX-Checksum: abc\r\n"
	post := func(path, headers string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + headers + declared +
			"\r\n4\r\nbody\r\n0\r\n" + trailer + "\r\n"
	}
	for _, tc := range []struct{ name, raw string }{
		{"signed", post("/app", signedLines("alice"))},
		{"anonymous", post("/app", "")},
		{"forward_credentials", post("/fwd/x", signedLines("alice"))},
		{"preflight", strings.Replace(post("/app", "Origin: https://a.example\r\nAccess-Control-Request-Method: POST\r\n"), "POST", "OPTIONS", 1)},
		{"undeclared", "POST /app HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n" + trailer + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up.Reset()
			status, body := rawRequest(t, addr, tc.raw)
			rec := lastRequest(t, up, status, body)
			if status != 200 || string(rec.Body) != "body" {
				t.Fatalf("%d %s: upstream body %q", status, body, rec.Body)
			}
			for k, vs := range rec.Trailer {
				if !strings.EqualFold(k, "X-Checksum") {
					t.Fatalf("trailer %s: %q reached the upstream (trailers %v)", k, vs, rec.Trailer)
				}
			}
			if tc.name != "undeclared" && rec.Trailer.Get("X-Checksum") != "abc" {
				t.Fatalf("the proxy dropped an ordinary trailer: the check above proves nothing: %v", rec.Trailer)
			}
			for k, vs := range rec.Header {
				for _, v := range vs {
					if strings.Contains(v, "evil") {
						t.Fatalf("%s: %s reached the upstream", k, v)
					}
				}
			}
			if tc.name == "signed" && !strings.HasPrefix(rec.Header.Get("X-Platform-User-Id"), "u_") {
				t.Fatalf("signed: identity headers %v", rec.Header)
			}
		})
	}
}
