package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/testenv"
)

// The attack tests of "anyone can grow Redis forever": POST /installs
// needs no credential, and a report-mode platform resolves any external id
// it is sent. Each test plays that client against a real Caddy with a
// recording upstream and a real Redis, then reads what Redis kept.

const (
	expiryIOSSecret = "expiry-ios-secret-0123456789"
	expiryWebSecret = "expiry-web-secret-0123456789"
	expiryAPIKey    = "expiry-api-key-0123456789"
)

type expiryEnv struct {
	*bindEnv
	rdb *redis.Client
}

// startExpiryEnv runs Caddy with tenant acme (ios enforced, web in report
// mode, an API key with user.link and user.read) and tenantExtra.
func startExpiryEnv(t *testing.T, tenantExtra string) *expiryEnv {
	t.Helper()
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("no redis-server")
	}
	t.Setenv("IDLINK_EXPIRY_IOS", expiryIOSSecret)
	t.Setenv("IDLINK_EXPIRY_WEB", expiryWebSecret)
	digest := sha256.Sum256([]byte(expiryAPIKey))
	up := testenv.StartUpstream(t)
	port := testenv.FreePort(t)
	testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		redis %s
		tenant acme {
			platform ios {
				secret {env.IDLINK_EXPIRY_IOS}
				mode enforce
			}
			platform web {
				secret {env.IDLINK_EXPIRY_WEB}
				mode report
			}
			default_platform ios
			api_key %s user.link user.read
			%s
		}
	}
}

http://127.0.0.1:%d {
	idlink acme {
		api /idlink
	}
	reverse_proxy %s
}
`, r.URL(), hex.EncodeToString(digest[:]), tenantExtra, port, up.Addr()))
	return &expiryEnv{bindEnv: &bindEnv{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), up: up}, rdb: r.Client()}
}

// install is POST /installs: the install id and its anonymous user.
func (e *expiryEnv) install() (string, string) {
	e.t.Helper()
	status, body, _ := e.do("POST", "/idlink/installs", "")
	var m map[string]any
	if status != http.StatusCreated || json.Unmarshal([]byte(body), &m) != nil {
		e.t.Fatalf("POST /installs: %d %s", status, body)
	}
	return str(m, "install_id"), str(m, "user_id")
}

// link links an install to an external id with the API key.
func (e *expiryEnv) link(installID, externalID string) map[string]any {
	e.t.Helper()
	status, body, _ := e.do("POST", "/idlink/users/"+installID+"/link", `{"external_id":"`+externalID+`"}`,
		"X-Api-Key", expiryAPIKey)
	var m map[string]any
	if status != http.StatusOK || json.Unmarshal([]byte(body), &m) != nil {
		e.t.Fatalf("link %s to %s: %d %s", installID, externalID, status, body)
	}
	return m
}

// user is what the upstream was told of a request with these headers
// (status 200), or the status and body of its refusal.
func (e *expiryEnv) user(headers ...string) (userID string, status int, body string) {
	e.t.Helper()
	status, body, got := e.do("GET", "/app", "", headers...)
	if got == nil {
		return "", status, body
	}
	return got.Get("X-Platform-User-Id"), status, body
}

// keysNaming returns every key of Redis whose name contains one of ids
// (an install id, a user id, an external id), with its TTL: -1 for none.
func (e *expiryEnv) keysNaming(ids ...string) map[string]time.Duration {
	e.t.Helper()
	ctx := context.Background()
	out := map[string]time.Duration{}
	it := e.rdb.Scan(ctx, 0, "idl:*", 1000).Iterator()
	for it.Next(ctx) {
		key := it.Val()
		for _, id := range ids {
			if strings.Contains(key, id) {
				ttl, err := e.rdb.PTTL(ctx, key).Result()
				if err != nil {
					e.t.Fatal(err)
				}
				if ttl != -2 {
					out[key] = ttl
				}
				break
			}
		}
	}
	if err := it.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// expiresWithin fails unless every key has a TTL of at most max.
func expiresWithin(t *testing.T, what string, keys map[string]time.Duration, wantKeys int, max time.Duration) {
	t.Helper()
	if len(keys) != wantKeys {
		t.Fatalf("%s: %d keys %v, want %d", what, len(keys), keys, wantKeys)
	}
	for k, ttl := range keys {
		if ttl <= 0 || ttl > max {
			t.Errorf("%s: key %s has TTL %v, want at most %v: nothing ever removes it, so a client that repeats this grows Redis forever", what, k, ttl, max)
		}
	}
}

// Without any option, what an unauthenticated client can make expires:
// every key of an install made by POST /installs (the install, its
// anonymous user, which lists it),
// and the keys of a user made for an unsigned report-mode external id,
// after 30 days; a verified external id's user does not expire.
func TestAttackInstallsAndUnverifiedUsersExpireByDefault(t *testing.T) {
	e := startExpiryEnv(t, "")
	const month = 30 * 24 * time.Hour
	for range 10 {
		i, u := e.install()
		expiresWithin(t, "an install made by POST /installs", e.keysNaming(i, u), 2, month) // install, user (which lists it)
	}
	for n := range 10 {
		ext := fmt.Sprintf("made-up-%d", n)
		u, status, body := e.user("X-Platform", "web", "X-External-Id", ext)
		if status != http.StatusOK || u == "" {
			t.Fatalf("unsigned report-mode id: %d %s", status, body)
		}
		expiresWithin(t, "a user made for an unsigned report-mode external id", e.keysNaming(ext, u), 2, month)
	}
	u, status, body := e.user("X-External-Id", "real", "X-External-Id-Signature", sign(expiryIOSSecret, "real"))
	if status != http.StatusOK {
		t.Fatalf("signed id: %d %s", status, body)
	}
	for k, ttl := range e.keysNaming("real", u) {
		if ttl != -1 {
			t.Errorf("the user of a verified external id expires: %s has TTL %v", k, ttl)
		}
	}
}

// With install_ttl 2s: an install no one uses is gone after 2s, with its
// anonymous user; one in use lives on; a linked one never expires; a
// merged-away anonymous user is deleted at once; a user made for an
// unsigned id expires unless it is used (through the external id or an
// unverified session), and the next request with that id gets a new user;
// a verified id's user stays.
func TestAttackIdleInstallsAndUnverifiedUsersGo(t *testing.T) {
	e := startExpiryEnv(t, "install_ttl 2s")
	start := time.Now()
	idle, idleUser := e.install()
	used, usedUser := e.install()
	linked, _ := e.install()
	owner := str(e.link(linked, "anchor"), "user_id")
	merged, mergedUser := e.install()
	res := e.link(merged, "anchor")
	if str(res, "user_id") != owner || str(res, "merged_from") != mergedUser {
		t.Fatalf("link of a second install to anchor: %v, want user %s merged from %s", res, owner, mergedUser)
	}
	if left := e.keysNaming(mergedUser); len(left) != 0 {
		t.Fatalf("the merged-away anonymous user %s is still in Redis: %v", mergedUser, left)
	}
	for k, ttl := range e.keysNaming(linked, merged, owner) {
		if ttl != -1 {
			t.Errorf("a linked install or its user expires: %s has TTL %v", k, ttl)
		}
	}
	web := func(ext string) []string { return []string{"X-Platform", "web", "X-External-Id", ext} }
	drifter, _, _ := e.user(web("drifter")...)
	regular, _, _ := e.user(web("regular")...)
	sleeper := str(e.login(201, "", web("sleeper")...), "session_id")
	active := e.login(201, "", web("active")...)
	signedAnchor := []string{"X-External-Id", "anchor", "X-External-Id-Signature", sign(expiryIOSSecret, "anchor")}
	if u, status, body := e.user(signedAnchor...); u != owner {
		t.Fatalf("signed anchor: %q %d %s, want %s", u, status, body, owner)
	}

	// In use for 3s, a request every 200ms: each is renewed.
	for time.Since(start) < 3*time.Second {
		if u, status, body := e.user("X-Install-Id", used); u != usedUser {
			t.Fatalf("an install in use, %v after it was made: %q %d %s, want %s", time.Since(start), u, status, body, usedUser)
		}
		if u, status, body := e.user(web("regular")...); u != regular {
			t.Fatalf("an unsigned id in use, %v after its first request: %q %d %s, want %s", time.Since(start), u, status, body, regular)
		}
		if u, status, body := e.user("X-Session-Id", str(active, "session_id")); u != str(active, "user_id") {
			t.Fatalf("an unverified session in use, %v after its login: %q %d %s, want %s", time.Since(start), u, status, body, str(active, "user_id"))
		}
		time.Sleep(200 * time.Millisecond)
	}

	if u, status, body := e.user("X-Install-Id", idle); status != http.StatusUnauthorized || !strings.Contains(body, "unknown_install") {
		t.Errorf("an install unused for 3s with install_ttl 2s: %q %d %s, want 401 unknown_install", u, status, body)
	}
	if left := e.keysNaming(idle, idleUser); len(left) != 0 {
		t.Errorf("an install unused for 3s with install_ttl 2s left %v", left)
	}
	if u, status, body := e.user("X-Install-Id", linked); u != owner {
		t.Errorf("a linked install after 3s: %q %d %s, want %s", u, status, body, owner)
	}
	if u, status, body := e.user(signedAnchor...); u != owner {
		t.Errorf("a verified external id after 3s: %q %d %s, want %s", u, status, body, owner)
	}
	if left := e.keysNaming("drifter", drifter); len(left) != 0 {
		t.Errorf("the user of an unsigned id unused for 3s is still in Redis: %v", left)
	}
	if u, _, _ := e.user(web("drifter")...); u == "" || u == drifter {
		t.Errorf("an unsigned id unused for 3s: user %q, want a new one (its user %s expired)", u, drifter)
	}
	if u, status, body := e.user("X-Session-Id", sleeper); status != http.StatusUnauthorized || !strings.Contains(body, "session_ended") {
		t.Errorf("an unverified session whose user expired: %q %d %s, want 401 session_ended", u, status, body)
	}
}
