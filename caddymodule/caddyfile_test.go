package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
