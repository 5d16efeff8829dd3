package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

var nopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// benchRequest returns a request as it reaches the handler from Caddy's
// server, with a Replacer in its context.
func benchRequest(ext string) *http.Request {
	r := signedRequest(ext, "ios", testSecret)
	repl := caddy.NewReplacer()
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
}

// BenchmarkHandlerWarm is the hot path: a signed external id whose user is
// in the in-process cache (no Redis round trip).
func BenchmarkHandlerWarm(b *testing.B) {
	app := newTestApp(b, testRedisURL(b), nil)
	h := newTestHandler(b, app, nil)
	const users = 1000
	sigs := make([][2]string, users)
	for i := range sigs {
		ext := "bench-user-" + strconv.Itoa(i)
		sigs[i] = [2]string{ext, sign(testSecret, ext)}
		serve(h, signedRequest(ext, "ios", testSecret)) // warm the cache
	}
	reqs := make([]*http.Request, users)
	// The request's own header value slices (net/http allocates them for
	// every request, whoever handles it) are built once: what is measured
	// is the handler's own.
	vals := make([][3][]string, users)
	for i := range reqs {
		reqs[i] = benchRequest(sigs[i][0])
		vals[i] = [3][]string{{""}, {""}, {""}}
	}
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		r, v := reqs[i%users], &vals[i%users]
		// Restore what the handler consumed, as a fresh request would carry.
		v[0][0], v[1][0], v[2][0] = sigs[i%users][0], sigs[i%users][1], "ios"
		r.Header[hdrExternalID] = v[0]
		r.Header[hdrExternalIDSig] = v[1]
		r.Header[hdrPlatform] = v[2]
		if err := h.ServeHTTP(w, r, nopNext); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkHandlerCold resolves a new external id every time: one Redis
// round trip (EVALSHA of the resolve script) against a real redis-server.
func BenchmarkHandlerCold(b *testing.B) {
	app := newTestApp(b, testRedisURL(b), nil)
	h := newTestHandler(b, app, nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ext := "cold-" + strconv.Itoa(i)
		r := signedRequest(ext, "ios", testSecret)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		if err := h.ServeHTTP(w, r, nopNext); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkHandlerColdParallel is the cold path with concurrent requests,
// as under load (many connections to Redis at once).
func BenchmarkHandlerColdParallel(b *testing.B) {
	app := newTestApp(b, testRedisURL(b), nil)
	h := newTestHandler(b, app, nil)
	b.ReportAllocs()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		w := httptest.NewRecorder()
		for pb.Next() {
			ext := "coldp-" + strconv.FormatInt(n.Add(1), 10)
			r := signedRequest(ext, "ios", testSecret)
			r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			if err := h.ServeHTTP(w, r, nopNext); err != nil {
				b.Fatal(err)
			}
		}
	})
}
