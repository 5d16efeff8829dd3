// Package load is idlink's load harness: one Caddy process serves the same
// upstream through a plain reverse_proxy site, an idlink + reverse_proxy
// site and the peers (a forward_auth site to the auth service of
// testenv/peerauth, the way people do it without idlink), and the harness
// drives them in alternating rounds with the same client, concurrency,
// duration and request headers, for each of idlink's three warm paths: a
// signed external id, a contact token and a session id. It prints the
// throughput and latency of each site and its ratio to plain.
//
//	go test ./testenv/load -run 'TestLoad$' -v -count=1 -load.duration=5s -load.rounds=4
//
// It uses wrk (Debian package "wrk") when it is on the PATH, else a Go
// client. Without -load.duration it runs a one-second smoke round per site
// and path with at most 100 users so that the harness itself is tested in
// CI; figures come from a real run. -load.paths and -load.peers pick what
// is measured.
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
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
	"github.com/idlink/idlink/testenv/peerauth"
)

var (
	duration    = flag.Duration("load.duration", 0, "length of one measured round per site (0: a 1s smoke round)")
	rounds      = flag.Int("load.rounds", 3, "rounds per path, each site once per round in alternating order")
	connections = flag.Int("load.connections", 64, "concurrent connections")
	users       = flag.Int("load.users", 1000, "distinct users, each logged in once; their credentials are sent round-robin")
	useWrk      = flag.Bool("load.wrk", true, "use wrk when it is installed")
	pathsFlag   = flag.String("load.paths", "hmac,token,session", "warm paths to measure (comma-separated): hmac, token, session")
	peersFlag   = flag.String("load.peers", "forward_auth", "peers measured beside plain and idlink (comma-separated): forward_auth, or none")
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

// A site is one Caddy site under measurement.
type site struct{ name, url string }

func TestLoad(t *testing.T) {
	round, n, nUsers := *duration, *rounds, *users
	if round == 0 { // the smoke run: every site and path once, briefly
		round, n, nUsers = time.Second, 1, min(nUsers, 100)
	}
	want := strings.Split(*pathsFlag, ",")
	for _, p := range want {
		if !slices.Contains(pathNames, p) {
			t.Fatalf("-load.paths: unknown path %q (known: %v)", p, pathNames)
		}
	}
	b := newBench(t)
	up := startUpstream(t)
	plain, guarded := testenv.FreePort(t), testenv.FreePort(t)
	url := func(port int) string { return fmt.Sprintf("http://127.0.0.1:%d/", port) }
	sites := []site{{"plain reverse_proxy", url(plain)}, {"idlink", url(guarded)}}
	var more strings.Builder
	for _, peer := range strings.Split(*peersFlag, ",") {
		switch peer {
		case "none", "":
		case "forward_auth":
			if b.redis == nil {
				t.Log("forward_auth peer skipped: it needs a redis-server")
				continue
			}
			auth := peerauth.Start(t, peerauth.Config{
				Secret: []byte(secret), RedisURL: b.redis.URL(), Key: b.publicKey,
				Issuer: "idlink/bench", Tenant: "bench",
			})
			port := testenv.FreePort(t)
			fmt.Fprintf(&more, `http://127.0.0.1:%d {
	forward_auth %s {
		uri /auth
		copy_headers X-Platform-User-Id
	}
	reverse_proxy %s
}
`, port, auth, up)
			sites = append(sites, site{"forward_auth + Go/Redis service", url(port)})
		default:
			t.Fatalf("-load.peers: unknown peer %q (known: forward_auth, none)", peer)
		}
	}
	testenv.StartCaddyProcess(t, b.caddyfile("", plain, guarded, up, more.String()), url(plain))

	exts := make([]string, nUsers)
	for i := range exts {
		exts[i] = "load-user-" + strconv.Itoa(i)
	}
	var measured []path
	for _, p := range paths(t, http.DefaultClient, url(guarded), exts) {
		if slices.Contains(want, p.name) {
			measured = append(measured, p)
		}
	}

	// Warm-up: every user once through every identifying site and path
	// (the first sight creates the peer's user; idlink's caches fill).
	for _, p := range measured {
		for _, s := range sites[1:] {
			for _, cred := range p.creds {
				req, _ := http.NewRequest(http.MethodGet, s.url, nil)
				for _, h := range cred {
					req.Header.Set(h[0], h[1])
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !strings.Contains(string(body), "u_") {
					t.Fatalf("warm-up, %s, %s: %d %s", p.name, s.name, resp.StatusCode, body)
				}
			}
		}
	}

	driver := "go client"
	run := func(url string, p path) result { return goLoad(url, p.creds, round, *connections) }
	if wrk, err := exec.LookPath("wrk"); err == nil && *useWrk {
		driver = "wrk"
		scripts := map[string]string{}
		for _, p := range measured {
			scripts[p.name] = writeWrkScript(t, p)
		}
		run = func(url string, p path) result {
			return wrkLoad(t, wrk, url, scripts[p.name], round, *connections)
		}
	}

	// Each round runs every site once, in the order of the sites on even
	// rounds and in reverse on odd ones (ABBA), so that drift in the
	// machine's speed cancels; a site's ratio is the median of its
	// per-round ratios to plain: on a shared machine one round's
	// throughput varies by ±10%, more than what is measured here.
	t.Logf("driver %s, %d connections, %d rounds of %v per site and path (ABBA), %d users, store: %s", driver, *connections, n, round, nUsers, b.redisLine)
	type row struct {
		path, site    string
		rps           float64
		p50, p99      time.Duration
		ratio, lo, hi float64
	}
	var table []row
	for _, p := range measured {
		res := make([][]result, len(sites))
		ratios := make([][]float64, len(sites))
		for i := 0; i < n; i++ {
			order := make([]int, len(sites))
			for j := range order {
				order[j] = j
			}
			if i%2 == 1 {
				slices.Reverse(order)
			}
			got := make([]result, len(sites))
			for _, j := range order {
				got[j] = run(sites[j].url, p)
				if got[j].errors > 0 {
					t.Fatalf("%s, %s: %d errors under load", p.name, sites[j].name, got[j].errors)
				}
			}
			line := fmt.Sprintf("%s round %d:", p.name, i+1)
			for j := range sites {
				res[j] = append(res[j], got[j])
				ratios[j] = append(ratios[j], got[j].rps/got[0].rps)
				line += fmt.Sprintf("  %s %.0f req/s (%.3f)", sites[j].name, got[j].rps, got[j].rps/got[0].rps)
			}
			t.Log(line)
		}
		for j, s := range sites {
			m := median(res[j])
			table = append(table, row{p.name, s.name, m.rps, m.p50, m.p99, medianOf(ratios[j]), slices.Min(ratios[j]), slices.Max(ratios[j])})
		}
	}
	t.Logf("%-8s %-32s %9s %9s %9s  %s", "path", "site", "req/s", "p50", "p99", "ratio to plain (range)")
	for _, r := range table {
		t.Logf("%-8s %-32s %9.0f %9v %9v  %.3f (%.3f-%.3f)", r.path, r.site, r.rps, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.ratio, r.lo, r.hi)
		fmt.Printf("LOAD path=%s site=%q rps=%.0f ratio=%.3f driver=%s\n", r.path, r.site, r.rps, r.ratio, driver)
	}
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

// goLoad drives url with conns keep-alive connections for d, sending the
// credentials round-robin.
func goLoad(url string, creds [][][2]string, d time.Duration, conns int) result {
	return goLoadRequests(func(i int) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for _, h := range creds[i%len(creds)] {
			req.Header.Set(h[0], h[1])
		}
		return req
	}, d, conns)
}

// writeWrkScript writes a wrk Lua script that sends the credentials of p
// round-robin (wrk counts the non-2xx answers).
func writeWrkScript(t *testing.T, p path) string {
	var b strings.Builder
	b.WriteString("local creds = {\n")
	for _, cred := range p.creds {
		b.WriteString("  {")
		for _, h := range cred {
			fmt.Fprintf(&b, "{%q, %q}, ", h[0], h[1])
		}
		b.WriteString("},\n")
	}
	b.WriteString(`}
local i = 0
request = function()
  i = i + 1
  for _, h in ipairs(creds[(i % #creds) + 1]) do
    wrk.headers[h[1]] = h[2]
  end
  return wrk.format("GET")
end
`)
	file := filepath.Join(t.TempDir(), p.name+".lua")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkPct    = regexp.MustCompile(`^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)`)
)

func wrkLoad(t *testing.T, wrk, url, script string, d time.Duration, conns int) result {
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--latency", "-s", script, url}
	out, err := exec.Command(wrk, args...).CombinedOutput()
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
