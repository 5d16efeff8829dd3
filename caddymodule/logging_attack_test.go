package caddymodule

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

	"github.com/idlink/idlink/testenv"
)

// Attack tests of what reaches Caddy's access log (issue 11, item 4).

// loggedSite runs a site of tenant acme (contact-token issuance, the API
// mounted by the handler) whose access log is written to a file with the
// given log format, and returns its base URL and the log path.
func loggedSite(t *testing.T, format string) (base, logPath string) {
	t.Helper()
	t.Setenv("IDLINK_LOG_SECRET", testSecret)
	t.Setenv("IDLINK_LOG_SIGN_KEY", newTestKey(t, "own-1", "ES256").writePEM(t, true))
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	logPath = filepath.Join(t.TempDir(), "access.log")
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		redis %s
		tenant acme {
			platform ios {
				secret {env.IDLINK_LOG_SECRET}
				mode enforce
			}
			default_platform ios
			contact_token {
				sign_key own-1 {env.IDLINK_LOG_SIGN_KEY}
			}
			sso {
				token_info_url http://127.0.0.1:1/tokeninfo
				audience sdk
			}
			api_key %s user.link user.read
		}
	}
}

http://127.0.0.1:%d {
	log {
		output file %s
		%s
	}
	idlink acme {
		api /idlink
	}
	reverse_proxy %s
}
`, testRedisURL(t), sha256Hex(linkKeyBoth), port, logPath, format, up.Addr()))
	return fmt.Sprintf("http://127.0.0.1:%d", port), logPath
}

// sendEveryCredential sends every credential idlink reads, on the handler
// and on the API, and returns the secret values it sent.
func sendEveryCredential(t *testing.T, base string) []string {
	t.Helper()
	do := func(method, path string, hdrs ...[2]string) *http.Response {
		req, _ := http.NewRequest(method, base+path, nil)
		for _, h := range hdrs {
			req.Header.Add(h[0], h[1])
		}
		req.Header.Set("User-Agent", "idlink-log-test-agent")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	extSig := sign(testSecret, "alice")
	emailSig := boundSig(testSecret, "email", "alice", "alice@example.com")
	phoneSig := boundSig(testSecret, "phone", "alice", "+3212345678")
	resp := do(http.MethodPost, "/idlink/sessions",
		[2]string{"X-External-Id", "alice"}, [2]string{"X-External-Id-Signature", extSig},
		[2]string{"X-User-Email", "alice@example.com"}, [2]string{"X-User-Email-Signature", emailSig},
		[2]string{"X-User-Phone", "+3212345678"}, [2]string{"X-User-Phone-Signature", phoneSig})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var login struct {
		SessionID    string `json:"session_id"`
		ContactToken string `json:"contact_token"`
	}
	if err := json.Unmarshal(body, &login); err != nil || login.SessionID == "" || login.ContactToken == "" {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	const ssoToken = "opaque-sso-token-for-the-log-test"
	for _, r := range []struct {
		method, path string
		hdrs         [][2]string
	}{
		{http.MethodGet, "/app", [][2]string{{"X-External-Id", "alice"}, {"X-External-Id-Signature", extSig},
			{"X-User-Email", "alice@example.com"}, {"X-User-Email-Signature", emailSig}, {"X-User-Phone-Signature", phoneSig}}},
		{http.MethodGet, "/app", [][2]string{{"X-Session-Id", login.SessionID}}},
		{http.MethodGet, "/app", [][2]string{{"Authorization", "Bearer " + login.ContactToken}}},
		{http.MethodGet, "/app", [][2]string{{"X-Contact-Token", login.ContactToken}}},
		{http.MethodGet, "/app", [][2]string{{"X-Sso-Token", ssoToken}}},
		{http.MethodPost, "/idlink/contact-token", [][2]string{{"X-Session-Id", login.SessionID}}},
		{http.MethodGet, "/idlink/users/u_nobody", [][2]string{{"X-Api-Key", linkKeyBoth}}},
		{http.MethodGet, "/idlink/users/u_nobody", [][2]string{{"Authorization", "Bearer " + linkKeyBoth}}},
		{http.MethodDelete, "/idlink/sessions/current", [][2]string{{"X-Session-Id", login.SessionID}}},
	} {
		resp := do(r.method, r.path, r.hdrs...)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return []string{extSig, emailSig, phoneSig, login.SessionID, login.ContactToken, ssoToken, linkKeyBoth}
}

// readAccessLog waits for n lines in the access log and returns it.
func readAccessLog(t *testing.T, path string, n int) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Count(string(b), "\n") >= n || time.Now().After(deadline) {
			return string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAttackCredentialsNotInAccessLog: with `format idlink`, the one line
// the README and Caddyfile.example show, no credential value reaches the
// access log; the headers are there, redacted, and the rest of the request
// is logged as usual.
func TestAttackCredentialsNotInAccessLog(t *testing.T) {
	base, path := loggedSite(t, "format idlink")
	secrets := sendEveryCredential(t, base)
	log := readAccessLog(t, path, 10)
	if !strings.Contains(log, "idlink-log-test-agent") || !strings.Contains(log, "REDACTED") {
		t.Fatalf("the access log does not hold the logged requests:\n%s", log)
	}
	for _, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("a credential reached the access log: %.12s…", s)
		}
	}
	for _, h := range []string{"X-External-Id-Signature", "X-User-Email-Signature", "X-User-Phone-Signature",
		"X-Contact-Token", "X-Sso-Token", "X-Session-Id", "X-Api-Key"} {
		if !strings.Contains(log, `"`+h+`":"REDACTED"`) && !strings.Contains(log, `"`+h+`":["REDACTED"]`) {
			t.Errorf("%s is not logged as REDACTED", h)
		}
	}
}

// TestPlainLogShowsCredentials: what the README warns about. A plain log
// writes the credential headers as sent (Caddy redacts only Cookie,
// Authorization and Proxy-Authorization), which also proves the test above
// can see a leak.
func TestPlainLogShowsCredentials(t *testing.T) {
	base, path := loggedSite(t, "format json")
	secrets := sendEveryCredential(t, base)
	log := readAccessLog(t, path, 10)
	for _, s := range []string{secrets[0], secrets[3], secrets[5], linkKeyBoth} {
		if !strings.Contains(log, s) {
			t.Fatalf("a plain log no longer shows %.12s…: update the README", s)
		}
	}
}
