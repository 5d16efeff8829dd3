package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/caddyfile/*.caddyfiletest")

// TestCaddyfileAdapt adapts every documented Caddyfile form in
// testdata/caddyfile and compares the JSON (or the error) with the one
// below the ---------- line, as Caddy's own caddyfile_adapt tests do.
// Run with -update to rewrite the expected JSON after a deliberate change.
func TestCaddyfileAdapt(t *testing.T) {
	files, _ := filepath.Glob("testdata/caddyfile/*.caddyfiletest")
	if len(files) < 20 {
		t.Fatalf("the corpus has %d files; expected the full corpus", len(files))
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, ok := strings.Cut(string(raw), "----------\n")
			if !ok {
				t.Fatalf("no ---------- separator")
			}
			out, _, err := adapter.Adapt([]byte(in), map[string]any{"filename": "Caddyfile"})
			if wantErr, isErr := strings.CutPrefix(strings.TrimSpace(want), "error: "); isErr {
				if err == nil || !strings.Contains(err.Error(), wantErr) {
					t.Fatalf("want an error containing %q, got %v", wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "\t"); err != nil {
				t.Fatal(err)
			}
			got := pretty.String() + "\n"
			if *update {
				if err := os.WriteFile(f, []byte(in+"----------\n"+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != want {
				t.Errorf("adapted JSON differs from %s (run go test -run TestCaddyfileAdapt -update to accept):\n%s", f, got)
			}
		})
	}
}

// TestConfigChecksAgree: a value the Caddyfile refuses, the JSON config
// refuses too, in the same words (both call one check).
func TestConfigChecksAgree(t *testing.T) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, c := range []struct{ caddyfile, json string }{
		{"{\n\tidlink {\n\t\ton_store_error maybe\n\t}\n}\n", `{"on_store_error":"maybe"}`},
		{"{\n\tidlink {\n\t\ttenant Acme! {\n\t\t}\n\t}\n}\n", `{"tenants":{"Acme!":{}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tanonymous maybe\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"anonymous":"maybe"}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tsso {\n\t\t\t\ttoken_info_url https://sso.example.com/i\n\t\t\t\taudience sdk\n\t\t\t\tclient_secret s\n\t\t\t}\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"sso":{"token_info_url":"https://sso.example.com/i","audience":["sdk"],"client_secret":"s"}}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tsso {\n\t\t\t\ttoken_info_url https://sso.example.com/i\n\t\t\t\taudience sdk\n\t\t\t\tauth_method bearer\n\t\t\t}\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"sso":{"token_info_url":"https://sso.example.com/i","audience":["sdk"],"auth_method":"bearer"}}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tcookie {\n\t\t\t\tdomain .acme.com\n\t\t\t\tsame_site none\n\t\t\t}\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"cookie":{"domain":".acme.com","same_site":"none"}}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tcookie {\n\t\t\t\tdomain localhost\n\t\t\t}\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"cookie":{"domain":"localhost"}}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tsigned_attributes raw\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"signed_attributes":"raw"}}}`},
		{"{\n\tidlink {\n\t\ttenant acme {\n\t\t\tplatform ios {\n\t\t\t\tmode strict\n\t\t\t}\n\t\t}\n\t}\n}\n", `{"tenants":{"acme":{"platforms":{"ios":{"mode":"strict","secrets":["s-0123456789abcdef"]}}}}}`},
	} {
		_, _, perr := adapter.Adapt([]byte(c.caddyfile), map[string]any{"filename": "Caddyfile"})
		if perr == nil {
			t.Fatalf("the Caddyfile accepted %q", c.caddyfile)
		}
		sentence := perr.Error()
		sentence = sentence[strings.Index(sentence, "': ")+3:]
		sentence = sentence[:strings.LastIndex(sentence, ", at Caddyfile")]
		lerr := caddy.Load([]byte(`{"apps":{"idlink":`+c.json+`}}`), true)
		if lerr == nil {
			_ = caddy.Stop()
			t.Fatalf("the JSON config accepted %s", c.json)
		}
		if !strings.Contains(lerr.Error(), sentence) {
			t.Errorf("Caddyfile: %q\nJSON:      %q", sentence, lerr.Error())
		}
	}
}
