package verify

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecodeText(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"alice", "alice", true},
		{"zoë", "zoë", true}, // raw UTF-8, as native SDKs send it
		{"utf-8''zo%C3%AB", "zoë", true},
		{"UTF-8''zo%c3%ab", "zoë", true},                 // charset and hex digits in any case
		{"utf-8'fr'zo%C3%AB", "zoë", true},               // the language is ignored
		{"utf-8''%E5%B1%B1%E7%94%B0", "山田", true},        // above U+00FF: fetch() cannot send it raw
		{"utf-8''it's(me)*", "it's(me)*", true},          // encodeURIComponent leaves '()* alone
		{"utf-8''alice", "alice", true},                  // an encoded ASCII id is the same id
		{"utf-8''utf-8%27%27x", "utf-8''x", true},        // how to send an id that looks encoded
		{"zo\xeb", "", false},                            // Latin-1, what fetch() sends for "zoë"
		{"utf-8''zo%EB", "", false},                      // percent-encoded Latin-1 is not UTF-8
		{"utf-8''zo%C3", "", false},                      // truncated sequence
		{"utf-8''zo%C", "", false},                       // truncated escape
		{"utf-8''zo%G0", "", false},                      // not hex
		{"utf-8''a b", "", false},                        // a space must be encoded
		{"utf-8''a%0Ab", "", false},                      // a control character, even encoded
		{"utf-8''a%C2%85b", "", false},                   // C1 control (NEL)
		{"utf-8''", "", false},                           // empty
		{"utf-8'zo%C3%AB", "", false},                    // no second quote
		{"iso-8859-1''zo%EB", "iso-8859-1''zo%EB", true}, // another charset is no encoding: the literal id
		{"utf-8'f r'x", "", false},                       // a language is letters, digits and '-'
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := DecodeText(tt.in, 64)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("DecodeText(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	// The bound is on the decoded text.
	if _, ok := DecodeText("utf-8''"+strings.Repeat("%C3%AB", 32), 64); !ok {
		t.Error("32 × ë (64 bytes) refused with max 64")
	}
	if _, ok := DecodeText("utf-8''"+strings.Repeat("%C3%AB", 33), 64); ok {
		t.Error("33 × ë (66 bytes) accepted with max 64")
	}
}

func TestEncodeText(t *testing.T) {
	for in, want := range map[string]string{
		"alice":        "alice",
		"a b":          "a b", // plain ASCII is sent as is
		"zoë":          "utf-8''zo%C3%AB",
		"山田":           "utf-8''%E5%B1%B1%E7%94%B0",
		"utf-8''x":     "utf-8''utf-8%27%27x",
		"UTF-8'fr'x y": "utf-8''UTF-8%27fr%27x%20y",
	} {
		if got := EncodeText(in); got != want {
			t.Errorf("EncodeText(%q) = %q, want %q", in, got, want)
		}
		if back, ok := DecodeText(EncodeText(in), 256); !ok || back != in {
			t.Errorf("DecodeText(EncodeText(%q)) = %q, %v", in, back, ok)
		}
	}
}

// FuzzDecodeText: whatever a client sends, a decoded value is valid header
// text within the bound, and every valid text survives encoding.
func FuzzDecodeText(f *testing.F) {
	for _, s := range []string{"alice", "zoë", "utf-8''zo%C3%AB", "utf-8'en'%E5%B1%B1", "zo\xeb", "utf-8''%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, ok := DecodeText(s, 64); ok && (!utf8.ValidString(got) || !HeaderValue(got, 64)) {
			t.Fatalf("DecodeText(%q) = %q: not valid header text", s, got)
		}
		if HeaderValue(s, 64) {
			if back, ok := DecodeText(EncodeText(s), 64); !ok || back != s {
				t.Fatalf("round trip of %q: %q, %v", s, back, ok)
			}
		}
	})
}
