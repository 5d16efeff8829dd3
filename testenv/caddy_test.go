package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestCaddyInProcess must not run in parallel with other tests that start an
// in-process Caddy.
func TestCaddyInProcess(t *testing.T) {
	port := FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	c := StartCaddy(t, fmt.Sprintf(`{
	auto_https off
}

:%d {
	respond "hello from caddy" 200
}
`, port))

	if code, body := get(t, base+"/"); code != 200 || body != "hello from caddy" {
		t.Fatalf("GET / = %d %q", code, body)
	}

	u := StartUpstream(t)
	c.Reload(t, fmt.Sprintf(`{
	auto_https off
}

:%d {
	reverse_proxy %s {
		header_up X-Through caddy
	}
}
`, port, u.Addr()))
	code, body := get(t, base+"/proxied?q=1")
	if code != 200 {
		t.Fatalf("GET /proxied = %d %q", code, body)
	}
	last, ok := u.Last()
	if !ok || last.Path != "/proxied" || last.Query != "q=1" || last.Header.Get("X-Through") != "caddy" {
		t.Fatalf("upstream recorded %+v, %v", last, ok)
	}
	var echoed http.Header
	if err := json.Unmarshal([]byte(body), &echoed); err != nil || echoed.Get("X-Through") != "caddy" {
		t.Fatalf("body through Caddy = %q (%v)", body, err)
	}
}

func TestAdaptCaddyfile(t *testing.T) {
	cfg, listen, err := adaptCaddyfile(":8123 {\n\trespond ok\n}\n\nhttp://127.0.0.2:8124 {\n\trespond ok\n}\n", "/data")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	admin, _ := m["admin"].(map[string]any)
	if admin["disabled"] != true || admin["config"].(map[string]any)["persist"] != false {
		t.Fatalf("admin = %v, want disabled and not persisted", m["admin"])
	}
	if st, _ := m["storage"].(map[string]any); st["module"] != "file_system" || st["root"] != "/data" {
		t.Fatalf("storage = %v", m["storage"])
	}
	var dials []string
	for _, l := range listen {
		dials = append(dials, l.dial)
	}
	got := strings.Join(dials, " ")
	if !strings.Contains(got, "127.0.0.1:8123") || !strings.Contains(got, "127.0.0.1:8124") {
		t.Fatalf("listen addresses = %v", listen)
	}

	// An explicit admin option and storage are kept.
	cfg, _, err = adaptCaddyfile("{\n\tadmin 127.0.0.1:2999\n\tstorage file_system /elsewhere\n}\n\n:8123 {\n\trespond ok\n}\n", "/data")
	if err != nil {
		t.Fatal(err)
	}
	m = nil
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	admin, _ = m["admin"].(map[string]any)
	if admin["disabled"] == true || admin["listen"] != "127.0.0.1:2999" || admin["config"].(map[string]any)["persist"] != false {
		t.Fatalf("admin = %v, want the configured listener, not persisted", m["admin"])
	}
	if st, _ := m["storage"].(map[string]any); st["root"] != "/elsewhere" {
		t.Fatalf("storage = %v", m["storage"])
	}

	if _, _, err := adaptCaddyfile(":8123 {\n\tno_such_directive\n}\n", "/data"); err == nil {
		t.Fatal("adapting an unknown directive succeeded")
	}
}

// TestCaddyProcess runs two Caddy processes of idlink's own binary. It needs
// ./cmd/caddy, which may not exist yet.
func TestCaddyProcess(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "caddy", "main.go")); err != nil {
		t.Skipf("no cmd/caddy/main.go yet: %v", err)
	}
	t.Parallel()
	bin := BuildCaddy(t)
	if again := BuildCaddy(t); again != bin {
		t.Fatalf("BuildCaddy built twice: %s and %s", bin, again)
	}

	var procs []*Process
	var urls []string
	for i := range 2 {
		port := FreePort(t)
		url := fmt.Sprintf("http://127.0.0.1:%d", port)
		p := StartCaddyProcess(t, fmt.Sprintf(`{
	auto_https off
}

:%d {
	respond "instance %d" 200
}
`, port, i), url+"/")
		procs = append(procs, p)
		urls = append(urls, url)
	}
	for i, url := range urls {
		if code, body := get(t, url+"/"); code != 200 || body != fmt.Sprintf("instance %d", i) {
			t.Fatalf("GET %s = %d %q", url, code, body)
		}
	}
	procs[0].Stop()
	procs[0].Stop() // stopping twice is harmless
	if _, err := http.Get(urls[0] + "/"); err == nil {
		t.Fatalf("%s still answers after Stop", urls[0])
	}
	if code, _ := get(t, urls[1]+"/"); code != 200 {
		t.Fatalf("the second instance stopped with the first")
	}
	if !strings.Contains(procs[1].Logs(), "serving initial configuration") {
		t.Errorf("Logs() of a running Caddy:\n%s", procs[1].Logs())
	}
}

// TestCaddyReloadFirstRequest reloads the same listener again and again and
// checks that the first request after each Reload is answered by the new
// config: Reload returns only when no old socket can still take (and then
// reset) a new connection.
func TestCaddyReloadFirstRequest(t *testing.T) {
	port := FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	site := func(i int) string {
		return fmt.Sprintf("{\n\tauto_https off\n}\n\n:%d {\n\trespond \"config %d\" 200\n}\n", port, i)
	}
	c := StartCaddy(t, site(0))
	for i := 1; i <= 40; i++ {
		c.Reload(t, site(i))
		if code, body := get(t, base+"/"); code != 200 || body != fmt.Sprintf("config %d", i) {
			t.Fatalf("reload %d: GET / = %d %q", i, code, body)
		}
	}
}
