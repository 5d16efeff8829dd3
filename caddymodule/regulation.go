package caddymodule

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/store"
)

// Regulation defaults and bounds.
const (
	defaultMaxFailures = 20
	defaultFailWindow  = time.Minute
	defaultBan         = 10 * time.Minute
	maxMaxFailures     = 1_000_000
	minRegulationTime  = time.Second
)

// Regulation is a tenant's regulation of failed verifications: a client
// (IP address, IPv6 by /64) with more than MaxFailures failed
// verifications within Window is answered 429 too_many_failures for Ban,
// on every instance; a session whose requests do is ended (reason
// too_many_failures, with its session.ended event, so the app can log the
// user out). Failed verifications are bad signatures and tokens,
// credentials that name different users, and unknown session or install
// ids. Counting costs one Redis round trip on the failure path only.
type Regulation struct {
	// MaxFailures is how many failures a window allows. Default: 20.
	MaxFailures int `json:"max_failures,omitempty"`
	// Window is the counting window. Default: 1m.
	Window caddy.Duration `json:"window,omitempty"`
	// Ban is how long a client that exceeded the limit is refused.
	// Default: 10m.
	Ban caddy.Duration `json:"ban,omitempty"`
}

// provision applies the defaults, checks the values and answers the
// store's policy.
func (g *Regulation) provision() (*store.FailurePolicy, error) {
	if g == nil {
		return nil, nil
	}
	if g.MaxFailures == 0 {
		g.MaxFailures = defaultMaxFailures
	}
	if g.Window == 0 {
		g.Window = caddy.Duration(defaultFailWindow)
	}
	if g.Ban == 0 {
		g.Ban = caddy.Duration(defaultBan)
	}
	if err := checkMaxFailures(g.MaxFailures); err != nil {
		return nil, err
	}
	for _, d := range []struct {
		name string
		v    caddy.Duration
	}{{"window", g.Window}, {"ban", g.Ban}} {
		if err := checkRegulationTime(d.name, time.Duration(d.v)); err != nil {
			return nil, err
		}
	}
	return &store.FailurePolicy{Max: g.MaxFailures, Window: time.Duration(g.Window), Ban: time.Duration(g.Ban)}, nil
}

func checkMaxFailures(n int) error {
	if n < 1 || n > maxMaxFailures {
		return fmt.Errorf("regulation max_failures must be from 1 to %d, not %d", maxMaxFailures, n)
	}
	return nil
}

func checkRegulationTime(name string, d time.Duration) error {
	if d < minRegulationTime {
		return fmt.Errorf("regulation %s must be at least %v, not %v", name, minRegulationTime, d)
	}
	return nil
}

// parseRegulation parses
//
//	regulation {
//		max_failures <n>
//		window <duration>
//		ban <duration>
//	}
func parseRegulation(d *caddyfile.Dispenser) (*Regulation, error) {
	g := new(Regulation)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return nil, d.Errf("regulation %s already specified", sub)
		}
		seen[sub] = true
		var v string
		if err := oneArg(d, &v); err != nil {
			return nil, err
		}
		switch sub {
		case "max_failures":
			n, err := strconv.Atoi(v)
			if err == nil {
				err = checkMaxFailures(n)
			}
			if err != nil {
				return nil, d.Errf("regulation max_failures must be a number from 1 to %d, not '%s'", maxMaxFailures, v)
			}
			g.MaxFailures = n
		case "window", "ban":
			dur, err := caddy.ParseDuration(v)
			if err == nil {
				err = checkRegulationTime(sub, dur)
			}
			if err != nil {
				return nil, d.Errf("regulation %s must be a duration of at least %v, not '%s'", sub, minRegulationTime, v)
			}
			if sub == "window" {
				g.Window = caddy.Duration(dur)
			} else {
				g.Ban = caddy.Duration(dur)
			}
		default:
			return nil, d.Errf("unrecognized regulation subdirective '%s' (max_failures, window, ban)", sub)
		}
	}
	return g, nil
}

// clientSubject is what the regulation counts a request's failures under:
// Caddy's client IP (which honours the server's trusted_proxies), else
// the connection's address.
func clientSubject(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip == "" {
		ip, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	return identity.ClientSubject(ip)
}

// checkBan is the first step of a request a regulated tenant verifies: the
// client's subject (for failed), or the refusal of a banned client (no
// Redis call). An unregulated tenant answers "" and nil.
func checkBan(t *Tenant, r *http.Request) (subject string, banned *apiError) {
	if t.Regulation == nil {
		return "", nil
	}
	subject = clientSubject(r)
	return subject, t.id.Banned(subject)
}

// failed counts a refusal of a regulated tenant's verification (see
// identity.Domain.Failed) and answers what to send instead.
func failed(t *Tenant, r *http.Request, subject, sessionID string, e *apiError) *apiError {
	if subject == "" {
		return e
	}
	return t.id.Failed(r.Context(), subject, sessionID, e)
}
