package caddymodule

import (
	"strings"
	"testing"
	"time"
)

// TestRegulationCaddyfile: the block, its defaults, and every refusal,
// worded alike whether the value came from a Caddyfile or JSON.
func TestRegulationCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Regulation
		err  string
	}{
		{"regulation {\n max_failures 5\n window 30s\n ban 1h\n}", Regulation{5, caddyDuration(30 * time.Second), caddyDuration(time.Hour)}, ""},
		{"regulation {\n}", Regulation{}, ""},
		{"regulation 5", Regulation{}, "wrong argument count"},
		{"regulation {\n max_failures 0\n}", Regulation{}, "from 1 to"},
		{"regulation {\n max_failures many\n}", Regulation{}, "from 1 to"},
		{"regulation {\n window 10ms\n}", Regulation{}, "at least 1s"},
		{"regulation {\n ban forever\n}", Regulation{}, "at least 1s"},
		{"regulation {\n ban 1m\n ban 2m\n}", Regulation{}, "already specified"},
		{"regulation {\n limit 3\n}", Regulation{}, "unrecognized regulation subdirective"},
		{"regulation {\n}\nregulation {\n}", Regulation{}, "regulation already specified"},
	} {
		app := new(App)
		err := app.UnmarshalCaddyfile(caddyfileDispenser("idlink {\n tenant acme {\n" + tc.in + "\n}\n}"))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := app.Tenants["acme"].Regulation; got == nil || *got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.in, got, tc.want)
		}
	}
	// JSON: defaults filled, bad values refused.
	g := &Regulation{}
	if p, err := g.provision(); err != nil || p.Max != 20 || p.Window != time.Minute || p.Ban != 10*time.Minute {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	for _, bad := range []Regulation{{MaxFailures: -1}, {Window: caddyDuration(time.Millisecond)}, {Ban: caddyDuration(-time.Second)}} {
		if _, err := bad.provision(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if p, err := (*Regulation)(nil).provision(); p != nil || err != nil {
		t.Fatalf("none: %+v %v", p, err)
	}
}
