package caddymodule

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/idlink/idlink/caddymodule/internal/identity"
)

func testCookie(t *testing.T) *Cookie {
	t.Helper()
	c := &Cookie{Domain: ".acme.test"}
	if err := c.provision(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCookieStrip: idlink's cookies go, in any case and on every Cookie
// line; the app's cookies stay as sent; a line left empty goes.
func TestCookieStrip(t *testing.T) {
	c := testCookie(t)
	h := http.Header{"Cookie": {
		"theme=dark; __Secure-idlink-session=s_1; cart=42",
		"__secure-idlink-INSTALL=i_1",
		"__Secure-idlink-sessionx=kept; a=b=c",
	}}
	c.strip(h)
	want := []string{"theme=dark; cart=42", "__Secure-idlink-sessionx=kept; a=b=c"}
	if !reflect.DeepEqual(h["Cookie"], want) {
		t.Fatalf("Cookie after strip: %q, want %q", h["Cookie"], want)
	}
	h = http.Header{"Cookie": {"__Secure-idlink-install=i_1"}}
	if c.strip(h); h["Cookie"] != nil {
		t.Fatalf("an emptied Cookie header stays: %q", h["Cookie"])
	}
}

// TestCookieMerge: a cookie fills an absent header; an equal header is
// not a cookie credential; a different one is identity_mismatch; two
// copies or a control character are invalid_request; another tenant's
// prefix is not read.
func TestCookieMerge(t *testing.T) {
	c := testCookie(t)
	for _, tc := range []struct {
		name, cookie, installHdr string
		used                     bool
		code                     string
	}{
		{"fills", "__Secure-idlink-install=i_1; x=y", "", true, ""},
		{"equal header", "__Secure-idlink-install=i_1", "i_1", false, ""},
		{"mismatch", "__Secure-idlink-install=i_1", "i_2", false, "identity_mismatch"},
		{"twice", "__Secure-idlink-install=i_1; __Secure-idlink-install=i_2", "", false, "invalid_request"},
		{"control", "__Secure-idlink-install=i_\x01", "", false, "invalid_request"},
		{"other name", "idlink-install=i_1", "", false, ""},
	} {
		creds := identity.Credentials{InstallID: tc.installHdr}
		used, e := c.merge([]string{tc.cookie}, &creds)
		code := ""
		if e != nil {
			code = e.Code
		}
		if used != tc.used || code != tc.code {
			t.Errorf("%s: used %v code %q, want %v %q", tc.name, used, code, tc.used, tc.code)
		}
	}
}
