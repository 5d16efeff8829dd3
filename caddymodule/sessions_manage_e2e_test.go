package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// do sends an API request of tenant m<max> to an instance; hdr are header
// pairs. It returns the status and the body.
func (c *sessionClient) do(instance, max int, method, path string, hdr ...string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, fmt.Sprintf("%s/m%d/idlink%s", c.bases[instance], max, path), nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// awaitRevoked waits until an instance refuses sid with session_ended and
// reason revoked, for at most a second.
func (c *sessionClient) awaitRevoked(instance, max int, sid string) time.Duration {
	c.t.Helper()
	start := time.Now()
	for {
		s, b := c.use(instance, max, sid)
		if s == http.StatusUnauthorized {
			if !strings.Contains(b, `"error":"session_ended"`) || !strings.Contains(b, `"reason":"revoked"`) {
				c.t.Fatalf("revoked session refused with %s", b)
			}
			return time.Since(start)
		}
		if time.Since(start) > time.Second {
			c.t.Fatalf("instance %d still accepts the revoked session after 1s: %d %s", instance, s, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestE2ESessionManagementTwoInstances runs two Caddy processes of the
// built binary on one Redis: a user lists its sessions on one instance and
// ends one on the other, which the first, where it was warm, refuses
// within a second; another user's handle is 404; an administrator's key
// needs scope session.admin and ends all of a user's sessions, refused by
// both instances within a second; the stream holds a session.ended
// (revoked) per end.
func TestE2ESessionManagementTwoInstances(t *testing.T) {
	const max = 3
	if testing.Short() {
		t.Skip("builds the binary")
	}
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a shared Redis (two instances)")
	}
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	c := &sessionClient{t: t, http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}}
	defer c.http.CloseIdleConnections()
	c.bases = startCaddyPair(t, func(port int) string { return sessionsCaddyfile(r.URL(), port) }, "/m1/app")
	var devices []startSessionResponse
	for i := range max {
		res, status := c.login(i%2, max, "eve")
		if status != http.StatusCreated {
			t.Fatalf("login %d: %d", i, status)
		}
		devices = append(devices, res)
	}
	for _, d := range devices { // warm on both
		for inst := range 2 {
			if s, _ := c.use(inst, max, d.SessionID); s != 200 {
				t.Fatalf("device on instance %d: %d", inst, s)
			}
		}
	}

	// The user's list, on instance 1.
	status, body := c.do(1, max, http.MethodGet, "/sessions", hdrSessionID, devices[0].SessionID)
	var list ownSessions
	if err := json.Unmarshal([]byte(body), &list); err != nil || status != 200 {
		t.Fatalf("GET /sessions: %d %s", status, body)
	}
	all, current := list.handles()
	if !slices.Equal(all, sortedHandles(devices[0].SessionID, devices[1].SessionID, devices[2].SessionID)) ||
		current != store.SessionHandle(devices[0].SessionID) || strings.Contains(body, devices[1].SessionID) {
		t.Fatalf("GET /sessions: %s", body)
	}

	// Another user's session: 404 unknown_session.
	fay, _ := c.login(0, max, "fay")
	if s, b := c.do(0, max, http.MethodDelete, "/sessions/"+store.SessionHandle(fay.SessionID), hdrSessionID, devices[0].SessionID); s != 404 ||
		!strings.Contains(b, `"unknown_session"`) {
		t.Fatalf("ending another user's session: %d %s", s, b)
	}

	// The user ends device 1 on instance 0; instance 1 refuses it.
	s, b := c.do(0, max, http.MethodDelete, "/sessions/"+store.SessionHandle(devices[1].SessionID), hdrSessionID, devices[0].SessionID)
	if s != 200 || !strings.Contains(b, `"reason":"revoked"`) {
		t.Fatalf("DELETE /sessions/{handle}: %d %s", s, b)
	}
	t.Logf("user's end: refused by the other instance after %v", c.awaitRevoked(1, max, devices[1].SessionID))

	// The administrator: a user's session is no API key (401); the key of
	// scope session.admin ends all of eve's sessions.
	path := "/users/" + devices[0].UserID + "/sessions"
	if s, b := c.do(0, max, http.MethodDelete, path, hdrSessionID, devices[0].SessionID); s != 401 || !strings.Contains(b, "invalid_api_key") {
		t.Fatalf("admin end with a session: %d %s", s, b)
	}
	s, b = c.do(0, max, http.MethodDelete, path, "Authorization", "Bearer "+e2eSessionAdminKey)
	var ended struct {
		Ended []struct{ Handle, Reason string } `json:"ended"`
	}
	if err := json.Unmarshal([]byte(b), &ended); err != nil || s != 200 || len(ended.Ended) != 2 {
		t.Fatalf("DELETE %s: %d %s", path, s, b)
	}
	for _, d := range []startSessionResponse{devices[0], devices[2]} {
		for inst := range 2 {
			t.Logf("admin's end: refused by instance %d after %v", inst, c.awaitRevoked(inst, max, d.SessionID))
		}
	}
	if s, _ := c.use(1, max, fay.SessionID); s != 200 {
		t.Fatalf("another user's session after the admin's end: %d", s)
	}

	// The stream: a session.ended (revoked) per device.
	shard, _ := store.ParseID(store.KindUser, devices[0].UserID)
	msgs, err := r.Client().XRange(context.Background(), store.NewKeys(fmt.Sprintf("m%d", max)).Events(shard), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var revoked []string
	for _, m := range msgs {
		var d struct {
			SessionID string `json:"session_id"`
			UserID    string `json:"user_id"`
			Reason    string `json:"reason"`
		}
		_ = json.Unmarshal([]byte(m.Values["data"].(string)), &d)
		if m.Values["type"] == store.EventSessionEnded && d.UserID == devices[0].UserID && d.Reason == store.ReasonRevoked {
			revoked = append(revoked, d.SessionID)
		}
	}
	slices.Sort(revoked)
	if want := []string{devices[0].SessionID, devices[1].SessionID, devices[2].SessionID}; !slices.Equal(revoked, slices.Sorted(slices.Values(want))) {
		t.Fatalf("revoked events %v, want %v", revoked, want)
	}
}
