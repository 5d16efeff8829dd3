package testenv

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestUpstream(t *testing.T) {
	t.Parallel()
	u := StartUpstream(t)
	if !strings.HasPrefix(u.Addr(), "127.0.0.1:") || u.URL() != "http://"+u.Addr() {
		t.Fatalf("Addr() = %q, URL() = %q", u.Addr(), u.URL())
	}
	if _, ok := u.Last(); ok {
		t.Fatal("Last() on a new upstream reports a request")
	}

	req, _ := http.NewRequest(http.MethodPost, u.URL()+"/a/b?x=1", strings.NewReader("payload"))
	req.Header.Set("X-Test", "one")
	req.Header.Add("X-Multi", "1")
	req.Header.Add("X-Multi", "2")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var echoed http.Header
	if err := json.Unmarshal(body, &echoed); err != nil {
		t.Fatalf("body %q is not a JSON header map: %v", body, err)
	}
	if echoed.Get("X-Test") != "one" || len(echoed.Values("X-Multi")) != 2 {
		t.Fatalf("echoed headers = %v", echoed)
	}

	if _, err := http.Get(u.URL() + "/second"); err != nil {
		t.Fatal(err)
	}
	reqs := u.Requests()
	if len(reqs) != 2 {
		t.Fatalf("Requests() has %d requests, want 2", len(reqs))
	}
	first := reqs[0]
	if first.Method != "POST" || first.Path != "/a/b" || first.Query != "x=1" || string(first.Body) != "payload" ||
		first.Header.Get("X-Test") != "one" || first.Host != u.Addr() {
		t.Fatalf("first request recorded as %+v", first)
	}
	// The recorded header is a copy.
	reqs[0].Header.Set("X-Test", "changed")
	if u.Requests()[0].Header.Get("X-Test") != "one" {
		t.Fatal("Requests() shares its header maps")
	}
	if last, ok := u.Last(); !ok || last.Method != "GET" || last.Path != "/second" {
		t.Fatalf("Last() = %+v, %v", last, ok)
	}

	u.Reset()
	if len(u.Requests()) != 0 {
		t.Fatal("Reset() kept requests")
	}
	if _, ok := u.Last(); ok {
		t.Fatal("Last() after Reset() reports a request")
	}
}
