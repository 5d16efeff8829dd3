package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// TestLinkLoad is the links/s load run (README "Performance"), skipped
// unless IDLINK_LOAD_LINKS is set: real Redis, the in-process Caddy with
// the link API, and IDLINK_LOAD_CONCURRENCY (default 64) keep-alive HTTP
// clients in the same process posting links, each of a fresh install
// (made beforehand) to a new external id (half) or to one of 1000 known
// ones (half, so installs are merged).
//
//	IDLINK_LOAD_LINKS=20000 go test ./caddymodule -run TestLinkLoad -v
func TestLinkLoad(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("IDLINK_LOAD_LINKS"))
	if n <= 0 {
		t.Skip("set IDLINK_LOAD_LINKS to run the load run")
	}
	if !testenv.RequireRedis(t) {
		return
	}
	conc := 64
	if c, _ := strconv.Atoi(os.Getenv("IDLINK_LOAD_CONCURRENCY")); c > 0 {
		conc = c
	}
	e := startLinkEnv(t)
	ten := e.tenant("acme")
	installs := make([]string, n+1000)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(installs)); i = next.Add(1) - 1 {
				in, _, err := ten.id.CreateInstall(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				installs[i] = in
			}
		})
	}
	wg.Wait()
	for i := range 1000 {
		if code, m := e.link(installs[n+i], fmt.Sprintf("known-%d", i)); code != 200 {
			t.Fatalf("%d %v", code, m)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}}
	defer client.CloseIdleConnections()
	var failed atomic.Int64
	next.Store(0)
	lat := make([]time.Duration, n)
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				ext := fmt.Sprintf("new-%d", i)
				if i%2 == 1 {
					ext = fmt.Sprintf("known-%d", i%1000)
				}
				req, _ := http.NewRequest("POST", e.base+"/idlink/users/"+installs[i]+"/link",
					strings.NewReader(`{"external_id":"`+ext+`"}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+linkKeyLink)
				t0 := time.Now()
				resp, err := client.Do(req)
				lat[i] = time.Since(t0)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				}
				if resp != nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	slices.Sort(lat)
	t.Logf("%d links in %v with %d clients: %.0f links/s; p50 %v, p99 %v; %d failed",
		n, d.Round(time.Millisecond), conc, float64(n)/d.Seconds(), lat[n/2], lat[n*99/100], failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d links failed", failed.Load())
	}
}
