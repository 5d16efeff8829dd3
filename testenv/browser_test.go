package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// TestBrowserDemo runs the browser demo as README "Try it in a browser"
// starts it (./cmd/idlink-demo: Caddyfile.example and the demo backend; the
// embedded store, as the example ships) on free ports, and walks the page in
// headless Chromium (Debian's chromium) through the DevTools protocol: an
// install, a login through the demo backend's signature, the protected
// app's echo of the injected identity on www. and on app.demo.localhost
// (one identity through idlink's parent-domain cookies), a login elsewhere
// evicting this one, and the logout clearing both cookies. On failure it
// saves a screenshot of the page and says where.
func TestBrowserDemo(t *testing.T) {
	browser := chromiumPath(t)
	bin, err := buildBinary(modulePath+"/cmd/idlink-demo", "idlink-demo")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := FreePort(t)
	p := startCaddyBinary(t, "idlink-demo", bin, root, []string{
		fmt.Sprintf("IDLINK_DEMO_PORT=%d", port),
		fmt.Sprintf("IDLINK_EXAMPLE_PORT=%d", FreePort(t)),
		fmt.Sprintf("IDLINK_ECHO_PORT=%d", FreePort(t)),
		fmt.Sprintf("IDLINK_DEMO_BACKEND_PORT=%d", FreePort(t)),
		"IDLINK_DEMO_SECRET=", // the demo makes one up
	}, fmt.Sprintf("http://127.0.0.1:%d/", port))
	www := fmt.Sprintf("http://www.demo.localhost:%d", port)
	app := fmt.Sprintf("http://app.demo.localhost:%d", port)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		// *.localhost is loopback for Chromium already; the rule says so
		// explicitly, so that no resolver is asked.
		chromedp.Flag("host-resolver-rules", "MAP *.demo.localhost 127.0.0.1"),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	defer func() {
		if t.Failed() {
			saveScreenshot(t, ctx)
			t.Logf("demo output:\n%s", p.Logs())
		}
	}()

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID(id)))
		if err != nil {
			t.Fatalf("reading #%s: %v", id, err)
		}
		return s
	}
	// click presses a button and waits until the element out shows
	// something, which must contain want.
	click := func(button, out, want string) string {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.getElementById(%q).textContent = ""`, out))); err != nil {
			t.Fatalf("clearing #%s: %v", out, err)
		}
		do("click "+button, chromedp.Click(chromedp.ID(button)))
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`document.getElementById(%q).textContent.length > 0`, out), chromedp.WithPollingTimeout(10*time.Second))); err != nil {
			t.Fatalf("after %s, #%s stays empty: %v", button, out, err)
		}
		got := text(out)
		if !strings.Contains(got, want) {
			t.Fatalf("after %s, #%s shows %q, want it to contain %q", button, out, got, want)
		}
		return got
	}
	callApp := func(wantStatus string) (user, source string) {
		t.Helper()
		click("call", "call-status", wantStatus)
		return text("user-id"), text("source")
	}
	cookies := func() map[string]*network.Cookie {
		t.Helper()
		res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{www, app}})
		if err != nil {
			t.Fatalf("reading cookies: %v", err)
		}
		m := map[string]*network.Cookie{}
		for _, c := range res.Cookies {
			m[c.Name] = c
		}
		return m
	}

	do("open "+www, chromedp.Navigate(www+"/"), chromedp.WaitVisible(chromedp.ID("install")))

	// 1. An install: anonymous, but a stable identity.
	click("install", "install-out", "201")
	if user, source := callApp("200"); !strings.HasPrefix(user, "u_") || source != "install" {
		t.Fatalf("with the install cookie the app saw user %q source %q, want an u_ id from the install", user, source)
	}
	c := cookies()["__Secure-idlink-install"]
	if c == nil || !c.HTTPOnly || !c.Secure || c.Domain != ".demo.localhost" {
		t.Fatalf("install cookie = %+v, want HttpOnly, Secure, Domain .demo.localhost", c)
	}

	// 2. A login: the backend signs alice, idlink verifies and links.
	click("login", "login-out", `"verified":true`)
	user, source := callApp("200")
	if !strings.HasPrefix(user, "u_") || source != "session" {
		t.Fatalf("after the login the app saw user %q source %q, want a session", user, source)
	}
	call := text("call-out")
	if !strings.Contains(call, "X-External-Id: alice") || !strings.Contains(call, "X-Identity-Verified: true") {
		t.Fatalf("the app's echo lacks the verified identity:\n%s", call)
	}

	// 3. The sibling subdomain: the same identity through the cookies.
	do("open "+app, chromedp.Navigate(app+"/"), chromedp.WaitVisible(chromedp.ID("call")))
	if u2, s2 := callApp("200"); u2 != user || s2 != "session" {
		t.Fatalf("on %s the app saw user %q (%s), want %q (session) as on %s", app, u2, s2, user, www)
	}

	// 4. A login elsewhere ends this browser's session (sessions { max 1 }).
	click("other", "other-out", `"evicted":["s_`)
	click("call", "call-status", "401")
	call = text("call-out")
	if !strings.Contains(call, `"reason":"evicted"`) {
		t.Fatalf("after the login elsewhere the app answered\n%s\nwant session_ended, reason evicted", call)
	}

	// 5. Log in again here, then log out: both cookies cleared, anonymous.
	click("login", "login-out", `"verified":true`)
	if u3, _ := callApp("200"); u3 != user {
		t.Fatalf("after logging in again the app saw %q, want %q", u3, user)
	}
	click("logout", "logout-out", "200")
	if len(cookies()) != 0 {
		t.Fatalf("after the logout the browser still holds %v", cookies())
	}
	if u4, s4 := callApp("200"); u4 != "(anonymous)" || s4 != "anonymous" {
		t.Fatalf("after the logout the app saw user %q source %q, want anonymous", u4, s4)
	}
}

// chromiumPath returns Chromium's path; without it the test is skipped,
// and fails in CI (CI=true), where .ci/run installs Debian's chromium.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if inCI() {
		t.Fatalf("chromium not found on PATH, and CI=true: .ci/run installs Debian's chromium")
	}
	t.Skip("chromium not found on PATH (Debian: apt-get install chromium)")
	return ""
}

// saveScreenshot writes the page as it is to $TMPDIR/idlink-<test>.png
// (kept after the test, unlike t.TempDir) and logs the path.
func saveScreenshot(t *testing.T, ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("no screenshot: %v", err)
		return
	}
	path := filepath.Join(os.TempDir(), "idlink-"+t.Name()+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Logf("no screenshot: %v", err)
		return
	}
	t.Logf("screenshot of the page: %s", path)
}
