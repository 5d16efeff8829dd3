package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// e2eSessionAdminKey is the API key of scope session.admin of the tenants
// of sessionsCaddyfile.
const e2eSessionAdminKey = "e2e-session-admin-0123456789"

// sessionsCaddyfile is one Caddy instance of a pair sharing redisURL:
// tenants m1, m2 and m3 with session limits 1, 2 and 3 (and an API key of
// scope session.admin), each with its API
// under /mN/idlink/ and a guarded /mN/app that answers the identity (a
// route, so that idlink runs before respond).
func sessionsCaddyfile(redisURL string, port int) string {
	var tenants, routes strings.Builder
	for max := 1; max <= 3; max++ {
		fmt.Fprintf(&tenants, `
		tenant m%d {
			platform ios {
				secret {env.IDLINK_E2E_NEW}
			}
			default_platform ios
			sessions {
				max %d
				idle 1h
			}
			api_key %s session.admin
		}`, max, max, sha256Hex(e2eSessionAdminKey))
		fmt.Fprintf(&routes, `
	handle_path /m%d/idlink/* {
		idlink_api m%d
	}
	route /m%d/app {
		idlink m%d
		respond "{idlink.user_id} {idlink.source} {idlink.session_id}" 200
	}`, max, max, max, max)
	}
	return fmt.Sprintf(`{
	idlink {
		redis %s
		redis_timeout 500ms%s
	}
}

http://127.0.0.1:%d {%s
}
`, redisURL, tenants.String(), port, routes.String())
}

// sessionClient talks to a pair of Caddy instances.
type sessionClient struct {
	t     testing.TB
	bases []string
	http  *http.Client
}

func (c *sessionClient) login(instance, max int, ext string) (startSessionResponse, int) {
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/m%d/idlink/sessions", c.bases[instance], max), nil)
	req.Header.Set(hdrExternalID, ext)
	req.Header.Set(hdrExternalIDSig, sign(e2eNew, ext))
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Errorf("login: %v", err)
		return startSessionResponse{}, 0
	}
	defer resp.Body.Close()
	var res startSessionResponse
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusCreated {
		if err := json.Unmarshal(body, &res); err != nil {
			c.t.Errorf("login answer %s: %v", body, err)
		}
	}
	return res, resp.StatusCode
}

// use sends a request with the session; it returns the status and the
// body (the identity, or the JSON error).
func (c *sessionClient) use(instance, max int, sid string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/m%d/app", c.bases[instance], max), nil)
	req.Header.Set(hdrSessionID, sid)
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestE2ESessionsTwoInstances runs two Caddy processes of the built binary
// on one Redis: for limits 1, 2 and 3, hundreds of concurrent logins of
// one user spread over both leave exactly max working sessions, agreed on
// by both instances; a device warm on one instance is refused there within
// a second of a login on the other evicting it; the stream holds the
// events.
func TestE2ESessionsTwoInstances(t *testing.T) {
	const logins = 300
	if testing.Short() {
		t.Skip("builds the binary")
	}
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a shared Redis (two instances)")
	}
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	c := &sessionClient{t: t, http: &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2 * logins},
	}}
	defer c.http.CloseIdleConnections()
	c.bases = startCaddyPair(t, func(port int) string { return sessionsCaddyfile(r.URL(), port) }, "/m1/app")

	for max := 1; max <= 3; max++ {
		t.Run(fmt.Sprintf("max%d", max), func(t *testing.T) {
			c.t = t
			ext := fmt.Sprintf("crowd-%d", max)
			sids := make([]string, logins)
			var evicted atomic.Int64
			var wg sync.WaitGroup
			for i := range logins {
				wg.Go(func() {
					res, status := c.login(i%2, max, ext)
					if status != http.StatusCreated {
						t.Errorf("login %d: %d", i, status)
						return
					}
					sids[i] = res.SessionID
					evicted.Add(int64(len(res.Evicted)))
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			if evicted.Load() != int64(logins-max) {
				t.Fatalf("%d evicted, want %d", evicted.Load(), logins-max)
			}
			var live []string
			for _, sid := range sids {
				s0, b0 := c.use(0, max, sid)
				s1, _ := c.use(1, max, sid)
				if s0 != s1 {
					t.Fatalf("instances disagree on %s: %d vs %d", sid, s0, s1)
				}
				switch {
				case s0 == 200:
					live = append(live, sid)
				case s0 != 401 || !strings.Contains(b0, `"reason":"evicted"`):
					t.Fatalf("%s: %d %s", sid, s0, b0)
				}
			}
			if len(live) != max {
				t.Fatalf("%d sessions work after %d concurrent logins on two instances, want %d", len(live), logins, max)
			}

			// Ordered: a device warm on instance 1; max logins on instance 0
			// evict it; instance 1 refuses it within a second.
			device, _ := c.login(0, max, ext)
			for range 3 {
				if s, b := c.use(1, max, device.SessionID); s != 200 || !strings.Contains(b, "session") {
					t.Fatalf("device on instance 1: %d %s", s, b)
				}
			}
			var gone []string
			for range max {
				res, _ := c.login(0, max, ext)
				gone = append(gone, res.Evicted...)
			}
			if !slices.Contains(gone, device.SessionID) {
				t.Fatalf("%d logins after the device's did not evict it: %v", max, gone)
			}
			start := time.Now()
			for {
				s, b := c.use(1, max, device.SessionID)
				if s == 401 {
					if !strings.Contains(b, `"error":"session_ended"`) || !strings.Contains(b, `"reason":"evicted"`) {
						t.Fatalf("evicted device: %s", b)
					}
					break
				}
				if time.Since(start) > time.Second {
					t.Fatal("the other instance still accepts the evicted device after 1s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("max %d: evicted device refused by the other instance after %v", max, time.Since(start))

			// The stream: a started per login, an ended (evicted) per
			// eviction, naming the session that evicted it.
			shard, _ := store.ParseID(store.KindUser, device.UserID)
			msgs, err := r.Client().XRange(context.Background(), store.NewKeys(fmt.Sprintf("m%d", max)).Events(shard), "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			count := map[string]int{}
			for _, m := range msgs {
				d, _ := m.Values["data"].(string)
				if !strings.Contains(d, device.UserID) {
					continue
				}
				count[m.Values["type"].(string)]++
				if m.Values["type"] == store.EventSessionEnded && (!strings.Contains(d, `"reason":"evicted"`) || !strings.Contains(d, `"evicted_by":"s_`)) {
					t.Fatalf("ended event %s", d)
				}
			}
			total := logins + 1 + max
			if count[store.EventSessionStarted] != total || count[store.EventSessionEnded] != total-max {
				t.Fatalf("events %v, want %d started and %d ended", count, total, total-max)
			}
		})
	}
}
