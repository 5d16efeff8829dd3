package testenv

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
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

// TestUpstreamRecordsTrailers: a chunked request's trailers are recorded
// (declared names with the values sent after the body), and copied.
func TestUpstreamRecordsTrailers(t *testing.T) {
	t.Parallel()
	u := StartUpstream(t)
	conn, err := net.Dial("tcp", u.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw := "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Other\r\nConnection: close\r\n\r\n" +
		"4\r\nbody\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	last, ok := u.Last()
	if !ok || string(last.Body) != "body" || last.Trailer.Get("X-Checksum") != "abc" || last.Trailer.Get("X-Other") != "1" {
		t.Fatalf("recorded %+v, %v", last, ok)
	}
	if _, declared := last.Header["Trailer"]; declared {
		t.Fatalf("Header keeps the Trailer declaration: %v", last.Header)
	}
	last.Trailer.Set("X-Checksum", "changed")
	if got, _ := u.Last(); got.Trailer.Get("X-Checksum") != "abc" {
		t.Fatal("Last() shares its trailer map")
	}
	// No trailer: nil.
	if _, err := http.Get(u.URL() + "/plain"); err != nil {
		t.Fatal(err)
	}
	if last, _ := u.Last(); last.Trailer != nil {
		t.Fatalf("a request without trailers recorded %v", last.Trailer)
	}
}
