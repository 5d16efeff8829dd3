package load

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// TestLoadSessions measures logins (POST /sessions: HMAC check, cached
// external id, one admission script that evicts the previous session of
// the user, default limit 1) and warm per-request session checks
// (X-Session-Id through idlink + reverse_proxy) in one Caddy process on
// one Redis:
//
//	go test ./testenv/load -run TestLoadSessions -v -count=1 -load.duration=10s -load.rounds=3
//
// Without -load.duration it runs a one-second smoke round.
func TestLoadSessions(t *testing.T) {
	round := *duration
	n := *rounds
	if round == 0 {
		round, n = time.Second, 1
	}
	redisLine := "# embedded store"
	if r := testenv.StartRedis(t); r != nil {
		redisLine = "redis " + r.URL()
	}
	up := startUpstream(t)
	port := testenv.FreePort(t)
	t.Setenv("IDLINK_LOAD_SECRET", secret)
	cfg := fmt.Sprintf(`{
	idlink {
		%s
		tenant bench {
			platform ios {
				secret {env.IDLINK_LOAD_SECRET}
			}
			default_platform ios
		}
	}
}
http://127.0.0.1:%d {
	idlink bench {
		api /idlink
	}
	reverse_proxy %s
}
`, redisLine, port, up)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.StartCaddyProcess(t, cfg, base+"/")

	ids := make([][2]string, *users)
	for i := range ids {
		ext := "login-user-" + strconv.Itoa(i)
		ids[i] = [2]string{ext, sign(ext)}
	}
	login := func(id [2]string) string {
		req, _ := http.NewRequest("POST", base+"/idlink/sessions", nil)
		req.Header.Set("X-External-Id", id[0])
		req.Header.Set("X-External-Id-Signature", id[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res struct {
			SessionID string `json:"session_id"`
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 201 || json.Unmarshal(body, &res) != nil {
			t.Fatalf("login: %d %s", resp.StatusCode, body)
		}
		return res.SessionID
	}
	for _, id := range ids { // first sight creates the users
		login(id)
	}

	wrk, _ := exec.LookPath("wrk")
	if !*useWrk {
		wrk = ""
	}
	driver := "go client"
	if wrk != "" {
		driver = "wrk"
	}
	run := func(url string, script string, build func(i int) *http.Request) result {
		if wrk != "" {
			return wrkLoad(t, wrk, url, script, round, *connections)
		}
		return goLoadRequests(build, round, *connections)
	}

	loginScript := writeScript(t, "login.lua", ids, `wrk.method = "POST"
  wrk.headers["X-External-Id"] = item[1]
  wrk.headers["X-External-Id-Signature"] = item[2]`)
	buildLogin := func(i int) *http.Request {
		id := ids[i%len(ids)]
		req, _ := http.NewRequest("POST", base+"/idlink/sessions", nil)
		req.Header.Set("X-External-Id", id[0])
		req.Header.Set("X-External-Id-Signature", id[1])
		return req
	}
	var logins, checks []result
	var sids [][2]string
	for range n {
		logins = append(logins, run(base+"/idlink/sessions", loginScript, buildLogin))
		// A live session per user, then warm checks with it.
		sids = sids[:0]
		for _, id := range ids {
			sids = append(sids, [2]string{login(id), ""})
		}
		checkScript := writeScript(t, "check.lua", sids, `wrk.headers["X-Session-Id"] = item[1]`)
		buildCheck := func(i int) *http.Request {
			req, _ := http.NewRequest("GET", base+"/", nil)
			req.Header.Set("X-Session-Id", sids[i%len(sids)][0])
			return req
		}
		checks = append(checks, run(base+"/", checkScript, buildCheck))
	}
	l, c := median(logins), median(checks)
	if l.errors > 0 || c.errors > 0 {
		t.Fatalf("errors under load: logins %d, checks %d", l.errors, c.errors)
	}
	t.Logf("driver %s, %d connections, %d rounds of %v, %d users (limit 1: every login evicts), store: %s", driver, *connections, n, round, len(ids), redisLine)
	t.Logf("POST /sessions:        %8.0f logins/s (p50 %v, p99 %v)", l.rps, l.p50, l.p99)
	t.Logf("warm X-Session-Id:     %8.0f req/s    (p50 %v, p99 %v)", c.rps, c.p50, c.p99)
	fmt.Printf("LOAD logins=%.0f session_checks=%.0f driver=%s\n", l.rps, c.rps, driver)
}

// writeScript writes a wrk Lua script sending items round-robin, with
// set the Lua that sets the request from item.
func writeScript(t *testing.T, name string, items [][2]string, set string) string {
	var b strings.Builder
	b.WriteString("local items = {\n")
	for _, it := range items {
		fmt.Fprintf(&b, "  {%q, %q},\n", it[0], it[1])
	}
	fmt.Fprintf(&b, `}
local i = 0
request = function()
  i = i + 1
  local item = items[(i %% #items) + 1]
  %s
  return wrk.format()
end
`, set)
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// goLoadRequests drives the requests build makes with conns keep-alive
// connections for d; any status but 200 and 201 is an error.
func goLoadRequests(build func(i int) *http.Request, d time.Duration, conns int) result {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var count, errs atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for c := range conns {
		wg.Go(func() {
			var mine []time.Duration
			for i := c; time.Now().Before(stop); i += conns {
				start := time.Now()
				resp, err := client.Do(build(i))
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 && resp.StatusCode != 201 {
					errs.Add(1)
				}
				mine = append(mine, time.Since(start))
				count.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	r := result{rps: float64(count.Load()) / d.Seconds(), errors: errs.Load()}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}
