package caddymodule

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/testenv"
)

// The tests read and write the store's Redis with a client of their own,
// as an operator's redis-cli would: the app has no door for them.

var rawClients struct {
	sync.Mutex
	m map[*App]redis.UniversalClient
}

// storeClient is a client of the test's own to the Redis deployment a
// uses: a.Redis in go-redis's URL forms, or the embedded store at the
// address the app logs. It is closed when tb ends.
func storeClient(tb testing.TB, a *App) redis.UniversalClient {
	tb.Helper()
	rawClients.Lock()
	defer rawClients.Unlock()
	if c := rawClients.m[a]; c != nil {
		return c
	}
	c, err := openRawClient(a.Redis, a.store.EmbeddedAddr())
	if err != nil {
		tb.Fatal(err)
	}
	if rawClients.m == nil {
		rawClients.m = map[*App]redis.UniversalClient{}
	}
	rawClients.m[a] = c
	tb.Cleanup(func() {
		rawClients.Lock()
		delete(rawClients.m, a)
		rawClients.Unlock()
		c.Close()
	})
	return c
}

// openRawClient opens a client to rawURL ("" for the embedded store at
// embeddedAddr), choosing the kind from the URL as the store does.
func openRawClient(rawURL, embeddedAddr string) (redis.UniversalClient, error) {
	if rawURL == "" {
		return redis.NewClient(&redis.Options{Addr: embeddedAddr}), nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	switch q := u.Query(); {
	case q.Has("master_name"):
		o, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, err
		}
		return redis.NewFailoverClient(o), nil
	case q.Has("addr"):
		o, err := redis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(o), nil
	default:
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, err
		}
		return redis.NewClient(o), nil
	}
}

// commandMonitor counts the commands clients send to a redis-server that
// name match (a session id, say), as the server sees them: it reads the
// server's MONITOR feed on a connection of its own. Commands that scripts
// run are not counted (the script call that names match is).
type commandMonitor struct {
	tb      testing.TB
	conn    net.Conn
	feed    *bufio.Reader
	markers *redis.Client
	match   string
	n       int
	marks   int
}

// scriptCommand is how MONITOR tags a command run by a Lua script:
// "[0 lua]" where a client's command has "[0 127.0.0.1:port]".
var scriptCommand = regexp.MustCompile(`^\+[0-9.]+ \[\d+ lua\] `)

// monitorCommands starts counting the commands sent to the redis-server
// at addr that name match. It is stopped when tb ends.
func monitorCommands(tb testing.TB, addr, match string) *commandMonitor {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	m := &commandMonitor{tb: tb, conn: conn, feed: bufio.NewReader(conn), match: match,
		markers: redis.NewClient(&redis.Options{Addr: addr})}
	tb.Cleanup(func() { conn.Close(); m.markers.Close() })
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		tb.Fatal(err)
	}
	if line := m.line(); line != "+OK" {
		tb.Fatalf("MONITOR answered %q", line)
	}
	return m
}

// count is the number of commands naming match that the server ran
// before this call: it reads the feed up to a marker it sends now (the
// feed is in the order the server ran the commands).
func (m *commandMonitor) count() int {
	m.tb.Helper()
	m.marks++
	marker := fmt.Sprintf("idlink-monitor-mark-%d", m.marks)
	if err := m.markers.Echo(context.Background(), marker).Err(); err != nil {
		m.tb.Fatal(err)
	}
	for {
		line := m.line()
		if strings.Contains(line, `"`+marker+`"`) {
			return m.n
		}
		if strings.Contains(line, m.match) && !scriptCommand.MatchString(line) {
			m.n++
		}
	}
}

func (m *commandMonitor) line() string {
	m.tb.Helper()
	_ = m.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := m.feed.ReadString('\n')
	if err != nil {
		m.tb.Fatalf("reading the MONITOR feed: %v", err)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// crashableRedis returns the URL of the deployment at redisURL ("" for
// the embedded store) through a proxy, and the proxy's Cut: after it, an
// app on that URL reaches Redis no more, as a process that was killed
// (what it does while stopping never arrives). The app is a standalone
// client of the primary (Sentinel) or of the embedded server (kept alive
// by an app of its own for the test). A Cluster client reaches the nodes
// at the addresses they advertise, past any proxy: the test is skipped
// there.
func crashableRedis(t *testing.T, redisURL string) (string, func()) {
	t.Helper()
	var target string
	switch {
	case redisURL == "":
		holder := newTestApp(t, "", func(a *App) { a.Tenants = map[string]*Tenant{"holder": a.Tenants["acme"]} })
		target = holder.store.EmbeddedAddr()
	case strings.Contains(redisURL, "master_name="):
		o, err := redis.ParseFailoverURL(redisURL)
		if err != nil {
			t.Fatal(err)
		}
		sc := redis.NewSentinelClient(&redis.Options{Addr: o.SentinelAddrs[0]})
		defer sc.Close()
		hp, err := sc.GetMasterAddrByName(context.Background(), o.MasterName).Result()
		if err != nil {
			t.Fatal(err)
		}
		target = net.JoinHostPort(hp[0], hp[1])
	case strings.Contains(redisURL, "addr="):
		t.Skip("a Cluster client dials the addresses the nodes advertise, past a proxy: no crash by cutting connections there")
	default:
		u, err := url.Parse(redisURL)
		if err != nil {
			t.Fatal(err)
		}
		target = u.Host
	}
	p := testenv.StartProxy(t, target)
	return "redis://" + p.Addr() + "/0", p.Cut
}
