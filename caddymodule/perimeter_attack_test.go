package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/idlink/idlink/testenv"
)

// perimeterCaddyfile is a site of tenant acme (anonymous deny, contact
// tokens, sessions, an API key) with idlink at site level in front of
// handle, handle_path and route blocks. mount is the idlink directive's
// block ("" for none).
func perimeterCaddyfile(port int, upstream, mount string) string {
	return fmt.Sprintf(`{
	idlink {
		tenant acme {
			platform ios {
				secret {env.IDLINK_PERIMETER_SECRET}
				mode enforce
			}
			default_platform ios
			anonymous deny
			contact_token {
				sign_key own-1 {env.IDLINK_PERIMETER_SIGN_KEY}
			}
			sessions {
				max 2
			}
			api_key %s user.link user.read
		}
	}
}

http://127.0.0.1:%d {
	idlink acme %s
	handle /admin/* {
		reverse_proxy %s
	}
	handle_path /static/* {
		reverse_proxy %s
	}
	route /r/* {
		reverse_proxy %s
	}
	reverse_proxy %s
}
`, sha256Hex(linkKeyBoth), port, mount, upstream, upstream, upstream, upstream)
}

type perimeter struct {
	t    *testing.T
	addr string
	up   *testenv.Upstream
}

func startPerimeter(t *testing.T, mount string) *perimeter {
	t.Setenv("IDLINK_PERIMETER_SECRET", testSecret)
	t.Setenv("IDLINK_PERIMETER_SIGN_KEY", newTestKey(t, "own-1", "ES256").writePEM(t, true))
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, perimeterCaddyfile(port, up.Addr(), mount))
	return &perimeter{t: t, addr: fmt.Sprintf("127.0.0.1:%d", port), up: up}
}

// raw sends a request line as written (no client-side path cleaning) with
// the given headers and returns the status, the body and what reached the
// upstream (nil if nothing).
func (p *perimeter) raw(method, target, body string, headers [][2]string) (int, string, *testenv.Recorded) {
	p.t.Helper()
	p.up.Reset()
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	defer conn.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, p.addr)
	for _, kv := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", kv[0], kv[1])
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		p.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, target, err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if last, ok := p.up.Last(); ok {
		return resp.StatusCode, string(out), &last
	}
	return resp.StatusCode, string(out), nil
}

// guarded checks that path is behind idlink: refused anonymous (spoofed
// headers and all) without reaching the upstream, and passed signed with
// the verified identity and none of the spoofed values.
func (p *perimeter) guarded(method, path string) {
	p.t.Helper()
	status, body, got := p.raw(method, path, "", spoofs)
	if status != http.StatusUnauthorized || got != nil || !strings.Contains(body, `"authentication_required"`) {
		p.t.Fatalf("%s %s anonymous with spoofed identity: %d %s, upstream got %v", method, path, status, body, got)
	}
	status, body, got = p.raw(method, path, "", signed("alice", testSecret, spoofs...))
	if status != http.StatusOK || got == nil {
		p.t.Fatalf("%s %s signed: %d %s", method, path, status, body)
	}
	assertNoSpoof(p.t, got.Header)
	if !strings.HasPrefix(got.Header.Get("X-Platform-User-Id"), "u_") || got.Header.Get("X-Identity-Verified") != "true" {
		p.t.Fatalf("%s %s signed: identity %v", method, path, got.Header)
	}
}

// TestPerimeterSiteLevelIdlinkGuardsBlocks: a site-level idlink guards
// the handle, handle_path and route blocks that follow it, with no order
// line (issue 11, item 1).
func TestPerimeterSiteLevelIdlinkGuardsBlocks(t *testing.T) {
	p := startPerimeter(t, "")
	for _, path := range []string{"/admin/x", "/static/x", "/r/x", "/app"} {
		p.guarded("GET", path)
	}
}

// TestPerimeterAPIMountedByHandler: `idlink acme { api /idlink }` answers
// the API's paths itself, with the raw credentials (API key, signature,
// session id), and guards every other path, including ones that only
// look like the API's.
func TestPerimeterAPIMountedByHandler(t *testing.T) {
	p := startPerimeter(t, "{\n\t\tapi /idlink\n\t}")

	// Installs: anonymous deny does not apply to the API.
	status, body, got := p.raw("POST", "/idlink/installs", "", nil)
	var inst struct {
		InstallID string `json:"install_id"`
	}
	if status != http.StatusCreated || got != nil || json.Unmarshal([]byte(body), &inst) != nil || inst.InstallID == "" {
		t.Fatalf("POST /idlink/installs: %d %s, upstream %v", status, body, got)
	}
	// The backend's key as a bearer token reaches the API, although the
	// handler takes Authorization: Bearer as a contact token.
	status, body, got = p.raw("POST", "/idlink/users/"+inst.InstallID+"/link", `{"external_id":"alice"}`,
		[][2]string{{"Authorization", "Bearer " + linkKeyBoth}})
	if status != http.StatusOK || got != nil {
		t.Fatalf("link with the API key: %d %s, upstream %v", status, body, got)
	}
	// A signed login reaches the API with its signature.
	status, body, got = p.raw("POST", "/idlink/sessions", "", signed("alice", testSecret, spoofs...))
	var sess startSessionResponse
	if status != http.StatusCreated || got != nil || json.Unmarshal([]byte(body), &sess) != nil || sess.ContactToken == "" {
		t.Fatalf("POST /idlink/sessions: %d %s, upstream %v", status, body, got)
	}
	// The token it issued works on the guarded app.
	status, body, got = p.raw("GET", "/app", "", [][2]string{{"Authorization", "Bearer " + sess.ContactToken}})
	if status != http.StatusOK || got == nil || got.Header.Get("X-Identity-Source") != SourceContactToken ||
		got.Header.Get("X-Platform-User-Id") != sess.UserID || got.Header.Get("Authorization") != "" {
		t.Fatalf("GET /app with the issued token: %d %s, upstream %v", status, body, got)
	}
	for _, path := range []string{"/idlink/jwks.json", "/idlink/jwks.json?x=1"} {
		if status, body, got := p.raw("GET", path, "", nil); status != http.StatusOK || got != nil || !strings.Contains(body, `"own-1"`) {
			t.Fatalf("GET %s: %d %s, upstream %v", path, status, body, got)
		}
	}
	// The API's own answers, even 404, are not passed to the next handler.
	for _, path := range []string{"/idlink", "/idlink/", "/idlink/nope"} {
		status, body, got := p.raw("GET", path, "", spoofs)
		if status != http.StatusNotFound || got != nil || !strings.Contains(body, `"not_found"`) {
			t.Fatalf("GET %s: %d %s, upstream %v", path, status, body, got)
		}
	}
	// The session id (an identity header the handler strips) reaches the
	// API: logout ends the session.
	status, body, got = p.raw("DELETE", "/idlink/sessions/current", "", [][2]string{{"X-Session-Id", sess.SessionID}})
	if status/100 != 2 || got != nil {
		t.Fatalf("logout: %d %s, upstream %v", status, body, got)
	}
	if status, body, _ := p.raw("GET", "/app", "", [][2]string{{"X-Session-Id", sess.SessionID}}); status != http.StatusUnauthorized {
		t.Fatalf("the ended session still works: %d %s", status, body)
	}
	// Paths that are not the API's are guarded like any other.
	for _, path := range []string{"/idlinkfoo", "/idlinkfoo/installs", "/idlink/../admin/x", "/idlink/./installs",
		"/idlink//installs", "/x/../idlink/installs", "/admin/x", "/static/x", "/r/x", "/app"} {
		p.guarded("GET", path)
	}
	if status, body, got := p.raw("POST", "/idlink/../idlink/installs", "", spoofs); status != http.StatusUnauthorized || got != nil {
		t.Fatalf("POST /idlink/../idlink/installs anonymous: %d %s, upstream %v", status, body, got)
	}
}

// TestPerimeterIdlinkInsideHandle: idlink inside a handle block guards
// just that block.
func TestPerimeterIdlinkInsideHandle(t *testing.T) {
	t.Setenv("IDLINK_PERIMETER_SECRET", testSecret)
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		tenant acme {
			platform ios {
				secret {env.IDLINK_PERIMETER_SECRET}
			}
			default_platform ios
			anonymous deny
		}
	}
}

http://127.0.0.1:%d {
	handle /members/* {
		idlink acme
		reverse_proxy %s
	}
	handle {
		reverse_proxy %s
	}
}
`, port, up.Addr(), up.Addr()))
	p := &perimeter{t: t, addr: fmt.Sprintf("127.0.0.1:%d", port), up: up}
	p.guarded("GET", "/members/x")
	status, _, got := p.raw("GET", "/public", "", nil)
	if status != http.StatusOK || got == nil || got.Header.Get("X-Identity-Source") != "" {
		t.Fatalf("/public is outside the guarded block: %d %v", status, got)
	}
}

// TestPerimeterSpoofsEveryLayout runs the spoof suite of TestE2E on every
// layout of e2eLayouts: a site-level idlink (with an inner idlink of
// another tenant in a handle block), idlink only inside handle blocks, and
// the API mounted on the same site by the handler.
func TestPerimeterSpoofsEveryLayout(t *testing.T) {
	for _, layout := range []string{"site", "handle", "api"} {
		t.Run(layout, func(t *testing.T) {
			e := startE2ELayout(t, "", layout)
			e2eSpoofChecks(t, e)
			if layout != "api" {
				return
			}
			// API calls carrying spoofed identity never reach the upstream.
			status, body, got := e.do("POST", "/idlink/installs", spoofs)
			if status != http.StatusCreated || got != nil {
				t.Fatalf("POST /idlink/installs: %d %s, upstream %v", status, body, got)
			}
		})
	}
}
