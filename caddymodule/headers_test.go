package caddymodule

import (
	"net/http"
	"strings"
	"testing"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

func TestHeaderSetStripsEverySpelling(t *testing.T) {
	s := newHeaderSet(identityHeaders, credentialHeaders)
	h := http.Header{}
	spoofed := []string{
		"X-Platform-User-Id", "x-platform-user-id", "X-PLATFORM-USER-ID", "X_Platform_User_Id",
		"x_platform_user_id", "X-Platform_User-Id", "X-Identity-Verified", "X_IDENTITY_VERIFIED",
		"X-Identity-Source", "X-Verified-Email", "x_verified_phone", "X-External-Id-Signature",
		"X-Sso-Token", "X_SSO_TOKEN", "X.Platform.User.Id", "x.identity_verified", "X-Contact-Token", "X-Session-Id", "X-Install-Id", "X-External-Id",
	}
	for _, k := range spoofed {
		h[k] = []string{"spoof", "spoof2"} // raw keys: non-canonical spellings stay as sent
	}
	keep := []string{"Authorization-Extra", "X-Platform", "X-Platform-User", "X-Request-Id", "Accept"}
	for _, k := range keep {
		h[k] = []string{"ok"}
	}
	s.strip(h)
	for _, k := range spoofed {
		if _, ok := h[k]; ok {
			t.Errorf("%s survived stripping", k)
		}
	}
	for _, k := range keep {
		if h[k] == nil {
			t.Errorf("%s was stripped but is not an identity header", k)
		}
	}
}

func TestValidHeaderValue(t *testing.T) {
	cases := []struct {
		v    string
		max  int
		want bool
	}{
		{"alice", 256, true},
		{"ünïcødé 用户", 256, true},
		{"", 256, false},
		{strings.Repeat("a", 256), 256, true},
		{strings.Repeat("a", 257), 256, false},
		{"a\r\nX-Platform-User-Id: evil", 256, false},
		{"a\nb", 256, false},
		{"a\x00b", 256, false},
		{"a\x7fb", 256, false},
		{"a\u0085b", 256, false}, // C1 NEL
		{"a\u2028b", 256, false},
		{"\xff\xfe", 256, false}, // invalid UTF-8
		{"tab\tinside", 256, false},
	}
	for _, c := range cases {
		if got := verify.HeaderValue(c.v, c.max); got != c.want {
			t.Errorf("verify.HeaderValue(%q) = %v, want %v", c.v, got, c.want)
		}
	}
}

func TestReadCredentials(t *testing.T) {
	h := http.Header{}
	h.Set("X-External-Id", "alice")
	h.Set("X-External-Id-Signature", "ab")
	h.Set("X-Platform", "ios")
	c, err := readCredentials(h)
	if err != nil || c.ExternalID != "alice" || c.ExternalIDSig != "ab" || c.Platform != "ios" {
		t.Fatalf("readCredentials = %+v, %v", c, err)
	}

	dup := http.Header{}
	dup.Add("X-External-Id", "alice")
	dup.Add("X-External-Id", "mallory")
	if _, err := readCredentials(dup); err == nil || err.Code != apierr.CodeInvalidRequest {
		t.Fatalf("a duplicated credential must be invalid_request, got %v", err)
	}

	long := http.Header{}
	long.Set("X-External-Id", strings.Repeat("a", verify.MaxExternalIDLen+1))
	if _, err := readCredentials(long); err == nil || err.Status != http.StatusBadRequest {
		t.Fatalf("an over-long external id must be 400, got %v", err)
	}
}

func FuzzReadCredentials(f *testing.F) {
	f.Add("alice", "00", "ios")
	f.Add("a\r\nb", "zz", "")
	f.Add(strings.Repeat("é", 200), strings.Repeat("f", 64), "web")
	f.Fuzz(func(t *testing.T, ext, sig, platform string) {
		h := http.Header{}
		h["X-External-Id"] = []string{ext}
		h["X-External-Id-Signature"] = []string{sig}
		h["X-Platform"] = []string{platform}
		c, err := readCredentials(h)
		if err != nil {
			return
		}
		for _, v := range []string{c.ExternalID, c.ExternalIDSig, c.Platform} {
			if strings.ContainsAny(v, "\r\n\x00") {
				t.Fatalf("control character accepted: %q", v)
			}
		}
		if len(c.ExternalID) > verify.MaxExternalIDLen {
			t.Fatalf("over-long external id accepted")
		}
	})
}
