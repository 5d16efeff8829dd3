package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// API keys of the link tests (their digests are in the Caddyfile).
const (
	linkKeyLink  = "lk_link_0123456789abcdefghijklmnop"
	linkKeyRead  = "lk_read_0123456789abcdefghijklmnop"
	linkKeyBoth  = "lk_both_0123456789abcdefghijklmnop"
	linkKeyOther = "lk_other_0123456789abcdefghijklmno"
	linkSecret   = "link-test-secret-0123456789"
)

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// linkCaddyfile is a site with the API under /idlink/* for tenant acme
// (and /other/* for tenant other, in its own handle block), and idlink
// acme in front of upstream.
func linkCaddyfile(redisURL string, port int, upstream string) string {
	redisLine := ""
	if redisURL != "" {
		redisLine = "redis " + redisURL
	}
	return fmt.Sprintf(`{
	idlink {
		%s
		redis_timeout 1s
		tenant acme {
			platform ios {
				secret %s
				mode enforce
			}
			default_platform ios
			api_key %s user.link
			api_key %s user.read
			api_key %s user.link user.read
		}
		tenant other {
			api_key %s user.link user.read
		}
	}
}

http://127.0.0.1:%d {
	handle /other/* {
		idlink other {
			api /other
		}
	}
	handle {
		idlink acme {
			api /idlink
		}
		reverse_proxy %s
	}
}
`, redisLine, linkSecret, sha256Hex(linkKeyLink), sha256Hex(linkKeyRead), sha256Hex(linkKeyBoth),
		sha256Hex(linkKeyOther), port, upstream)
}

// linkEnv is a running Caddy with the link Caddyfile.
type linkEnv struct {
	t        *testing.T
	base     string
	redis    redis.UniversalClient // nil on the embedded store
	redisURL string
	up       *testenv.Upstream
	client   *http.Client
}

func startLinkEnv(t *testing.T) *linkEnv {
	return startLinkEnvOn(t, testenv.UseDeployment(t, testenv.DeployStandalone))
}

// startLinkEnvOn is startLinkEnv on a given deployment (forEachDeployment).
func startLinkEnvOn(t *testing.T, d testenv.Deployment) *linkEnv {
	e := &linkEnv{t: t, up: testenv.StartUpstream(t)}
	e.redis, e.redisURL = d.Client, d.URL
	port := testenv.FreePort(t)
	e.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.StartCaddy(t, linkCaddyfile(e.redisURL, port, e.up.Addr()))
	e.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// tenant returns the running config's tenant, for test hooks.
func (e *linkEnv) tenant(name string) *Tenant {
	app, err := caddy.ActiveContext().App("idlink")
	if err != nil {
		e.t.Fatal(err)
	}
	return app.(*App).Tenants[name]
}

// do sends a request; headers are name, value pairs.
func (e *linkEnv) do(method, path string, body any, headers ...string) (int, map[string]any, http.Header) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			delete(req.Header, headers[i])
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &m); err != nil {
			e.t.Fatalf("%s %s: body %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, m, resp.Header
}

func (e *linkEnv) install(prefix string) (installID, userID string) {
	e.t.Helper()
	code, m, _ := e.do("POST", prefix+"/installs", nil)
	if code != http.StatusCreated {
		e.t.Fatalf("POST %s/installs = %d %v", prefix, code, m)
	}
	return m["install_id"].(string), m["user_id"].(string)
}

func (e *linkEnv) link(installID, ext string, headers ...string) (int, map[string]any) {
	e.t.Helper()
	if len(headers) == 0 {
		headers = []string{"Authorization", "Bearer " + linkKeyLink}
	}
	code, m, _ := e.do("POST", "/idlink/users/"+installID+"/link", map[string]string{"external_id": ext}, headers...)
	return code, m
}

// eventCounts counts the tenant's outbox entries by type.
func (e *linkEnv) eventCounts(tenant string) map[string]int {
	e.t.Helper()
	out := map[string]int{}
	if e.redis == nil {
		return out
	}
	k := store.NewKeys(tenant)
	for s := range store.Shards {
		for _, m := range e.redis.XRange(context.Background(), k.Events(s), "-", "+").Val() {
			out[m.Values["type"].(string)]++
		}
	}
	return out
}

func errCode(m map[string]any) string { s, _ := m["error"].(string); return s }

// TestLinkE2E walks SPEC.md's link outcomes table, the API key cases, bad
// bodies, GET /users, install identity in the handler and an interrupted
// link, end to end through Caddy against real Redis.
func TestLinkE2E(t *testing.T) {
	e := startLinkEnv(t)
	i1, a1 := e.install("/idlink")
	i2, a2 := e.install("/idlink")
	i3, a3 := e.install("/idlink")
	oi, _ := e.install("/other")
	if i1 == i2 || a1 == a2 || !strings.HasPrefix(i1, "i_") || !strings.HasPrefix(a1, "u_") {
		t.Fatalf("installs %s %s users %s %s", i1, i2, a1, a2)
	}

	t.Run("api keys", func(t *testing.T) {
		jwt := "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
		for _, c := range []struct {
			name    string
			headers []string
			status  int
			code    string
		}{
			{"no key", []string{"Authorization", ""}, 401, "invalid_api_key"},
			{"unknown key", []string{"Authorization", "Bearer nope"}, 401, "invalid_api_key"},
			{"contact token", []string{"Authorization", "Bearer " + jwt}, 401, "invalid_api_key"},
			{"basic auth", []string{"Authorization", "Basic " + linkKeyLink}, 401, "invalid_api_key"},
			{"another tenant's key", []string{"X-Api-Key", linkKeyOther}, 401, "invalid_api_key"},
			{"read-only key", []string{"Authorization", "Bearer " + linkKeyRead}, 403, "insufficient_scope"},
			{"X-Api-Key with user.link", []string{"X-Api-Key", linkKeyBoth}, 200, ""},
			{"Bearer with user.link", []string{"Authorization", "bearer " + linkKeyLink}, 200, ""},
		} {
			code, m := e.link(i3, "keyed", c.headers...)
			if code != c.status || errCode(m) != c.code {
				t.Errorf("%s: %d %v; want %d %s", c.name, code, m, c.status, c.code)
			}
		}
		// GET /users needs user.read.
		if code, m, _ := e.do("GET", "/idlink/users/"+a1, nil, "X-Api-Key", linkKeyLink); code != 403 || errCode(m) != "insufficient_scope" {
			t.Errorf("GET /users with a link-only key: %d %v", code, m)
		}
		if code, m, _ := e.do("GET", "/idlink/users/"+a1, nil, "Authorization", "Bearer "+jwt); code != 401 || errCode(m) != "invalid_api_key" {
			t.Errorf("GET /users with a token: %d %v", code, m)
		}
	})

	t.Run("outcomes", func(t *testing.T) {
		steps := []struct {
			name, install, ext string
			status             int
			want               map[string]any // nil fields: not checked; "new": a user none of a1..a3
			events             map[string]int
		}{
			{"install id unknown", "i_00" + strings.Repeat("A", 24), "alice", 404, map[string]any{"error": "install_not_found"}, nil},
			{"install id malformed", "not-an-install", "alice", 404, map[string]any{"error": "install_not_found"}, nil},
			{"another tenant's install", oi, "alice", 403, map[string]any{"error": "install_wrong_tenant"}, nil},
			{"new external id, anonymous install", i1, "alice", 200,
				map[string]any{"user_id": a1, "created": true}, map[string]int{"user.linked": 1}},
			{"same install, same external id", i1, "alice", 200,
				map[string]any{"user_id": a1, "created": true}, nil},
			{"external id already known", i2, "alice", 200,
				map[string]any{"user_id": a1, "created": false, "merged_from": a2}, map[string]int{"user.merged": 1}},
			{"same again after a merge", i2, "alice", 200,
				map[string]any{"user_id": a1, "created": false, "merged_from": a2}, nil},
			{"shared device: new external id", i2, "bob", 200,
				map[string]any{"user_id": "new", "created": true}, map[string]int{"user.created": 1, "user.linked": 1}},
			{"back to the known id", i2, "alice", 200,
				map[string]any{"user_id": a1, "created": false}, map[string]int{"user.linked": 1}},
		}
		for _, s := range steps {
			evBefore := e.eventCounts("acme")
			code, m := e.link(s.install, s.ext)
			if s.want["user_id"] == "new" {
				if u := m["user_id"]; u == a1 || u == a2 || u == a3 || u == nil {
					t.Fatalf("%s: user %v is not new", s.name, u)
				}
				s.want["user_id"] = m["user_id"]
			}
			if code != s.status {
				t.Fatalf("%s: %d %v", s.name, code, m)
			}
			for k, v := range s.want {
				if m[k] != v {
					t.Fatalf("%s: %s = %v, want %v (%v)", s.name, k, m[k], v, m)
				}
			}
			if _, has := m["merged_from"]; has && s.want["merged_from"] == nil {
				t.Fatalf("%s: unexpected merged_from %v", s.name, m)
			}
			if code == 200 && len(m) != len(s.want) {
				t.Fatalf("%s: extra fields in %v", s.name, m)
			}
			if e.redis != nil {
				after := e.eventCounts("acme")
				for _, typ := range []string{"user.created", "user.linked", "user.merged"} {
					if d := after[typ] - evBefore[typ]; d != s.events[typ] {
						t.Fatalf("%s: %d new %s events, want %d", s.name, d, typ, s.events[typ])
					}
				}
			}
		}
	})

	t.Run("bad bodies", func(t *testing.T) {
		big := `{"external_id":"` + strings.Repeat("a", 17<<10) + `"}`
		for _, c := range []struct {
			name   string
			body   string
			ctype  string
			status int
			code   string
		}{
			{"missing", `{}`, "", 400, "invalid_request"},
			{"null", `{"external_id":null}`, "", 400, "invalid_request"},
			{"empty", `{"external_id":""}`, "", 400, "invalid_request"},
			{"257 bytes", `{"external_id":"` + strings.Repeat("a", 257) + `"}`, "", 400, "invalid_request"},
			{"NUL", `{"external_id":"a\u0000b"}`, "", 400, "invalid_request"},
			{"newline", `{"external_id":"a\nb"}`, "", 400, "invalid_request"},
			{"DEL", `{"external_id":"a` + "\x7f" + `b"}`, "", 400, "invalid_request"},
			{"C1 control", `{"external_id":"a\u0085b"}`, "", 400, "invalid_request"},
			{"line separator", `{"external_id":"a\u2028b"}`, "", 400, "invalid_request"},
			{"number", `{"external_id":42}`, "", 400, "invalid_request"},
			{"array", `["alice"]`, "", 400, "invalid_request"},
			{"malformed", `{"external_id":"alice"`, "", 400, "invalid_request"},
			{"two values", `{"external_id":"a"}{"external_id":"b"}`, "", 400, "invalid_request"},
			{"stray closing brace", `{"external_id":"a"}}`, "", 400, "invalid_request"},
			{"duplicate key", `{"external_id":"a","external_id":"b"}`, "", 400, "invalid_request"},
			{"key in another case", `{"External_ID":"alice"}`, "", 400, "invalid_request"},
			{"invalid UTF-8", "{\"external_id\":\"a\xffb\"}", "", 400, "invalid_request"},
			{"empty body", ``, "", 400, "invalid_request"},
			{"over the limit", big, "", 413, "body_too_large"},
			{"text/plain", `{"external_id":"alice"}`, "text/plain", 415, "unsupported_media_type"},
			{"256 bytes is fine", `{"external_id":"` + strings.Repeat("é", 128) + `"}`, "", 200, ""},
		} {
			headers := []string{"X-Api-Key", linkKeyLink}
			if c.ctype != "" {
				headers = append(headers, "Content-Type", c.ctype)
			}
			code, m, _ := e.do("POST", "/idlink/users/"+i3+"/link", c.body, headers...)
			if code != c.status || errCode(m) != c.code {
				t.Errorf("%s: %d %v; want %d %s", c.name, code, m, c.status, c.code)
			}
			if code >= 400 && (m["message"] == nil || len(m) != 2) {
				t.Errorf("%s: error body %v", c.name, m)
			}
		}
	})

	t.Run("get user", func(t *testing.T) {
		code, m, _ := e.do("GET", "/idlink/users/"+a1, nil, "X-Api-Key", linkKeyRead)
		want := []any{i1, i2}
		if i2 < i1 {
			want = []any{i2, i1}
		}
		if code != 200 || m["user_id"] != a1 || m["external_id"] != "alice" || fmt.Sprint(m["installs"]) != fmt.Sprint(want) {
			t.Fatalf("GET alice: %d %v", code, m)
		}
		if _, err := time.Parse(time.RFC3339, m["created"].(string)); err != nil {
			t.Fatalf("created %v: %v", m["created"], err)
		}
		// The merged anonymous user is deleted by the merge (the
		// user.merged event and the link's answer named it).
		code, m, _ = e.do("GET", "/idlink/users/"+a2, nil, "X-Api-Key", linkKeyBoth)
		if code != 404 || errCode(m) != "user_not_found" {
			t.Fatalf("GET merged user: %d %v, want 404 user_not_found", code, m)
		}
		_, ou := e.install("/other")
		for _, id := range []string{"nope", "u_00" + strings.Repeat("A", 24), i1, ou, "u_00%7B..%7D" + strings.Repeat("A", 20)} {
			code, m, _ := e.do("GET", "/idlink/users/"+id, nil, "X-Api-Key", linkKeyRead)
			if code != 404 || errCode(m) != "user_not_found" {
				t.Errorf("GET /users/%s: %d %v", id, code, m)
			}
		}
	})

	t.Run("install identity", func(t *testing.T) {
		i4, a4 := e.install("/idlink")
		get := func(headers ...string) (int, map[string]any, http.Header) {
			e.up.Reset()
			code, m, _ := e.do("GET", "/app", nil, headers...)
			last, _ := e.up.Last()
			return code, m, last.Header
		}
		code, _, h := get("X-Install-Id", i4, "X-Platform-User-Id", "spoofed", "X-Identity-Source", "hmac")
		if code != 200 || h.Get("X-Platform-User-Id") != a4 || h.Get("X-Identity-Source") != "install" ||
			h.Get("X-Identity-Verified") != "false" || h.Get("X-Install-Id") != i4 || h.Get("X-External-Id") != "" {
			t.Fatalf("install only: %d %v", code, h)
		}
		for _, bad := range []string{"i_00" + strings.Repeat("B", 24), "garbage", a4, oi} {
			if code, m, _ := get("X-Install-Id", bad); code != 401 || errCode(m) != "unknown_install" {
				t.Errorf("X-Install-Id %q: %d %v", bad, code, m)
			}
		}
		sig := sign(linkSecret, "alice")
		code, _, h = get("X-Install-Id", i1, "X-External-Id", "alice", "X-External-Id-Signature", sig)
		if code != 200 || h.Get("X-Platform-User-Id") != a1 || h.Get("X-Identity-Source") != "hmac" ||
			h.Get("X-Identity-Verified") != "true" || h.Get("X-Install-Id") != i1 {
			t.Fatalf("hmac + matching install: %d %v", code, h)
		}
		if code, m, _ := get("X-Install-Id", i4, "X-External-Id", "alice", "X-External-Id-Signature", sig); code != 401 || errCode(m) != "identity_mismatch" {
			t.Fatalf("hmac + another user's install: %d %v", code, m)
		}
		// A link moves i4 to alice: this instance sees it at once.
		if code, m := e.link(i4, "alice"); code != 200 || m["merged_from"] != a4 {
			t.Fatalf("link: %d %v", code, m)
		}
		if code, _, h := get("X-Install-Id", i4); code != 200 || h.Get("X-Platform-User-Id") != a1 {
			t.Fatalf("after the link: %d %v", code, h)
		}
		if code, _, h := get("X-Install-Id", i4, "X-External-Id", "alice", "X-External-Id-Signature", sig); code != 200 || h.Get("X-Platform-User-Id") != a1 {
			t.Fatalf("hmac + the now linked install: %d %v", code, h)
		}
	})
}

// TestLinkE2EConcurrent links one external id from 200 installs at once
// through Caddy: one user, every install points to it and it lists all.
func TestLinkE2EConcurrent(t *testing.T) {
	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) { testLinkE2EConcurrent(t, startLinkEnvOn(t, d)) })
}

func testLinkE2EConcurrent(t *testing.T, e *linkEnv) {
	const n = 200
	installs := make([]string, n)
	for i := range installs {
		installs[i], _ = e.install("/idlink")
	}
	before := e.eventCounts("acme")
	type answer struct {
		code int
		m    map[string]any
	}
	answers := make([]answer, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range installs {
		wg.Go(func() {
			<-start
			answers[i].code, answers[i].m = e.link(installs[i], "everyone@example.com")
		})
	}
	close(start)
	wg.Wait()
	user, created := "", 0
	for _, a := range answers {
		if a.code != 200 {
			t.Fatalf("link: %d %v", a.code, a.m)
		}
		if user == "" {
			user = a.m["user_id"].(string)
		}
		if a.m["user_id"] != user {
			t.Fatalf("two users: %s and %v", user, a.m["user_id"])
		}
		if a.m["created"] == true {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d answers say created", created)
	}
	code, m, _ := e.do("GET", "/idlink/users/"+user, nil, "X-Api-Key", linkKeyRead)
	if code != 200 || len(m["installs"].([]any)) != n {
		t.Fatalf("GET user: %d, %d installs", code, len(m["installs"].([]any)))
	}
	for _, i := range installs[:20] {
		e.up.Reset()
		if code, _, _ := e.do("GET", "/", nil, "X-Install-Id", i); code != 200 {
			t.Fatal(code)
		}
		if last, _ := e.up.Last(); last.Header.Get("X-Platform-User-Id") != user {
			t.Fatalf("install %s identifies %s", i, last.Header.Get("X-Platform-User-Id"))
		}
	}
	if e.redis != nil {
		after := e.eventCounts("acme")
		if after["user.linked"]-before["user.linked"] != 1 || after["user.merged"]-before["user.merged"] != n-1 {
			t.Fatalf("events: %v → %v", before, after)
		}
	}
}

// TestLinkInvalidatesOtherInstances: a second Caddy process sharing the
// Redis has the install's user cached; a link through the first one moves
// the install, and the second one serves the new user within a second.
func TestLinkInvalidatesOtherInstances(t *testing.T) {
	if !testenv.RequireRedis(t) {
		return
	}
	testenv.ForEachDeployment(t, func(t *testing.T, d testenv.Deployment) { testLinkInvalidatesOtherInstances(t, startLinkEnvOn(t, d)) })
}

func testLinkInvalidatesOtherInstances(t *testing.T, e *linkEnv) {
	up2 := testenv.StartUpstream(t)
	port2 := testenv.FreePort(t)
	base2 := fmt.Sprintf("http://127.0.0.1:%d", port2)
	testenv.StartCaddyProcess(t, linkCaddyfile(e.redisURL, port2, up2.Addr()), base2+"/")

	i1, owner := e.install("/idlink")
	if code, _ := e.link(i1, "moved@example.com"); code != 200 {
		t.Fatal(code)
	}
	i, anon := e.install("/idlink")
	userAt2 := func() string {
		req, _ := http.NewRequest("GET", base2+"/", nil)
		req.Header.Set("X-Install-Id", i)
		up2.Reset()
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		last, _ := up2.Last()
		return last.Header.Get("X-Platform-User-Id")
	}
	if u := userAt2(); u != anon {
		t.Fatalf("second instance: %q, want %q", u, anon)
	}
	if code, m := e.link(i, "moved@example.com"); code != 200 || m["user_id"] != owner {
		t.Fatalf("link: %d %v", code, m)
	}
	deadline := time.Now().Add(time.Second)
	for {
		u := userAt2()
		if u == owner {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second instance still serves %q a second after the link (want %q)", u, owner)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FuzzLinkBody: whatever the body, readLinkBody never panics, and what it
// accepts is a valid external id that the JSON really held.
func FuzzLinkBody(f *testing.F) {
	for _, s := range []string{
		`{"external_id":"alice"}`, `{}`, `{"external_id":null}`, `{"external_id":""}`,
		`{"external_id":"a\u0000b"}`, `{"external_id":"\ud800"}`, `{"external_id":"é"}`,
		`{"external_id":42}`, `[]`, `{"external_id":"a"}{}`, `{"external_id":"a","x":1}`,
		"{\"external_id\":\"\xff\"}", `{"external_id":"` + strings.Repeat("a", 256) + `"}`,
		`{"eXternAl_id":"a"}`, `{"external_id":"a","external_id":"b"}`, `{"external_id":null,"external_id":"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/users/x/link", bytes.NewReader(body))
		ext, e := readLinkBody(httptest.NewRecorder(), r)
		if e != nil {
			if ext != "" || e.Status < 400 || e.Status > 499 {
				t.Fatalf("error %v with %q", e, ext)
			}
			return
		}
		if !verify.HeaderValue(ext, verify.MaxExternalIDLen) {
			t.Fatalf("accepted invalid external id %q", ext)
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil || m["external_id"] != ext ||
			strings.Count(string(body), `"external_id"`) != 1 {
			t.Fatalf("accepted %q from %q (%v)", ext, body, err)
		}
	})
}
