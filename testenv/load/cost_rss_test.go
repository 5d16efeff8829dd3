package load

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

var (
	rssUsers = flag.Int("cost.rss.users", 20000, "distinct users per measured round of TestCostCaddyRSS")
	rssMaxMB = flag.Float64("cost.rss.max_growth_mb", 8, "ceiling: Caddy RSS growth (MiB) over the measured rounds")
)

// rssCacheSize is the tenant's cache_size in TestCostCaddyRSS: small, so
// that a few thousand users fill every cache and what follows shows
// whether they stay bounded.
const rssCacheSize = 2000

// TestCostCaddyRSS checks that a Caddy process serving ever new users keeps
// a bounded resident set: its caches hold at most cache_size entries, so
// once they are full, more distinct users cost Redis memory, not Caddy's.
// A warm-up round of -cost.rss.users distinct HMAC-signed users fills the
// caches, then three more rounds of as many new users each follow; the
// VmRSS growth from the end of the warm-up to the end must stay under
// -cost.rss.max_growth_mb.
//
//	go test ./testenv/load -run TestCostCaddyRSS -v -count=1 -cost.rss.users=200000
func TestCostCaddyRSS(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a real Redis: the embedded store lives in the process")
	}
	up := startUpstream(t)
	port := testenv.FreePort(t)
	t.Setenv("IDLINK_LOAD_SECRET", secret)
	cfg := fmt.Sprintf(`{
	idlink {
		redis %s
		redis_timeout 2s
		tenant bench {
			platform ios {
				secret {env.IDLINK_LOAD_SECRET}
			}
			default_platform ios
			cache_size %d
		}
	}
}
http://127.0.0.1:%d {
	idlink bench
	reverse_proxy %s
}
`, r.URL(), rssCacheSize, port, up)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	p := testenv.StartCaddyProcess(t, cfg, url)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *costWorkers}}
	next := 0
	round := func() {
		first := next
		next += *rssUsers
		start := time.Now()
		parallel(t, *rssUsers, func(i int) error {
			ext := "rss-user-" + strconv.Itoa(first+i)
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("X-External-Id", ext)
			req.Header.Set("X-External-Id-Signature", sign(ext))
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s: status %d", ext, resp.StatusCode)
			}
			return nil
		})
		t.Logf("%d users served in %v", *rssUsers, time.Since(start).Round(time.Millisecond))
	}
	round()
	warm := vmRSS(t, p.PID())
	t.Logf("after %7d distinct users: VmRSS %6.1f MiB (caches full: cache_size %d)", next, mib(warm), rssCacheSize)
	last := warm
	for range 3 {
		round()
		last = vmRSS(t, p.PID())
		t.Logf("after %7d distinct users: VmRSS %6.1f MiB", next, mib(last))
	}
	if growth := mib(last - warm); growth > *rssMaxMB {
		t.Errorf("Caddy's RSS grew by %.1f MiB over %d more distinct users (ceiling %.0f MiB): something in the process grows with the number of users", growth, next-*rssUsers, *rssMaxMB)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// vmRSS reads a process's resident set size from /proc/<pid>/status.
func vmRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc on this system: %v", err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
