package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	// The in-process Caddy has the standard modules, like a stock Caddy
	// binary, so that Caddyfiles given to StartCaddy can use respond,
	// reverse_proxy, log, etc. next to idlink's own directives (which the
	// calling test registers by importing idlink's Caddy module).
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

const (
	// caddyLockTimeout bounds the wait for another in-process Caddy to end.
	caddyLockTimeout = 2 * time.Minute
	// caddyListenTimeout bounds the wait for Caddy's listeners to answer.
	caddyListenTimeout = 10 * time.Second
)

var (
	// caddySlot holds a token while an in-process Caddy runs: caddy.Load
	// and caddy.Stop act on process-wide state, so only one in-process
	// Caddy can run at a time.
	caddySlot = make(chan struct{}, 1)

	caddyOwnerMu sync.Mutex
	caddyOwner   string // name of the test running the in-process Caddy
)

// Caddy is the Caddy instance running inside the test binary, started by
// StartCaddy.
//
// caddy.Load is process-global, so only ONE in-process Caddy can run at a
// time: StartCaddy waits (up to 2 minutes, then fails the test) until the
// Caddy of another test has been stopped by that test's cleanup. Tests that
// use StartCaddy must therefore not run in parallel with each other (no
// t.Parallel), and a test must not call StartCaddy again, nor start it in a
// subtest, while its own Caddy is running: use Reload instead.
type Caddy struct {
	dataDir string // Caddy's storage, when the Caddyfile sets none
}

// StartCaddy adapts caddyfile with the Caddyfile adapter and runs it in
// process with caddy.Load. The admin endpoint is turned off unless the
// Caddyfile configures it (the "admin" global option), the config is never
// autosaved, and unless the Caddyfile sets a storage, Caddy's storage is in
// t.TempDir(). StartCaddy waits until every TCP listener of the HTTP app
// accepts connections (at most 10 s) and calls caddy.Stop when the test ends.
// Put ports in the Caddyfile yourself, e.g. with FreePort. See Caddy for why
// such tests must not run in parallel.
func StartCaddy(t testing.TB, caddyfile string) *Caddy {
	t.Helper()
	c := &Caddy{dataDir: t.TempDir()}

	select {
	case caddySlot <- struct{}{}:
	case <-time.After(caddyLockTimeout):
		caddyOwnerMu.Lock()
		owner := caddyOwner
		caddyOwnerMu.Unlock()
		t.Fatalf("testenv: StartCaddy waited %v for the in-process Caddy of test %q to stop; tests using StartCaddy must not run in parallel or nest", caddyLockTimeout, owner)
	}
	caddyOwnerMu.Lock()
	caddyOwner = t.Name()
	caddyOwnerMu.Unlock()
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("testenv: caddy.Stop: %v", err)
		}
		caddyOwnerMu.Lock()
		caddyOwner = ""
		caddyOwnerMu.Unlock()
		<-caddySlot
	})

	c.load(t, caddyfile)
	return c
}

// Reload adapts caddyfile and loads it into the running in-process Caddy
// with caddy.Load, as StartCaddy does, then waits for its listeners. It
// fails t if the new config does not adapt or load; Caddy then keeps
// running the previous config.
//
// A reload replaces Caddy's servers. Caddy binds the new servers' sockets
// with SO_REUSEPORT next to the old ones, and caddy.Load returns once the
// old servers have begun shutting down, not once their sockets are closed:
// until then the kernel hands new connections to either socket, and one
// queued on an old socket is answered by the old config or reset when that
// socket closes ("connection reset by peer", or EOF, on the first request).
// A client of a reloading Caddy should expect exactly that (and retry an
// idempotent request on a new connection); Reload instead returns only when
// every old socket on the new config's addresses is closed, so the next
// connection reaches the new config. It also closes the idle connections
// of http.DefaultTransport, whose keep-alive connections to the old
// servers are closed by their shutdown.
func (c *Caddy) Reload(t testing.TB, caddyfile string) {
	t.Helper()
	c.load(t, caddyfile)
	if tr, ok := http.DefaultTransport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
}

func (c *Caddy) load(t testing.TB, text string) {
	t.Helper()
	cfgJSON, listen, err := adaptCaddyfile(text, c.dataDir)
	if err != nil {
		t.Fatalf("testenv: adapting the Caddyfile: %v\n%s", err, text)
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("testenv: caddy.Load: %v\nconfig: %s", err, cfgJSON)
	}
	for _, addr := range listen {
		err := waitFor(caddyListenTimeout, 5*time.Millisecond, nil, func() (bool, string) {
			return oneListener(addr)
		})
		if err != nil {
			t.Fatalf("testenv: the previous config's socket on %s does not close: %v", addr.dial, err)
		}
	}
	for _, addr := range listen {
		err := waitFor(caddyListenTimeout, 20*time.Millisecond, nil, func() (bool, string) {
			conn, err := net.DialTimeout("tcp", addr.dial, time.Second)
			if err != nil {
				return false, err.Error()
			}
			_ = conn.Close()
			return true, ""
		})
		if err != nil {
			t.Fatalf("testenv: in-process Caddy does not accept connections on %s: %v", addr.dial, err)
		}
	}
}

// adaptCaddyfile turns a Caddyfile into Caddy JSON with the admin endpoint
// off (unless configured), persistence off and storage in dataDir (unless
// configured). It also returns the TCP listeners of the HTTP servers.
func adaptCaddyfile(text, dataDir string) ([]byte, []listenAddr, error) {
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	raw, _, err := adapter.Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, nil, err
	}
	admin, _ := cfg["admin"].(map[string]any)
	if admin == nil {
		admin = map[string]any{"disabled": true}
		cfg["admin"] = admin
	}
	adminCfg, _ := admin["config"].(map[string]any)
	if adminCfg == nil {
		adminCfg = map[string]any{}
		admin["config"] = adminCfg
	}
	adminCfg["persist"] = false
	if _, ok := cfg["storage"]; !ok {
		cfg["storage"] = map[string]any{"module": "file_system", "root": dataDir}
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, err
	}
	listen, err := httpListenAddrs(cfg)
	return out, listen, err
}

// listenAddr is one TCP listener of the HTTP app.
type listenAddr struct {
	network  string // as Caddy keys its listeners, e.g. "tcp"
	hostPort string // as Caddy keys its listeners, e.g. ":8123"
	port     uint
	dial     string // a dialable address, e.g. "127.0.0.1:8123"
}

// httpListenAddrs returns every TCP listener of the HTTP app's servers.
func httpListenAddrs(cfg map[string]any) ([]listenAddr, error) {
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	seen := map[string]bool{}
	var addrs []listenAddr
	for name, s := range servers {
		srv, _ := s.(map[string]any)
		list, _ := srv["listen"].([]any)
		for _, l := range list {
			ls, _ := l.(string)
			na, err := caddy.ParseNetworkAddress(ls)
			if err != nil {
				return nil, fmt.Errorf("server %s: listen address %q: %w", name, ls, err)
			}
			if na.IsUnixNetwork() || na.IsFdNetwork() || strings.HasPrefix(na.Network, "udp") {
				continue
			}
			for _, one := range na.Expand() {
				host := one.Host
				if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
					host = "127.0.0.1"
				}
				a := listenAddr{
					network:  one.Network,
					hostPort: one.JoinHostPort(0),
					port:     one.StartPort,
					dial:     net.JoinHostPort(host, strconv.FormatUint(uint64(one.StartPort), 10)),
				}
				if !seen[a.network+"/"+a.hostPort] {
					seen[a.network+"/"+a.hostPort] = true
					addrs = append(addrs, a)
				}
			}
		}
	}
	return addrs, nil
}

// oneListener reports whether a is bound by the running config alone: no
// socket of a previous config is still open on it. Caddy counts the configs
// using a listener (its count drops just before the old socket's close);
// on Linux, /proc/net/tcp{,6} shows the sockets themselves.
func oneListener(a listenAddr) (bool, string) {
	if n := caddy.ListenerUsage(a.network, a.hostPort); n > 1 {
		return false, fmt.Sprintf("%d configs use the listener", n)
	}
	n, err := listeningSockets(a.port)
	if err != nil {
		return true, "" // no /proc: Caddy's count is all there is
	}
	if n > 1 {
		return false, fmt.Sprintf("%d sockets listen on port %d", n, a.port)
	}
	return true, ""
}

// listeningSockets counts the TCP sockets in state LISTEN on port, from
// /proc/net/tcp and /proc/net/tcp6 (Linux).
func listeningSockets(port uint) (int, error) {
	want := fmt.Sprintf(":%04X", port)
	n, found := 0, false
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		found = true
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			// sl local_address rem_address st ...; 0A is LISTEN
			if len(fields) > 3 && fields[3] == "0A" && strings.HasSuffix(fields[1], want) {
				n++
			}
		}
	}
	if !found {
		return 0, errors.New("no /proc/net/tcp")
	}
	return n, nil
}
