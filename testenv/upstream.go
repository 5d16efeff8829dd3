package testenv

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// Recorded is one request received by an Upstream.
type Recorded struct {
	// Method is the request method, e.g. "GET".
	Method string
	// Path is the request's URL path, without the query.
	Path string
	// Header is a clone of the request's full header map (Host excluded,
	// as net/http moves it to Host).
	Header http.Header
	// Body is the whole request body.
	Body []byte
	// Trailer is a clone of the request's trailers, read after the whole
	// body: the names the request declared in its Trailer header (which
	// net/http removes from Header) with the values its chunked body's
	// trailer section sent; nil when it declared none.
	Trailer http.Header
	// Query is the request's raw query, without '?'.
	Query string
	// Host is the Host the request was sent with.
	Host string
}

// Upstream is an HTTP server on a free 127.0.0.1 port, started by
// StartUpstream, that records every request it receives and answers each
// with status 200 and, as body, the request's headers as a JSON object
// (the JSON encoding of http.Header: {"Name": ["value", ...], ...}) with
// Content-Type application/json. It is safe for concurrent use.
type Upstream struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests []Recorded
}

// StartUpstream starts an Upstream and closes it when the test ends.
func StartUpstream(t testing.TB) *Upstream {
	t.Helper()
	u := &Upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := Recorded{
		Method:  r.Method,
		Path:    r.URL.Path,
		Header:  r.Header.Clone(),
		Body:    body,
		Trailer: r.Trailer.Clone(),
		Query:   r.URL.RawQuery,
		Host:    r.Host,
	}
	u.mu.Lock()
	u.requests = append(u.requests, rec)
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(rec.Header)
}

// Addr returns the server's address, "127.0.0.1:port".
func (u *Upstream) Addr() string { return u.srv.Listener.Addr().(*net.TCPAddr).String() }

// URL returns the server's base URL, "http://127.0.0.1:port".
func (u *Upstream) URL() string { return u.srv.URL }

// Requests returns a copy of the requests received so far, oldest first.
// The caller may change the copies.
func (u *Upstream) Requests() []Recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]Recorded, len(u.requests))
	for i, r := range u.requests {
		out[i] = r.clone()
	}
	return out
}

func (r Recorded) clone() Recorded {
	r.Header = r.Header.Clone()
	r.Trailer = r.Trailer.Clone()
	r.Body = append([]byte(nil), r.Body...)
	return r
}

// Last returns the most recent request, and false if there was none.
func (u *Upstream) Last() (Recorded, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.requests) == 0 {
		return Recorded{}, false
	}
	return u.requests[len(u.requests)-1].clone(), true
}

// Reset forgets the requests received so far.
func (u *Upstream) Reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests = nil
}
