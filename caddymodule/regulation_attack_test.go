package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// Regulation of failed verifications, tried as an attacker would: guessing
// signatures and session ids from one address, spreading the guesses over
// two instances, hiding behind a forged X-Forwarded-For, and going on with
// a stolen session. Two Caddy processes of the built binary on one Redis.

// regulationCaddyfile is one instance: tenant acme regulated (3 failures a
// minute, then a 2 s ban), a webhook to hook, and 127.0.0.1 trusted as a
// proxy so that the tests speak for several clients with X-Forwarded-For.
func regulationCaddyfile(redisURL string, port int, hook string, trusted bool) string {
	proxies := ""
	if trusted {
		proxies = `servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}`
	}
	return fmt.Sprintf(`{
	%s
	idlink {
		redis %s
		tenant acme {
			platform ios {
				secret {env.IDLINK_E2E_NEW}
			}
			platform web {
				secret {env.IDLINK_E2E_NEW}
				mode report
			}
			default_platform ios
			sessions {
				max 3
			}
			regulation {
				max_failures 3
				window 1m
				ban 2s
			}
			webhook %s {
				secret 0123456789abcdef0123456789abcdef
				poll_interval 50ms
			}
		}
	}
}

http://127.0.0.1:%d {
	handle_path /idlink/* {
		idlink_api acme
	}
	route /app {
		idlink acme
		respond "{idlink.user_id} {idlink.source}" 200
	}
}
`, proxies, redisURL, hook, port)
}

type regClient struct {
	t     *testing.T
	bases []string
}

// do sends a request from client ip (X-Forwarded-For) to instance i.
func (c *regClient) do(i int, method, path, ip string, headers ...[2]string) (*http.Response, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.bases[i]+path, nil)
	if ip != "" {
		req.Header.Set("X-Forwarded-For", ip)
	}
	for _, kv := range headers {
		req.Header.Set(kv[0], kv[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// hookEvents records the session.ended events a webhook receives.
type hookEvents struct {
	mu    sync.Mutex
	ended map[string]string // session id → reason
}

func (h *hookEvents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var e struct {
		Type string
		Data struct {
			SessionID string `json:"session_id"`
			Reason    string
		}
	}
	body, _ := io.ReadAll(r.Body)
	if json.Unmarshal(body, &e) == nil && e.Type == "session.ended" {
		h.mu.Lock()
		h.ended[e.Data.SessionID] = e.Data.Reason
		h.mu.Unlock()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookEvents) reason(sid string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ended[sid]
}

func startRegulated(t *testing.T, trusted bool) (*regClient, *hookEvents) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a shared Redis (two instances)")
	}
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	hook := &hookEvents{ended: map[string]string{}}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	c := &regClient{t: t}
	c.bases = startCaddyPair(t, func(port int) string { return regulationCaddyfile(r.URL(), port, srv.URL, trusted) }, "/app")
	return c, hook
}

func badSig(ext string) [][2]string {
	return [][2]string{{"X-External-Id", ext}, {"X-External-Id-Signature", strings.Repeat("0", 64)}}
}

func hdrs(kv [][2]string, more ...[2]string) [][2]string { return append(kv, more...) }

func TestAttackRegulationGuessingIsBanned(t *testing.T) {
	c, _ := startRegulated(t, true)
	const attacker, bystander = "192.0.2.66", "198.51.100.1"

	// Three guesses (two instances, one counter), then a ban on both.
	for i, inst := range []int{0, 1, 0} {
		if resp, body := c.do(inst, "GET", "/app", attacker, badSig("victim")...); resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d %s", i+1, resp.StatusCode, body)
		}
	}
	resp, body := c.do(1, "GET", "/app", attacker, badSig("victim")...)
	if resp.StatusCode != 429 || !strings.Contains(body, "too_many_failures") || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("4th guess: %d %s Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// Banned everywhere, even with a valid credential, within a second
	// (the ban is announced); unknown session ids count too.
	deadline := time.Now().Add(time.Second)
	for {
		resp, _ := c.do(0, "GET", "/app", attacker, signed("alice", e2eNew)...)
		if resp.StatusCode == 429 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance 0 still serves the banned client: %d", resp.StatusCode)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Another client is not affected.
	if resp, body := c.do(0, "GET", "/app", bystander, signed("alice", e2eNew)...); resp.StatusCode != 200 {
		t.Fatalf("bystander: %d %s", resp.StatusCode, body)
	}
	// Report mode observes: failures there are not refusals and not counted.
	for range 5 {
		if resp, body := c.do(0, "GET", "/app", bystander, hdrs(badSig("alice"), [2]string{"X-Platform", "web"})...); resp.StatusCode != 200 {
			t.Fatalf("report mode: %d %s", resp.StatusCode, body)
		}
	}
	// Guessed session ids and installs count like signatures.
	for i := range 3 {
		if resp, _ := c.do(i%2, "GET", "/app", bystander, [2]string{"X-Session-Id", "s_00AAAAAAAAAAAAAAAAAAAAAAAAAA"}); resp.StatusCode != 401 {
			t.Fatalf("session guess %d: %d", i, resp.StatusCode)
		}
	}
	if resp, _ := c.do(0, "GET", "/app", bystander, [2]string{"X-Install-Id", "i_00AAAAAAAAAAAAAAAAAAAAAAAAAA"}); resp.StatusCode != 429 {
		t.Fatalf("4th id guess: %d, want 429", resp.StatusCode)
	}
	// The ban ends.
	time.Sleep(2100 * time.Millisecond)
	if resp, body := c.do(1, "GET", "/app", attacker, signed("alice", e2eNew)...); resp.StatusCode != 200 {
		t.Fatalf("after the ban: %d %s", resp.StatusCode, body)
	}
}

// Logins through the API are regulated like requests.
func TestAttackRegulationLoginGuessing(t *testing.T) {
	c, _ := startRegulated(t, true)
	const attacker = "192.0.2.77"
	for i := range 3 {
		if resp, body := c.do(i%2, "POST", "/idlink/sessions", attacker, badSig("victim")...); resp.StatusCode != 401 {
			t.Fatalf("login guess %d: %d %s", i+1, resp.StatusCode, body)
		}
	}
	if resp, body := c.do(0, "POST", "/idlink/sessions", attacker, signed("victim", e2eNew)...); resp.StatusCode != 429 && resp.StatusCode != 201 {
		t.Fatalf("after 3 guesses: %d %s", resp.StatusCode, body)
	}
	if resp, body := c.do(1, "POST", "/idlink/sessions", attacker, badSig("victim")...); resp.StatusCode != 429 {
		t.Fatalf("4th login guess: %d %s, want 429", resp.StatusCode, body)
	}
}

// A session whose requests keep failing is ended (too_many_failures), on
// every instance, and the app hears it from its webhook.
func TestAttackRegulationEndsTheSession(t *testing.T) {
	c, hook := startRegulated(t, true)
	resp, body := c.do(0, "POST", "/idlink/sessions", "198.51.100.20", signed("carol", e2eNew)...)
	if resp.StatusCode != 201 {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	var login struct {
		SessionID string `json:"session_id"`
	}
	json.Unmarshal([]byte(body), &login)
	sess := [2]string{"X-Session-Id", login.SessionID}
	if resp, body := c.do(1, "GET", "/app", "198.51.100.20", sess); resp.StatusCode != 200 {
		t.Fatalf("session on instance 1: %d %s", resp.StatusCode, body)
	}
	// A thief with the session tries other identities from several
	// addresses (no address reaches the limit; the session does).
	for i := range 4 {
		ip := fmt.Sprintf("203.0.113.%d", 10+i)
		if resp, _ := c.do(i%2, "GET", "/app", ip, hdrs(badSig("mallory"), sess)...); resp.StatusCode != 401 {
			t.Fatalf("failure %d with the session: %d", i+1, resp.StatusCode)
		}
	}
	deadline := time.Now().Add(time.Second)
	for {
		resp, body := c.do(1, "GET", "/app", "198.51.100.20", sess)
		if resp.StatusCode == 401 && strings.Contains(body, `"reason":"too_many_failures"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session still works on instance 1 after 1s: %d %s", resp.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for hook.reason(login.SessionID) != "too_many_failures" {
		if time.Now().After(deadline) {
			t.Fatalf("webhook never heard session.ended too_many_failures (got %q)", hook.reason(login.SessionID))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Without trusted proxies, X-Forwarded-For is the client's own writing:
// it cannot spread one client's failures over many subjects.
func TestAttackRegulationForgedForwardedFor(t *testing.T) {
	c, _ := startRegulated(t, false)
	for i := range 3 {
		if resp, _ := c.do(i%2, "GET", "/app", fmt.Sprintf("10.9.8.%d", i), badSig("victim")...); resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d", i+1, resp.StatusCode)
		}
	}
	if resp, body := c.do(0, "GET", "/app", "10.9.8.200", badSig("victim")...); resp.StatusCode != 429 {
		t.Fatalf("4th guess with another forged X-Forwarded-For: %d %s, want 429", resp.StatusCode, body)
	}
}
