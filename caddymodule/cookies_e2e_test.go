package caddymodule

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// cookieSite is a real Caddy serving https://www.acme.test and
// https://app.acme.test (internal TLS, both dialled at 127.0.0.1) for
// tenant acme with cookies on .acme.test, and a browser-like client: a
// cookie jar (nil public suffix list: acme.test is a registrable domain
// to it, so a Domain=acme.test cookie set by www is sent to app).
type cookieSite struct {
	t      *testing.T
	port   int
	log    string // the access log (format idlink)
	up     *testenv.Upstream
	client *http.Client
}

func startCookieSite(t *testing.T) *cookieSite {
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	redis := ""
	if u := testRedisURL(t); u != "" {
		redis = "redis " + u
	}
	s := &cookieSite{t: t, port: testenv.FreePort(t), up: testenv.StartUpstream(t),
		log: filepath.Join(t.TempDir(), "access.log")}
	testenv.StartCaddy(t, fmt.Sprintf(`{
	local_certs
	skip_install_trust
	http_port %d
	https_port %d
	auto_https disable_redirects
	idlink {
		%s
		tenant acme {
			platform web {
				secret {env.IDLINK_E2E_NEW}
			}
			default_platform web
			cors {
				origins https://partner.example.com
			}
			cookie {
				domain .acme.test
				max_age 30d
			}
		}
	}
}

https://www.acme.test:%[2]d, https://app.acme.test:%[2]d {
	tls internal
	log {
		output file %[5]s
		format idlink
	}
	idlink acme {
		api /idlink
	}
	reverse_proxy %[4]s
}
`, testenv.FreePort(t), s.port, redis, s.up.Addr(), s.log))
	s.client = s.newClient(true)
	// The internal CA issues the certificates in the background: wait for
	// the first handshake.
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := s.newClient(false).Get(s.url("www", "/"))
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TLS answer from www.acme.test: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

// newClient is a client that dials every host at Caddy, with a cookie
// jar when jar is true.
func (s *cookieSite) newClient(jar bool) *http.Client {
	addr := fmt.Sprintf("127.0.0.1:%d", s.port)
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		// The internal CA is not in the system pool; SNI still names the host.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	if jar {
		j, err := cookiejar.New(nil)
		if err != nil {
			s.t.Fatal(err)
		}
		c.Jar = j
	}
	s.t.Cleanup(c.CloseIdleConnections)
	return c
}

func (s *cookieSite) url(host, path string) string {
	return fmt.Sprintf("https://%s.acme.test:%d%s", host, s.port, path)
}

func (s *cookieSite) origin(host string) string {
	return fmt.Sprintf("https://%s.acme.test:%d", host, s.port)
}

// do sends a request with c and answers the response and its body.
func (s *cookieSite) do(c *http.Client, method, url string, h ...[2]string) (*http.Response, string) {
	s.t.Helper()
	s.up.Reset()
	req, _ := http.NewRequest(method, url, nil)
	for _, kv := range h {
		req.Header.Add(kv[0], kv[1])
	}
	resp, err := c.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// upstream is what the upstream received last, failing if nothing did.
func (s *cookieSite) upstream() testenv.Recorded {
	s.t.Helper()
	rec, ok := s.up.Last()
	if !ok {
		s.t.Fatal("the request did not reach the upstream")
	}
	return rec
}

// login is POST /idlink/sessions on host from its own origin with the
// signed external id ext, through the site's jar (so the install cookie
// goes along and the session cookie comes back), failing unless it is 201.
// It answers the login and the response.
func (s *cookieSite) login(host, ext string) (startSessionResponse, *http.Response) {
	s.t.Helper()
	resp, body := s.do(s.client, "POST", s.url(host, "/idlink/sessions"), [2]string{"Origin", s.origin(host)},
		[2]string{"X-External-Id", ext}, [2]string{"X-External-Id-Signature", sign(e2eNew, ext)})
	if resp.StatusCode != 201 {
		s.t.Fatalf("POST /sessions on %s: %d %s", host, resp.StatusCode, body)
	}
	var login startSessionResponse
	decode(s.t, body, &login)
	return login, resp
}

// jarCookie is the value of the jar's cookie name for host ("" if none).
func (s *cookieSite) jarCookie(host, name string) string {
	u, _ := url.Parse(s.url(host, "/"))
	for _, c := range s.client.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

func decode(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
}

// TestCookiesAcrossSubdomains: an install made on www is the same user on
// app through the parent-domain cookie, as is the session a login on app
// starts; the cookies never reach the upstream (the app's own do); a
// header beats its cookie and a disagreeing pair is identity_mismatch; a
// cookie names only a known install; a cookie-borne POST from a foreign
// origin, or without any proof of its origin, is refused; logout clears
// the cookies.
func TestCookiesAcrossSubdomains(t *testing.T) {
	s := startCookieSite(t)
	const installCookie, sessionCookie = "__Secure-idlink-install", "__Secure-idlink-session"

	// POST /installs on www sets the install cookie on the parent domain.
	resp, body := s.do(s.client, "POST", s.url("www", "/idlink/installs"), [2]string{"Origin", s.origin("www")})
	if resp.StatusCode != 201 {
		t.Fatalf("POST /installs: %d %s", resp.StatusCode, body)
	}
	var inst struct {
		InstallID string `json:"install_id"`
		UserID    string `json:"user_id"`
	}
	decode(t, body, &inst)
	sc := resp.Header.Get("Set-Cookie")
	for _, want := range []string{installCookie + "=" + inst.InstallID, "Domain=acme.test", "Path=/", "Max-Age=2592000",
		"HttpOnly", "Secure", "SameSite=Lax"} {
		if !strings.Contains(sc, want) {
			t.Fatalf("Set-Cookie %q lacks %q", sc, want)
		}
	}
	if got := s.jarCookie("app", installCookie); got != inst.InstallID {
		t.Fatalf("the jar does not send the install cookie to app: %q", got)
	}

	// A page on app: the same user, the cookie removed, the app's own
	// cookies kept.
	resp, body = s.do(s.client, "GET", s.url("app", "/dashboard"), [2]string{"Cookie", "theme=dark; cart=42"})
	if resp.StatusCode != 200 {
		t.Fatalf("GET app: %d %s", resp.StatusCode, body)
	}
	rec := s.upstream()
	if rec.Header.Get("X-Platform-User-Id") != inst.UserID || rec.Header.Get("X-Identity-Source") != "install" ||
		rec.Header.Get("X-Install-Id") != inst.InstallID {
		t.Fatalf("upstream identity %v, want install %s of %s", rec.Header, inst.InstallID, inst.UserID)
	}
	cookies := strings.Join(rec.Header.Values("Cookie"), "; ")
	if strings.Contains(cookies, "idlink") || strings.Contains(cookies, inst.InstallID) ||
		!strings.Contains(cookies, "theme=dark") || !strings.Contains(cookies, "cart=42") {
		t.Fatalf("upstream Cookie %q: want the app's cookies only", cookies)
	}

	// Login on app, with the install from its cookie: the session cookie
	// follows to www.
	ext := "alice"
	login, resp := s.login("app", ext)
	if got := s.jarCookie("www", sessionCookie); got != login.SessionID {
		t.Fatalf("session cookie for www %q, want %s (Set-Cookie %v)", got, login.SessionID, resp.Header.Values("Set-Cookie"))
	}
	s.do(s.client, "GET", s.url("www", "/pricing"))
	rec = s.upstream()
	if rec.Header.Get("X-Platform-User-Id") != login.UserID || rec.Header.Get("X-Identity-Source") != "session" ||
		rec.Header.Get("X-Install-Id") != inst.InstallID || rec.Header.Get("X-External-Id") != ext {
		t.Fatalf("www after login: upstream %v, want session of %s", rec.Header, login.UserID)
	}

	// Another install (no jar): its header beside our cookie disagrees.
	_, body = s.do(s.newClient(false), "POST", s.url("www", "/idlink/installs"))
	var other struct {
		InstallID string `json:"install_id"`
	}
	decode(t, body, &other)
	resp, body = s.do(s.client, "GET", s.url("app", "/"), [2]string{"X-Install-Id", other.InstallID})
	if resp.StatusCode != 401 || !strings.Contains(body, "identity_mismatch") {
		t.Fatalf("header and cookie disagreeing: %d %s", resp.StatusCode, body)
	}
	// The header wins: a POST carried by X-Session-Id (equal to the
	// cookie) needs no origin proof beyond the header, which a foreign
	// page cannot send without a preflight; the same POST carried by the
	// cookie alone from a foreign origin is refused before the upstream.
	resp, body = s.do(s.client, "POST", s.url("app", "/orders"), [2]string{"X-Session-Id", login.SessionID})
	if resp.StatusCode != 200 || s.upstream().Header.Get("X-Platform-User-Id") != login.UserID {
		t.Fatalf("POST with the session header: %d %s", resp.StatusCode, body)
	}
	// A sibling subdomain is a foreign origin too unless cors lists it.
	for _, origin := range []string{"https://evil.example", "https://blog.acme.test", s.origin("www"), "null", ""} {
		resp, body = s.do(s.client, "POST", s.url("app", "/orders"), [2]string{"Origin", origin})
		if resp.StatusCode != 403 || !strings.Contains(body, "csrf_refused") {
			t.Fatalf("cookie POST from origin %q: %d %s", origin, resp.StatusCode, body)
		}
		if _, reached := s.up.Last(); reached {
			t.Fatalf("the refused POST from %q reached the upstream", origin)
		}
	}
	for _, proof := range [][2]string{{"Origin", s.origin("app")},
		{"Origin", "https://partner.example.com"}, {"X-Requested-With", "XMLHttpRequest"}} {
		resp, body = s.do(s.client, "POST", s.url("app", "/orders"), proof)
		if resp.StatusCode != 200 || s.upstream().Header.Get("X-Platform-User-Id") != login.UserID {
			t.Fatalf("cookie POST with %v: %d %s", proof, resp.StatusCode, body)
		}
	}
	// The API's state changes are guarded the same way.
	resp, body = s.do(s.client, "DELETE", s.url("app", "/idlink/sessions/current"), [2]string{"Origin", "https://evil.example"})
	if resp.StatusCode != 403 || !strings.Contains(body, "csrf_refused") {
		t.Fatalf("cross-site logout: %d %s", resp.StatusCode, body)
	}
	resp, body = s.do(s.client, "POST", s.url("www", "/idlink/installs"), [2]string{"Origin", "https://evil.example"})
	if resp.StatusCode != 403 || resp.Header.Get("Set-Cookie") != "" {
		t.Fatalf("POST /installs from a foreign origin: %d %s %v", resp.StatusCode, body, resp.Header)
	}

	// A cookie is a bearer credential: an id nobody issued is refused, and
	// a second copy (tossed by a sibling on a narrower domain) is ambiguous.
	bare := s.newClient(false)
	resp, body = s.do(bare, "GET", s.url("app", "/"), [2]string{"Cookie", installCookie + "=inst_forged"})
	if resp.StatusCode != 401 {
		t.Fatalf("forged install cookie: %d %s", resp.StatusCode, body)
	}
	resp, body = s.do(bare, "GET", s.url("app", "/"),
		[2]string{"Cookie", installCookie + "=" + inst.InstallID + "; " + installCookie + "=" + other.InstallID})
	if resp.StatusCode != 400 {
		t.Fatalf("two install cookies: %d %s", resp.StatusCode, body)
	}

	// Logout (relying on the cookie, from the site itself) ends the
	// session and clears both cookies.
	resp, body = s.do(s.client, "DELETE", s.url("app", "/idlink/sessions/current"), [2]string{"Origin", s.origin("app")})
	if resp.StatusCode != 200 {
		t.Fatalf("logout: %d %s", resp.StatusCode, body)
	}
	for _, sc := range resp.Header.Values("Set-Cookie") {
		if !strings.Contains(sc, "Max-Age=0") || !strings.Contains(sc, "Domain=acme.test") {
			t.Fatalf("logout Set-Cookie %q: want Max-Age=0 on the parent domain", sc)
		}
	}
	if s.jarCookie("www", sessionCookie) != "" || s.jarCookie("www", installCookie) != "" {
		t.Fatal("the cookies outlived the logout")
	}
	s.do(s.client, "GET", s.url("www", "/"))
	if rec = s.upstream(); rec.Header.Get("X-Identity-Source") != "anonymous" {
		t.Fatalf("after logout: %v", rec.Header)
	}
	// The ended session's id, replayed as a cookie, is refused.
	resp, body = s.do(bare, "GET", s.url("app", "/"), [2]string{"Cookie", sessionCookie + "=" + login.SessionID})
	if resp.StatusCode != 401 {
		t.Fatalf("replayed session cookie: %d %s", resp.StatusCode, body)
	}

	// The access log holds the Cookie and Set-Cookie headers, redacted.
	log := readAccessLog(t, s.log, 20)
	if strings.Contains(log, login.SessionID) || strings.Contains(log, inst.InstallID) ||
		!strings.Contains(log, `"Cookie":"REDACTED"`) || !strings.Contains(log, `"Set-Cookie":"REDACTED"`) {
		t.Fatalf("access log: session id logged or cookies not redacted:\n%s", log)
	}
}

// TestCookieOfEndedSessionCleared: a browser whose session cookie names an
// ended session (evicted by a login elsewhere, revoked, ended by another
// client) gets 401 session_ended once, with the session cookie cleared (the
// page cannot clear an HttpOnly cookie itself), and its next request goes
// on the install cookie alone instead of being refused on every page of
// the site forever. The install cookie is kept.
func TestCookieOfEndedSessionCleared(t *testing.T) {
	s := startCookieSite(t)
	const installCookie, sessionCookie = "__Secure-idlink-install", "__Secure-idlink-session"
	resp, body := s.do(s.client, "POST", s.url("www", "/idlink/installs"), [2]string{"Origin", s.origin("www")})
	if resp.StatusCode != 201 {
		t.Fatalf("POST /installs: %d %s", resp.StatusCode, body)
	}
	login, _ := s.login("www", "carol")
	install := s.jarCookie("app", installCookie)

	// Another client ends the session with its header: the browser's
	// cookie still names it.
	resp, body = s.do(s.newClient(false), "DELETE", s.url("app", "/idlink/sessions/current"), [2]string{"X-Session-Id", login.SessionID})
	if resp.StatusCode != 200 {
		t.Fatalf("logout by header: %d %s", resp.StatusCode, body)
	}
	if s.jarCookie("app", sessionCookie) != login.SessionID {
		t.Fatal("the browser's session cookie went away with another client's logout")
	}

	resp, body = s.do(s.client, "GET", s.url("app", "/dashboard"))
	if resp.StatusCode != 401 || !strings.Contains(body, "session_ended") {
		t.Fatalf("ended session cookie: %d %s, want 401 session_ended", resp.StatusCode, body)
	}
	if _, reached := s.up.Last(); reached {
		t.Fatal("the refused request reached the upstream")
	}
	scs := resp.Header.Values("Set-Cookie")
	if len(scs) != 1 || !strings.HasPrefix(scs[0], sessionCookie+"=;") || !strings.Contains(scs[0], "Max-Age=0") ||
		!strings.Contains(scs[0], "Domain=acme.test") {
		t.Fatalf("Set-Cookie %q: want only the session cookie cleared on the parent domain", scs)
	}
	if s.jarCookie("www", sessionCookie) != "" || s.jarCookie("www", installCookie) != install {
		t.Fatal("after the refusal the jar should hold the install cookie only")
	}
	resp, body = s.do(s.client, "GET", s.url("www", "/pricing"))
	if rec := s.upstream(); resp.StatusCode != 200 || rec.Header.Get("X-Identity-Source") != "install" ||
		rec.Header.Get("X-Install-Id") != install {
		t.Fatalf("the next request: %d %s %v, want the install's identity", resp.StatusCode, body, rec.Header)
	}

	// A session header naming an ended session clears no cookie: the
	// cookie did not carry it.
	resp, _ = s.do(s.newClient(false), "GET", s.url("app", "/"), [2]string{"X-Session-Id", login.SessionID})
	if resp.StatusCode != 401 || len(resp.Header.Values("Set-Cookie")) != 0 {
		t.Fatalf("ended session header: %d, Set-Cookie %v: want 401 and no cookie change", resp.StatusCode, resp.Header.Values("Set-Cookie"))
	}
}
