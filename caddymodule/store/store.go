// Package store is idlink's Redis layer: the key schema, the Lua scripts
// that make every state change atomic and single-slot, and the client that
// talks to a standalone Redis, a Redis Cluster, a Sentinel-managed primary
// or the embedded in-process store, all through one redis.UniversalClient.
//
// It has no knowledge of Caddy or HTTP.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// DefaultTimeout is the deadline of one Redis call when none is configured.
const DefaultTimeout = 250 * time.Millisecond

// ErrUnavailable wraps every failure to reach Redis or to get an answer in
// time. Callers map it to "503 store_unavailable".
var ErrUnavailable = errors.New("store unavailable")

// Store is a connection to the Redis deployment that holds idlink's state.
// It is safe for concurrent use.
type Store struct {
	rdb      redis.UniversalClient
	timeout  time.Duration
	embedded *miniredis.Miniredis
	kind     string

	durability  Durability      // see SetDurability
	onShortfall func(Shortfall) // see SetDurability
	shortfalls  atomic.Int64
}

// Open connects to the Redis deployment named by rawURL, in go-redis's URL
// forms:
//
//	redis://[user:pass@]host:port[/db]              one node (rediss:// for TLS)
//	redis://host1:port1?addr=host2:port2&addr=...   a Redis Cluster
//	redis://sentinel1:port?addr=...&master_name=m   a Sentinel-managed primary
//
// timeout bounds every call (dial, read, write, waiting for a pooled
// connection). Open does not contact Redis: the first call does, so Caddy
// starts even while Redis is down.
func Open(rawURL string, timeout time.Duration) (*Store, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", redactURLError(err))
	}
	q := u.Query()
	var rdb redis.UniversalClient
	var kind string
	switch {
	case q.Has("master_name"):
		o, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis sentinel url: %w", redactURLError(err))
		}
		applyFailover(o, timeout)
		rdb, kind = redis.NewFailoverClient(o), "sentinel"
	case q.Has("addr"):
		o, err := redis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis cluster url: %w", redactURLError(err))
		}
		applyCluster(o, timeout)
		rdb, kind = redis.NewClusterClient(o), "cluster"
	default:
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %w", redactURLError(err))
		}
		applySimple(o, timeout)
		rdb, kind = redis.NewClient(o), "standalone"
	}
	rdb.AddHook(spanHook{})
	rdb.AddHook(metricsHook{})
	return &Store{rdb: rdb, timeout: timeout, kind: kind}, nil
}

// OpenEmbedded starts an in-process Redis (miniredis) on a loopback port and
// connects to it through the very same client and scripts as a real one.
// It keeps nothing on disk: state is lost when the process stops.
func OpenEmbedded(timeout time.Duration) (*Store, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	m := miniredis.NewMiniRedis()
	// TTLs (locks, session tombstones, retention) run on the wall clock, as
	// in a real Redis; miniredis otherwise only expires on FastForward.
	m.ClockTTL(true)
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("starting embedded store: %w", err)
	}
	o := &redis.Options{Addr: m.Addr()}
	applySimple(o, timeout)
	rdb := redis.NewClient(o)
	rdb.AddHook(spanHook{})
	rdb.AddHook(metricsHook{})
	return &Store{rdb: rdb, timeout: timeout, embedded: m, kind: "embedded"}, nil
}

// Kind is "standalone", "cluster", "sentinel" or "embedded".
func (s *Store) Kind() string { return s.kind }

// Timeout is the deadline of one call.
func (s *Store) Timeout() time.Duration { return s.timeout }

// EmbeddedAddr is the loopback address of the embedded server ("" when
// the store is a real Redis), which the app logs so that an operator can
// inspect the embedded store with redis-cli.
func (s *Store) EmbeddedAddr() string {
	if s.embedded == nil {
		return ""
	}
	return s.embedded.Addr()
}

// Close closes the client and stops the embedded server if there is one.
func (s *Store) Close() error {
	err := s.rdb.Close()
	if s.embedded != nil {
		s.embedded.Close()
	}
	return err
}

// Ping checks that the store answers within the deadline.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	return wrap(s.rdb.Ping(ctx).Err())
}

// deadline bounds one call by the store's timeout.
func (s *Store) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// wrap turns every error but redis.Nil into ErrUnavailable, keeping the
// cause for logs.
func wrap(err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// dialAttempts is how many times a connection is dialled before a call
// fails. go-redis's default (5, 100ms apart) spends the whole deadline of
// every call on a dead node: with one attempt, a call to a master that is
// down fails in milliseconds (the cluster client then tries another node,
// which redirects it to the promoted replica once there is one), and the
// pool stops dialling a node that keeps refusing.
const dialAttempts = 1

func applySimple(o *redis.Options, t time.Duration) {
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = t, t, t, t
	o.ContextTimeoutEnabled = true
	o.MaxRetries = 1
	o.DialerRetries = dialAttempts
}

// clusterStateReload is how often a Cluster client refreshes its slot map.
// go-redis refreshes on MOVED replies but not when a master dies (its
// default interval is 60s), so a short interval is what lets requests find
// the promoted replica soon after a failover. Measured (failover_test.go,
// 3 masters + 1 replica, a master killed under load): new users are served
// again 1.3-1.6s after the cluster is healthy with 2s, 0.4-1.1s with 1s,
// 0-0.4s with 500ms. 1s costs one CLUSTER SLOTS a second per busy instance.
const clusterStateReload = time.Second

func applyCluster(o *redis.ClusterOptions, t time.Duration) {
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = t, t, t, t
	o.ContextTimeoutEnabled = true
	o.MaxRetries = 1
	o.DialerRetries = dialAttempts
	o.ClusterStateReloadInterval = clusterStateReload
}

func applyFailover(o *redis.FailoverOptions, t time.Duration) {
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = t, t, t, t
	o.ContextTimeoutEnabled = true
	o.MaxRetries = 1
	o.DialerRetries = dialAttempts
}

// redactURLError keeps a URL parse error from echoing the URL, which may
// hold a password.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	msg := err.Error()
	if i := strings.Index(msg, "redis://"); i >= 0 {
		return errors.New(msg[:i] + "<url>")
	}
	return err
}
