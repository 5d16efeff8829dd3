// Package load is idlink's load harness: one Caddy process serves the same
// upstream twice, through a plain reverse_proxy site and through an
// idlink + reverse_proxy site, and the harness drives both in alternating
// rounds with the same client, concurrency and duration, then prints the
// throughput of each and their ratio.
//
//	go test ./testenv/load -run 'TestLoad$' -v -count=1 -load.duration=5s -load.rounds=8
//
// It uses wrk (Debian package "wrk") when it is on the PATH, else a Go
// client. Without -load.duration it runs a one-second smoke round so that
// the harness itself is tested in CI; figures come from a real run.
package load

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

var (
	duration    = flag.Duration("load.duration", 0, "length of one measured round per site (0: a 1s smoke round)")
	rounds      = flag.Int("load.rounds", 3, "rounds per site, alternating plain and idlink")
	connections = flag.Int("load.connections", 64, "concurrent connections")
	users       = flag.Int("load.users", 1000, "distinct signed external ids sent round-robin")
	useWrk      = flag.Bool("load.wrk", true, "use wrk when it is installed")
)

const secret = "load-test-secret-0123456789"

func sign(ext string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ext))
	return hex.EncodeToString(m.Sum(nil))
}

// startUpstream is a minimal upstream (no recording) so that the
// measurement is of the proxy, not of the test server.
func startUpstream(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok "+r.Header.Get("X-Platform-User-Id")+"\n")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestLoad(t *testing.T) {
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
	plain, guarded := testenv.FreePort(t), testenv.FreePort(t)
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
	reverse_proxy %s
}
http://127.0.0.1:%d {
	idlink bench
	reverse_proxy %s
}
`, redisLine, plain, up, guarded, up)
	testenv.StartCaddyProcess(t, cfg, fmt.Sprintf("http://127.0.0.1:%d/", plain))

	ids := make([][2]string, *users)
	for i := range ids {
		ext := "load-user-" + strconv.Itoa(i)
		ids[i] = [2]string{ext, sign(ext)}
	}
	plainURL := fmt.Sprintf("http://127.0.0.1:%d/", plain)
	idlinkURL := fmt.Sprintf("http://127.0.0.1:%d/", guarded)

	// Warm-up: every user once through idlink (first sight creates them in
	// Redis), and both sites for a moment.
	for _, id := range ids {
		req, _ := http.NewRequest("GET", idlinkURL, nil)
		req.Header.Set("X-External-Id", id[0])
		req.Header.Set("X-External-Id-Signature", id[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "u_") {
			t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
		}
	}

	driver := "go client"
	run := func(url string, signed bool) result { return goLoad(t, url, ids, signed, round, *connections) }
	if path, err := exec.LookPath("wrk"); err == nil && *useWrk {
		driver = "wrk"
		script := writeWrkScript(t, ids)
		run = func(url string, signed bool) result {
			return wrkLoad(t, path, url, script, signed, round, *connections)
		}
	}

	// Rounds alternate in ABBA order (plain first, then idlink first) so
	// that drift in the machine's speed cancels, and the figure is the
	// median of the per-pair ratios: on a shared machine one round's
	// throughput varies by ±10%, more than what is measured here.
	var plainRes, idlinkRes []result
	var ratios []float64
	for i := 0; i < n; i++ {
		var p, g result
		if i%2 == 0 {
			p, g = run(plainURL, true), run(idlinkURL, true)
		} else {
			g, p = run(idlinkURL, true), run(plainURL, true)
		}
		if g.errors > 0 || p.errors > 0 {
			t.Fatalf("errors under load: plain %d, idlink %d", p.errors, g.errors)
		}
		plainRes, idlinkRes = append(plainRes, p), append(idlinkRes, g)
		ratios = append(ratios, g.rps/p.rps)
		t.Logf("round %d: plain %8.0f req/s, idlink %8.0f req/s, ratio %.3f", i+1, p.rps, g.rps, g.rps/p.rps)
	}
	p, g := median(plainRes), median(idlinkRes)
	sort.Float64s(ratios)
	ratio := ratios[len(ratios)/2]
	if len(ratios)%2 == 0 {
		ratio = (ratios[len(ratios)/2-1] + ratios[len(ratios)/2]) / 2
	}
	t.Logf("driver %s, %d connections, %d rounds of %v per site (ABBA), %d signed users, store: %s", driver, *connections, n, round, *users, redisLine)
	t.Logf("plain reverse_proxy: %10.0f req/s median  (p50 %v, p99 %v)", p.rps, p.p50, p.p99)
	t.Logf("idlink + proxy:      %10.0f req/s median  (p50 %v, p99 %v)", g.rps, g.p50, g.p99)
	t.Logf("ratio idlink/plain:  %.3f (median of per-round ratios; range %.3f-%.3f)", ratio, ratios[0], ratios[len(ratios)-1])
	fmt.Printf("LOAD plain=%.0f idlink=%.0f ratio=%.3f driver=%s\n", p.rps, g.rps, ratio, driver)
}

type result struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64
}

func median(rs []result) result {
	sort.Slice(rs, func(i, j int) bool { return rs[i].rps < rs[j].rps })
	return rs[len(rs)/2]
}

// goLoad drives url with conns keep-alive connections for d.
func goLoad(t *testing.T, url string, ids [][2]string, signed bool, d time.Duration, conns int) result {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var count, errs atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			var mine []time.Duration
			for i := c; time.Now().Before(stop); i += conns {
				req, _ := http.NewRequest("GET", url, nil)
				if signed {
					id := ids[i%len(ids)]
					req.Header.Set("X-External-Id", id[0])
					req.Header.Set("X-External-Id-Signature", id[1])
				}
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
				}
				mine = append(mine, time.Since(start))
				count.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := result{rps: float64(count.Load()) / d.Seconds(), errors: errs.Load()}
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}

// writeWrkScript writes a wrk Lua script that sends the signed ids
// round-robin and counts non-200 answers.
func writeWrkScript(t *testing.T, ids [][2]string) string {
	var b strings.Builder
	b.WriteString("local ids = {\n")
	for _, id := range ids {
		fmt.Fprintf(&b, "  {%q, %q},\n", id[0], id[1])
	}
	b.WriteString(`}
local i = 0
request = function()
  i = i + 1
  local id = ids[(i % #ids) + 1]
  wrk.headers["X-External-Id"] = id[1]
  wrk.headers["X-External-Id-Signature"] = id[2]
  return wrk.format("GET")
end
`)
	path := filepath.Join(t.TempDir(), "signed.lua")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkPct    = regexp.MustCompile(`^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)`)
)

func wrkLoad(t *testing.T, wrk, url, script string, signed bool, d time.Duration, conns int) result {
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--latency"}
	if signed {
		args = append(args, "-s", script)
	}
	out, err := exec.Command(wrk, append(args, url)...).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	var r result
	if m := wrkRPS.FindSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	} else {
		t.Fatalf("wrk output without Requests/sec:\n%s", out)
	}
	if m := wrkNon2xx.FindSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		r.errors += n
	}
	if m := wrkErrors.FindSubmatch(out); m != nil {
		for _, g := range m[1:] {
			n, _ := strconv.ParseInt(string(g), 10, 64)
			r.errors += n
		}
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m := wrkPct.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]
			dur := time.Duration(v * float64(unit))
			if m[1] == "50" {
				r.p50 = dur
			} else {
				r.p99 = dur
			}
		}
	}
	return r
}
