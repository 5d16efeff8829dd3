package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Durability asks that every state-changing write be acknowledged by
// replicas before it is answered, with Redis's WAIT.
//
// Redis replicates asynchronously: a master answers a write before its
// replicas have it, so a failover (the master dies, a replica is
// promoted) loses the writes of the last moments before the death. WAIT
// narrows that window to writes that no replica acknowledged in Timeout,
// and makes them visible (counted and reported); it does not close it:
// Redis is not a consensus store, and a replica that acknowledged can
// still lose the race to be promoted.
type Durability struct {
	// Replicas is how many replicas must acknowledge each write
	// (WAIT numreplicas). 0 turns durability off.
	Replicas int
	// Timeout is how long a write waits for them (WAIT timeout). It must
	// be positive, and Timeout + WaitTick shorter than the store's
	// per-call timeout, which still bounds the whole call.
	Timeout time.Duration
}

// WaitTick is how late a WAIT may time out: Redis checks the timeouts of
// blocked clients on its timer tick, 1/hz seconds, 100ms at the default
// hz 10 (measured: WAIT 10 and WAIT 50 take ~100ms, WAIT 100 takes
// 100-200ms when no replica answers). A server with a lower hz makes it
// longer.
const WaitTick = 100 * time.Millisecond

// Shortfall is a write that fewer replicas acknowledged than asked
// within the timeout, or whose WAIT failed. The write itself happened on
// the master and was answered as a success.
type Shortfall struct {
	Wanted, Acked int
	// Err is why WAIT gave no count (nil when it answered too few).
	Err error
}

func (f Shortfall) String() string {
	if f.Err != nil {
		return fmt.Sprintf("a write was not confirmed by %d replicas: %v", f.Wanted, f.Err)
	}
	return fmt.Sprintf("a write was acknowledged by %d of %d replicas", f.Acked, f.Wanted)
}

// SetDurability turns durability on (d.Replicas > 0) or off, with a hook
// called on every shortfall (it may be nil; it must be fast: it runs on
// the request's goroutine). Call it before the store is used. The
// embedded store has no replicas: there it is refused.
func (s *Store) SetDurability(d Durability, onShortfall func(Shortfall)) error {
	if d.Replicas < 0 {
		return fmt.Errorf("durability: replicas must be 0 or more, not %d", d.Replicas)
	}
	if d.Replicas > 0 {
		if s.embedded != nil {
			return errors.New("durability: the embedded store has no replicas")
		}
		if d.Timeout <= 0 || d.Timeout+WaitTick >= s.timeout {
			return fmt.Errorf("durability: the timeout (%v) must be positive, and with Redis's %v timer tick shorter than the Redis timeout (%v)",
				d.Timeout, WaitTick, s.timeout)
		}
		if d.Timeout < time.Millisecond {
			d.Timeout = time.Millisecond // WAIT counts milliseconds; 0 would wait forever
		}
	}
	s.durability, s.onShortfall = d, onShortfall
	return nil
}

// Durability returns the durability settings.
func (s *Store) Durability() Durability { return s.durability }

// Shortfalls is the number of writes acknowledged by fewer replicas than
// asked since the store was opened.
func (s *Store) Shortfalls() int64 { return s.shortfalls.Load() }

func (s *Store) shortfall(f Shortfall) {
	s.shortfalls.Add(1)
	if s.onShortfall != nil {
		s.onShortfall(f)
	}
}

// runWrite runs a script that changes state and returns its reply, as
// sc.Run(ctx, s.rdb, keys, args...) does. Every store operation that
// changes state runs its scripts through it, so that durability applies
// to all of them.
//
// With durability on, WAIT follows the script on the SAME connection:
// WAIT waits for the writes made on its own connection (up to that
// connection's replication offset), so a WAIT sent on another pooled
// connection would return at once and prove nothing. Both go in one
// pipeline (one round trip) to the master that owns the keys' slot: the
// node's own client for a Cluster, the client itself for one node or a
// Sentinel-managed primary. On a Cluster whose slot map turns out stale
// (MOVED or ASK), the script runs again through the cluster client, which
// follows the redirection; a WAIT cannot follow it, so such a write counts
// as a shortfall. WAIT runs after every script, also one that found
// nothing to change: when replicas are up, that costs next to nothing.
//
// As with sc.Run, a connection that fails mid-call is retried once, so the
// script may run twice: store operations are written to be retry-safe.
//
// A shortfall does not fail the call: the write happened on the master and
// cannot be undone, a retry would find it done, and failing every write
// whenever a replica is down would turn the loss of a replica into an
// outage. It is counted (Shortfalls) and reported to the hook, which logs.
func (s *Store) runWrite(ctx context.Context, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	d := s.durability
	if d.Replicas <= 0 {
		return sc.Run(ctx, s.rdb, keys, args...)
	}
	node, err := s.masterFor(ctx, keys)
	if err != nil {
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	cmd, wait := evalThenWait(ctx, node, sc, keys, args, d)
	if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
		cc, isCluster := s.rdb.(*redis.ClusterClient)
		if !isCluster {
			return cmd
		}
		_, moved := redis.IsMovedError(err)
		_, ask := redis.IsAskError(err)
		var rerr redis.Error
		if moved || ask || !errors.As(err, &rerr) || redis.HasErrorPrefix(err, "READONLY") || redis.HasErrorPrefix(err, "CLUSTERDOWN") {
			cc.ReloadState(ctx) // the slot map may be stale (failover, resharding)
		}
		if !moved && !ask {
			return cmd
		}
		cmd = sc.Run(ctx, s.rdb, keys, args...)
		if err := cmd.Err(); err == nil || errors.Is(err, redis.Nil) {
			s.shortfall(Shortfall{Wanted: d.Replicas, Err: errors.New("the slot moved: the write was redirected and not followed by WAIT")})
		}
		return cmd
	}
	acked, werr := wait.Result()
	if werr != nil || int(acked) < d.Replicas {
		s.shortfall(Shortfall{Wanted: d.Replicas, Acked: int(acked), Err: werr})
	}
	return cmd
}

// evalThenWait sends the script and WAIT in one pipeline on one
// connection of node. The script goes as EVAL (its source; Redis caches it
// by SHA1 all the same), not EVALSHA: on a server that lacks it (a replica
// just promoted, say), EVALSHA would answer NOSCRIPT and the retry would
// cost a second WAIT, which can double the call's time exactly when the
// replicas are missing.
func evalThenWait(ctx context.Context, node *redis.Client, sc *redis.Script, keys []string, args []any, d Durability) (*redis.Cmd, *redis.IntCmd) {
	pipe := node.Pipeline()
	cmd := sc.Eval(ctx, pipe, keys, args...)
	wait := redis.NewIntCmd(ctx, "wait", d.Replicas, d.Timeout.Milliseconds())
	_ = pipe.Process(ctx, wait)
	_, _ = pipe.Exec(ctx)
	return cmd, wait
}

// masterFor returns the client of the master that owns the slot of keys
// (all of a script's keys share one slot).
func (s *Store) masterFor(ctx context.Context, keys []string) (*redis.Client, error) {
	switch c := s.rdb.(type) {
	case *redis.ClusterClient:
		if len(keys) == 0 {
			return nil, errors.New("a script without keys has no slot")
		}
		return c.MasterForKey(ctx, keys[0])
	case *redis.Client:
		return c, nil
	default:
		return nil, fmt.Errorf("unexpected client %T", s.rdb)
	}
}
