package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/idlink/idlink/caddymodule/internal/apierr"
)

func signedRequest(ext, platform, secret string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/profile", nil)
	r.Header.Set(hdrExternalID, ext)
	if secret != "" {
		r.Header.Set(hdrExternalIDSig, sign(secret, ext))
	}
	if platform != "" {
		r.Header.Set(hdrPlatform, platform)
	}
	return r
}

func TestHandlerHMAC(t *testing.T) { forEachStore(t, testHandlerHMAC) }

func testHandlerHMAC(t *testing.T, redisURL string) {
	app := newTestApp(t, redisURL, nil)
	h := newTestHandler(t, app, nil)

	type want struct {
		status   int
		code     string
		source   string
		verified string
		user     bool
	}
	cases := []struct {
		name string
		req  *http.Request
		want want
	}{
		{"enforce, valid", signedRequest("alice", "ios", testSecret), want{200, "", SourceHMAC, "true", true}},
		{"default platform", signedRequest("alice", "", testSecret), want{200, "", SourceHMAC, "true", true}},
		{"rotation: new secret", signedRequest("alice", "android", "new-"+testSecret), want{200, "", SourceHMAC, "true", true}},
		{"rotation: old secret", signedRequest("alice", "android", testSecret), want{200, "", SourceHMAC, "true", true}},
		{"enforce, wrong secret", signedRequest("alice", "ios", "wrong-secret-012345"), want{401, apierr.CodeInvalidSignature, "", "", false}},
		{"enforce, no signature", signedRequest("alice", "ios", ""), want{401, apierr.CodeInvalidSignature, "", "", false}},
		{"wrong platform's secret", signedRequest("alice", "android", "other-"+testSecret), want{401, apierr.CodeInvalidSignature, "", "", false}},
		{"unknown platform: strictest mode", signedRequest("alice", "nope", testSecret), want{401, apierr.CodeInvalidSignature, "", "", false}},
		{"report, valid", signedRequest("alice", "web", testSecret), want{200, "", SourceHMAC, "true", true}},
		{"report, wrong secret passes unverified", signedRequest("alice", "web", "wrong-secret-012345"), want{200, "", SourceHMAC, "false", true}},
		{"report, no signature passes unverified", signedRequest("alice", "web", ""), want{200, "", SourceHMAC, "false", true}},
		{"off ignores signatures", signedRequest("alice", "tv", "garbage"), want{200, "", SourceHMAC, "false", true}},
		{"anonymous", httptest.NewRequest(http.MethodGet, "/", nil), want{200, "", SourceAnonymous, "false", false}},
	}
	var aliceUser string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, next, repl := serve(h, c.req)
			if w.Code != c.want.status {
				t.Fatalf("status %d, want %d (%s)", w.Code, c.want.status, w.Body)
			}
			if c.want.code != "" {
				if code, _ := errorBody(t, w); code != c.want.code {
					t.Fatalf("error %q, want %q", code, c.want.code)
				}
				if next.called {
					t.Fatal("a refused request reached the upstream")
				}
				if got, _ := repl.GetString("idlink.error"); got != c.want.code {
					t.Fatalf("{idlink.error} = %q", got)
				}
				return
			}
			got := next.header
			if got.Get(hdrIdentitySource) != c.want.source || got.Get(hdrIdentityVerified) != c.want.verified {
				t.Fatalf("source %q verified %q, want %q %q", got.Get(hdrIdentitySource), got.Get(hdrIdentityVerified), c.want.source, c.want.verified)
			}
			user := got.Get(hdrPlatformUserID)
			if c.want.user != (user != "") {
				t.Fatalf("X-Platform-User-Id = %q", user)
			}
			if user != "" {
				if aliceUser == "" {
					aliceUser = user
				}
				if user != aliceUser {
					t.Fatalf("alice resolved to %s, earlier to %s", user, aliceUser)
				}
				if got.Get(hdrExternalID) != "alice" {
					t.Fatalf("X-External-Id = %q", got.Get(hdrExternalID))
				}
				if v, _ := repl.GetString("http.auth.user.id"); v != user {
					t.Fatalf("{http.auth.user.id} = %q", v)
				}
				if v, _ := repl.GetString("idlink.user_id"); v != user {
					t.Fatalf("{idlink.user_id} = %q", v)
				}
			}
			if got.Get(hdrExternalIDSig) != "" {
				t.Fatal("the signature was forwarded")
			}
		})
	}
}

func TestHandlerStripsSpoofedHeadersOnEveryPath(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	h := newTestHandler(t, app, nil)
	spoof := func(r *http.Request) *http.Request {
		for _, k := range []string{"X-Platform-User-Id", "x_platform_user_id", "X_PLATFORM_USER_ID", "X-Identity-Verified", "X_Identity_Source", "x-verified-email", "X_Verified_Phone"} {
			r.Header[k] = append(r.Header[k], "spoofed", "spoofed-again")
		}
		return r
	}
	reqs := map[string]*http.Request{
		"verified":  spoof(signedRequest("bob", "ios", testSecret)),
		"report":    spoof(signedRequest("bob", "web", "bad-secret-0123456789")),
		"anonymous": spoof(httptest.NewRequest(http.MethodGet, "/", nil)),
		"preflight": func() *http.Request {
			r := spoof(httptest.NewRequest(http.MethodOptions, "/", nil))
			r.Header.Set("Access-Control-Request-Method", "POST")
			return r
		}(),
	}
	for name, r := range reqs {
		w, next, _ := serve(h, r)
		if !next.called {
			t.Fatalf("%s: did not reach the upstream (%d %s)", name, w.Code, w.Body)
		}
		for k, vs := range next.header {
			for _, v := range vs {
				if strings.Contains(v, "spoofed") {
					t.Errorf("%s: spoofed header %s reached the upstream", name, k)
				}
			}
		}
	}
	// On the error path the request never reaches the upstream at all.
	w, next, _ := serve(h, spoof(signedRequest("bob", "ios", "bad-secret-0123456789")))
	if w.Code != 401 || next.called {
		t.Fatalf("error path: %d, upstream called %v", w.Code, next.called)
	}
}

func TestHandlerPreflightPassesWithoutAuthentication(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), func(a *App) { a.Tenants["acme"].Anonymous = AnonymousDeny })
	h := newTestHandler(t, app, nil)
	r := httptest.NewRequest(http.MethodOptions, "/", nil)
	r.Header.Set("Origin", "https://app.example")
	r.Header.Set("Access-Control-Request-Method", "POST")
	r.Header.Set("Access-Control-Request-Headers", "x-external-id")
	_, next, _ := serve(h, r)
	if !next.called || next.header.Get("Origin") != "https://app.example" {
		t.Fatal("a CORS preflight must pass through")
	}
	// A plain OPTIONS is not a preflight.
	w, next, _ := serve(h, httptest.NewRequest(http.MethodOptions, "/", nil))
	if next.called || w.Code != 401 {
		t.Fatalf("plain OPTIONS with anonymous deny: %d", w.Code)
	}
}

func TestHandlerAnonymousDeny(t *testing.T) { forEachStore(t, testHandlerAnonymousDeny) }

func testHandlerAnonymousDeny(t *testing.T, redisURL string) {
	app := newTestApp(t, redisURL, func(a *App) { a.Tenants["acme"].Anonymous = AnonymousDeny })
	h := newTestHandler(t, app, nil)
	w, next, _ := serve(h, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != 401 || next.called {
		t.Fatalf("status %d", w.Code)
	}
	if code, _ := errorBody(t, w); code != apierr.CodeAuthRequired {
		t.Fatalf("code %q", code)
	}
	w, next, _ = serve(h, signedRequest("carol", "ios", testSecret))
	if w.Code != 200 || !next.called {
		t.Fatalf("identified request refused: %d", w.Code)
	}
}

func TestHandlerBadInput(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	h := newTestHandler(t, app, nil)
	cases := map[string]func(r *http.Request){
		"over-long external id": func(r *http.Request) {
			r.Header.Set(hdrExternalID, strings.Repeat("a", 257))
			r.Header.Set(hdrExternalIDSig, sign(testSecret, strings.Repeat("a", 257)))
		},
		"control character": func(r *http.Request) { r.Header[hdrExternalID] = []string{"a\x01b"} },
		"CR LF":             func(r *http.Request) { r.Header[hdrExternalID] = []string{"a\r\nX-Platform-User-Id: u_x"} },
		"duplicate":         func(r *http.Request) { r.Header[hdrExternalID] = []string{"alice", "mallory"} },
		"invalid UTF-8":     func(r *http.Request) { r.Header[hdrExternalID] = []string{"\xff\xfe"} },
		"huge signature": func(r *http.Request) {
			r.Header.Set(hdrExternalID, "a")
			r.Header.Set(hdrExternalIDSig, strings.Repeat("0", 4096))
		},
	}
	for name, mut := range cases {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		mut(r)
		w, next, _ := serve(h, r)
		if w.Code != 400 || next.called {
			t.Errorf("%s: status %d, upstream %v", name, w.Code, next.called)
			continue
		}
		if code, msg := errorBody(t, w); code != apierr.CodeInvalidRequest || strings.Contains(msg, "mallory") || strings.Contains(msg, "\n") {
			t.Errorf("%s: %q %q", name, code, msg)
		}
	}
}

func TestHandlerSignedEmailAndPhone(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	h := newTestHandler(t, app, nil)
	r := signedRequest("dave", "ios", testSecret)
	r.Header.Set(hdrUserEmail, "dave@example.com")
	r.Header.Set(hdrUserEmailSig, boundSig(testSecret, "email", "dave", "dave@example.com"))
	r.Header.Set(hdrUserPhone, "+3212345678")
	r.Header.Set(hdrUserPhoneSig, boundSig(testSecret, "phone", "dave", "+3212345678"))
	_, next, _ := serve(h, r)
	if next.header.Get(hdrVerifiedEmail) != "dave@example.com" || next.header.Get(hdrVerifiedPhone) != "+3212345678" {
		t.Fatalf("verified attributes missing: %v", next.header)
	}
	for _, k := range []string{hdrUserEmail, hdrUserEmailSig, hdrUserPhone, hdrUserPhoneSig} {
		if next.header.Get(k) != "" {
			t.Fatalf("%s forwarded", k)
		}
	}

	bad := signedRequest("dave", "ios", testSecret)
	bad.Header.Set(hdrUserEmail, "ceo@example.com")
	bad.Header.Set(hdrUserEmailSig, sign("wrong-secret-01234567", "ceo@example.com"))
	if w, _, _ := serve(h, bad); w.Code != 401 {
		t.Fatalf("bad email signature in enforce mode: %d", w.Code)
	}
	report := signedRequest("dave", "web", testSecret)
	report.Header.Set(hdrUserEmail, "ceo@example.com")
	report.Header.Set(hdrUserEmailSig, sign("wrong-secret-01234567", "ceo@example.com"))
	w, next, _ := serve(h, report)
	if w.Code != 200 || next.header.Get(hdrVerifiedEmail) != "" {
		t.Fatalf("report mode: %d, email %q", w.Code, next.header.Get(hdrVerifiedEmail))
	}
	unsigned := signedRequest("dave", "ios", testSecret)
	unsigned.Header.Set(hdrUserEmail, "ceo@example.com")
	if _, next, _ := serve(h, unsigned); next.header.Get(hdrVerifiedEmail) != "" {
		t.Fatal("an unsigned email was injected as verified")
	}
}

func TestHandlerForwardCredentials(t *testing.T) {
	app := newTestApp(t, testRedisURL(t), nil)
	h := newTestHandler(t, app, func(h *Handler) { h.ForwardCredentials = true })
	_, next, _ := serve(h, signedRequest("erin", "ios", testSecret))
	if next.header.Get(hdrExternalIDSig) == "" {
		t.Fatal("forward_credentials must keep the signature")
	}
	if next.header.Get(hdrPlatformUserID) == "" {
		t.Fatal("identity missing")
	}
}

// TestResolveConcurrentFirstSight: many concurrent first requests for one
// external id, through two separate apps (two instances) sharing one
// Redis, end with exactly one user.
func TestResolveConcurrentFirstSight(t *testing.T) { forEachStore(t, testResolveConcurrentFirstSight) }

func testResolveConcurrentFirstSight(t *testing.T, url string) {
	if url == "" {
		t.Skip("needs a shared Redis (two instances)")
	}
	apps := []*App{newTestApp(t, url, nil), newTestApp(t, url, nil)}
	handlers := []*Handler{newTestHandler(t, apps[0], nil), newTestHandler(t, apps[1], nil)}
	const n = 200
	users := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, next, _ := serve(handlers[i%2], signedRequest("first-sight", "ios", testSecret))
			if next.header != nil {
				users[i] = next.header.Get(hdrPlatformUserID)
			}
		}()
	}
	wg.Wait()
	for i, u := range users {
		if u == "" || u != users[0] {
			t.Fatalf("request %d resolved to %q, request 0 to %q", i, u, users[0])
		}
	}
}

// TestPresentedContext: the value nested idlink handlers share is the
// request's context itself (presented embeds its parent). It passes on the
// parent's values, deadline and cancellation, never prints the credentials
// when formatted, and an inner handler's identity header values do not
// land where the outer handler's are (each has its own backing array).
func TestPresentedContext(t *testing.T) {
	app := newTestApp(t, "", func(a *App) {
		// Another tenant with the same platform: another user id.
		a.Tenants["beta"] = &Tenant{Platforms: map[string]*Platform{"ios": {Secrets: []string{testSecret}, Mode: ModeEnforce}}}
	})
	outer := newTestHandler(t, app, nil)
	inner := newTestHandler(t, app, func(h *Handler) { h.Tenant = "beta" })
	sig := sign(testSecret, "ctx-user")
	r := signedRequest("ctx-user", "ios", testSecret)
	type parentKey struct{}
	parent, cancel := context.WithCancel(context.WithValue(r.Context(), parentKey{}, "from the parent"))
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(parent, caddy.ReplacerCtxKey, repl))

	var outerVals [][]string // the outer handler's header values, as it set them
	var innerCtx context.Context
	last := &recordingNext{}
	innerNext := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		innerCtx = r.Context()
		return last.ServeHTTP(w, r)
	})
	outerNext := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for _, name := range []string{hdrIdentitySource, hdrIdentityVerified, hdrPlatformUserID, hdrExternalID} {
			vs := r.Header[name]
			outerVals = append(outerVals, vs, append([]string(nil), vs...))
		}
		return inner.ServeHTTP(w, r, innerNext)
	})
	w := httptest.NewRecorder()
	if err := outer.ServeHTTP(w, r, outerNext); err != nil || w.Code != http.StatusOK || !last.called {
		t.Fatalf("nested handlers: %v %d, upstream reached: %v", err, w.Code, last.called)
	}
	if got := last.header.Get(hdrIdentitySource); got != SourceHMAC {
		t.Fatalf("the inner handler did not verify the credentials the outer one read: source %q", got)
	}
	if got := last.header.Get(hdrPlatformUserID); got == "" || got == outerVals[5][0] {
		t.Fatalf("the inner tenant's user id %q is not its own (the outer's: %q)", got, outerVals[5][0])
	}
	for i := 0; i < len(outerVals); i += 2 {
		if len(outerVals[i]) != 1 || outerVals[i][0] != outerVals[i+1][0] {
			t.Errorf("the inner handler wrote into the outer one's header values: %q, was %q", outerVals[i], outerVals[i+1])
		}
	}

	if _, ok := innerCtx.Value(presentedKey{}).(*presented); !ok {
		t.Fatal("the request's context does not carry the presented credentials")
	}
	if innerCtx.Value(parentKey{}) != "from the parent" || innerCtx.Value(caddy.ReplacerCtxKey) != repl {
		t.Error("the parent context's values are lost")
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(f, innerCtx); strings.Contains(s, sig) || strings.Contains(s, "ctx-user") {
			t.Errorf("formatting the context with %s prints the credentials: %s", f, s)
		}
	}
	child, stop := context.WithCancel(innerCtx)
	defer stop()
	cancel()
	select {
	case <-innerCtx.Done():
	default:
		t.Fatal("cancelling the parent does not end the request's context")
	}
	<-child.Done() // a context derived from it ends too
	if !errors.Is(innerCtx.Err(), context.Canceled) {
		t.Errorf("Err: %v", innerCtx.Err())
	}
}
