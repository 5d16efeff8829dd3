package caddymodule

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Non-ASCII external ids. A native SDK sends the id as UTF-8; a browser
// cannot: fetch() refuses header values above U+00FF and sends the rest as
// Latin-1. Both send the RFC 8187 form utf-8''<percent-encoded UTF-8>, and
// the signature is over the decoded UTF-8 bytes, so one id is one user
// however it travelled. These tests run through real Caddy; the last one
// sends from Node's fetch(), which applies the browsers' header rules.

func TestNonASCIIExternalIDThroughCaddy(t *testing.T) {
	e := startE2E(t, testRedisURL(t))
	const id = "zoë"

	status, body, raw := e.do("GET", "/app", signed(id, e2eNew))
	if status != 200 || raw == nil || raw.Get("X-Identity-Verified") != "true" {
		t.Fatalf("raw UTF-8 id: %d %s %v", status, body, raw)
	}
	user := raw.Get("X-Platform-User-Id")
	if got := raw.Get("X-External-Id"); got != id {
		t.Errorf("upstream X-External-Id = %q, want the decoded %q", got, id)
	}

	enc := [][2]string{{"X-External-Id", "utf-8''zo%C3%AB"}, {"X-External-Id-Signature", sign(e2eNew, id)}}
	status, body, got := e.do("GET", "/app", enc)
	if status != 200 || got == nil || got.Get("X-Identity-Verified") != "true" {
		t.Fatalf("encoded id: %d %s", status, body)
	}
	if got.Get("X-Platform-User-Id") != user || got.Get("X-External-Id") != id {
		t.Errorf("encoded id: user %q ext %q, want %q %q (the same user as the raw form)",
			got.Get("X-Platform-User-Id"), got.Get("X-External-Id"), user, id)
	}

	// The signature is over the decoded bytes, never the encoded text: a
	// signature of the encoding does not verify.
	status, _, _ = e.do("GET", "/app", [][2]string{{"X-External-Id", "utf-8''zo%C3%AB"},
		{"X-External-Id-Signature", sign(e2eNew, "utf-8''zo%C3%AB")}})
	if status != 401 {
		t.Errorf("signature of the encoded text: %d, want 401", status)
	}

	// What a browser sends for "zoë" when the SDK does not encode it:
	// Latin-1. Refused, and the message says how to send it.
	status, body, got = e.do("GET", "/app", [][2]string{{"X-External-Id", "zo\xeb"}, {"X-External-Id-Signature", sign(e2eNew, id)}})
	if status != 400 || got != nil || !strings.Contains(body, "utf-8''") {
		t.Errorf("Latin-1 id: %d %s (upstream reached: %v)", status, body, got != nil)
	}
	// A malformed encoding is a bad request, not an id.
	for _, v := range []string{"utf-8''zo%C3", "utf-8''zo%EB", "utf-8''a%0Ab"} {
		if status, body, got := e.do("GET", "/app", [][2]string{{"X-External-Id", v}}); status != 400 || got != nil {
			t.Errorf("%q: %d %s", v, status, body)
		}
	}
	// The encoded form cannot smuggle a spoofed identity header either:
	// the decoded id is checked like any other.
	status, _, got = e.do("GET", "/app", [][2]string{{"X-External-Id", "utf-8''alice%0D%0AX-Platform-User-Id: u_spoofed"}})
	if status != 400 || got != nil {
		t.Errorf("CRLF in an encoded id: %d", status)
	}
}

// fetchScript sends, with fetch(), the ids given in the environment and
// prints one JSON line per attempt: what the upstream received, or the
// error fetch() raised before sending.
const fetchScript = `
const base = process.env.BASE, sig = process.env.SIG;
(async () => {
  for (const [name, value] of [["encoded", "utf-8''" + encodeURIComponent(process.env.ID)], ["raw", process.env.ID]]) {
    try {
      const r = await fetch(base + "/app", {headers: {"X-External-Id": value, "X-External-Id-Signature": sig}});
      console.log(JSON.stringify({name, status: r.status, body: await r.text()}));
    } catch (e) {
      console.log(JSON.stringify({name, error: e.name}));
    }
  }
})();
`

func TestNonASCIIExternalIDFromFetch(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node is not installed (.ci/run installs Debian's nodejs)")
		}
		t.Skip("node not installed")
	}
	e := startE2E(t, testRedisURL(t))
	for _, tc := range []struct {
		id      string
		rawWant string // what fetch() does with the raw id: "throws" or "400"
	}{
		{"zoë", "400"},   // ë is Latin-1: sent as the byte 0xEB, not UTF-8
		{"山田", "throws"}, // above U+00FF: fetch() refuses the header
		{"Ὀδυσσεύς", "throws"},
	} {
		cmd := exec.Command(node, "-e", fetchScript)
		cmd.Env = append(os.Environ(), "BASE="+e.base, "ID="+tc.id, "SIG="+sign(e2eNew, tc.id))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("node: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 {
			t.Fatalf("%s: node printed %q", tc.id, out)
		}
		var res [2]struct {
			Name, Body, Error string
			Status            int
		}
		for i, l := range lines {
			if err := json.Unmarshal([]byte(l), &res[i]); err != nil {
				t.Fatalf("%s: %q: %v", tc.id, l, err)
			}
		}
		encoded, raw := res[0], res[1]
		var upstream map[string][]string
		if encoded.Status != 200 || json.Unmarshal([]byte(encoded.Body), &upstream) != nil {
			t.Fatalf("%s encoded by the page: %d %s %s", tc.id, encoded.Status, encoded.Error, encoded.Body)
		}
		if upstream["X-External-Id"][0] != tc.id || upstream["X-Identity-Verified"][0] != "true" {
			t.Errorf("%s: upstream got X-External-Id %q verified %q", tc.id, upstream["X-External-Id"], upstream["X-Identity-Verified"])
		}
		switch {
		case tc.rawWant == "throws" && raw.Error != "TypeError":
			t.Errorf("%s raw: %+v, want fetch() to throw TypeError", tc.id, raw)
		case tc.rawWant == "400" && raw.Status != 400:
			t.Errorf("%s raw: %+v, want 400", tc.id, raw)
		}
	}
}
