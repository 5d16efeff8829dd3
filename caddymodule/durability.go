package caddymodule

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/store"
)

// Durability is the app's option to wait for replicas after every write
// that changes idlink's state (a first-sight user, a link, a session
// start or end), with Redis's WAIT, sent right behind the write on the
// same connection.
//
// Redis replicates asynchronously: without it, a write that Redis
// acknowledged can vanish if its master dies before a replica has it and
// the replica is promoted (Cluster failover, Sentinel failover). With it,
// a write is answered once Replicas replicas have it, or after Timeout;
// then it is answered all the same (the master has it; failing the
// request would not undo it), counted, and logged as a warning at most
// once a second. The window of loss narrows to writes logged that way.
type Durability struct {
	// Replicas is how many replicas must acknowledge each write. Required:
	// at least 1.
	Replicas int `json:"replicas,omitempty"`

	// Timeout is how long a write waits for the acknowledgements. Redis
	// times a WAIT out on its timer tick (100ms at its default hz 10), so
	// a write may wait up to Timeout + 100ms: that must be shorter than
	// redis_timeout, which still bounds the whole call. Default: half of
	// what redis_timeout leaves after the tick (75ms for the default
	// 250ms).
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// provision fills the default timeout.
func (d *Durability) provision(redisTimeout time.Duration) {
	if d.Timeout <= 0 {
		d.Timeout = caddy.Duration(max((redisTimeout-store.WaitTick)/2, time.Millisecond))
	}
}

func (d *Durability) validate(redisTimeout time.Duration) error {
	if d.Replicas < 1 {
		return fmt.Errorf("durability: replicas must be at least 1, not %d", d.Replicas)
	}
	if time.Duration(d.Timeout)+store.WaitTick >= redisTimeout {
		return fmt.Errorf("durability: timeout %v plus Redis's %v timer tick must be shorter than redis_timeout %v",
			time.Duration(d.Timeout), store.WaitTick, redisTimeout)
	}
	return nil
}

// poolKey is the part of the store's pool key that durability adds: two
// configs share a store client only if they want the same durability.
func (d *Durability) poolKey() string {
	if d == nil {
		return ""
	}
	return "|wait:" + strconv.Itoa(d.Replicas) + ":" + strconv.FormatInt(int64(d.Timeout), 10)
}

// applyDurability turns durability on in a new store. The embedded store
// has no replicas: durability is ignored there, with a warning.
func (a *App) applyDurability(s *store.Store) error {
	d := a.Durability
	if d == nil {
		return nil
	}
	if s.Kind() == "embedded" {
		a.logger.Warn("durability is ignored: the embedded store has no replicas")
		return nil
	}
	var last atomic.Int64
	now := a.now
	return s.SetDurability(store.Durability{Replicas: d.Replicas, Timeout: time.Duration(d.Timeout)}, func(f store.Shortfall) {
		// The store outlives this config (it is pooled): log through
		// Caddy's current default logger, at most once a second.
		sec, prev := now().Unix(), last.Load()
		if sec <= prev || !last.CompareAndSwap(prev, sec) {
			return
		}
		fields := []zap.Field{zap.Int("wanted", f.Wanted), zap.Int("acked", f.Acked), zap.Int64("shortfalls_total", s.Shortfalls())}
		if f.Err != nil {
			fields = append(fields, zap.Error(f.Err))
		}
		caddy.Log().Named("idlink").Warn("a write was not acknowledged by enough replicas in time; a failover now could lose it", fields...)
	})
}

// unmarshalDurability parses `durability replicas <n> [timeout <duration>]`.
func unmarshalDurability(d *caddyfile.Dispenser) (*Durability, error) {
	dur := new(Durability)
	args := d.RemainingArgs()
	seen := map[string]bool{}
	for i := 0; i < len(args); i += 2 {
		key := args[i]
		if i+1 >= len(args) {
			return nil, d.Errf("durability: %s needs a value", key)
		}
		val := args[i+1]
		if seen[key] {
			return nil, d.Errf("durability: %s given twice", key)
		}
		seen[key] = true
		switch key {
		case "replicas":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return nil, d.Errf("durability: replicas must be a number of at least 1, not '%s'", val)
			}
			dur.Replicas = n
		case "timeout":
			v, err := caddy.ParseDuration(val)
			if err != nil || v <= 0 {
				return nil, d.Errf("durability: '%s' is not a positive duration", val)
			}
			dur.Timeout = caddy.Duration(v)
		default:
			return nil, d.Errf("durability: unrecognized option '%s' (want replicas <n> [timeout <duration>])", key)
		}
	}
	if dur.Replicas == 0 {
		return nil, d.Err("durability needs the number of replicas: durability replicas <n> [timeout <duration>]")
	}
	if d.NextBlock(d.Nesting()) {
		return nil, d.Err("durability takes no block")
	}
	return dur, nil
}
