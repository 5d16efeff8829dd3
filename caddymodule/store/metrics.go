package store

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Metrics are the store's call metrics, by operation: the name of the Lua
// script a call ran (EVALSHA and EVAL), "pipeline" for a pipeline, or the
// lower-case command name. They live for the process; the Caddy module
// registers them with the registry of every config that loads.
var Metrics = struct {
	Duration *prometheus.HistogramVec
	Errors   *prometheus.CounterVec
}{
	Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "idlink", Subsystem: "store", Name: "duration_seconds",
		Help:    "Latency of the store's Redis calls, by operation (a Lua script's name, pipeline, or a command).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"op"}),
	Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "idlink", Subsystem: "store", Name: "errors_total",
		Help: "Store calls that failed (Redis unreachable, timeout, an error reply), by operation. A missing key is no error.",
	}, []string{"op"}),
}

// opMetrics are one operation's resolved series, so that a call costs no
// label lookup.
type opMetrics struct {
	duration prometheus.Observer
	errors   prometheus.Counter
}

// metricsHook is the go-redis hook that measures every call of a Store.
type metricsHook struct{}

// ops maps an operation name (and a script's SHA1) to its series. It is
// filled with every script at first use; a command seen for the first
// time adds its own.
var (
	opsMu     sync.RWMutex
	ops       map[string]*opMetrics
	scriptSHA map[string]string
	opsOnce   sync.Once
)

func loadOps() {
	opsMu.Lock()
	defer opsMu.Unlock()
	ops = make(map[string]*opMetrics, len(scriptSources)+8)
	scriptSHA = make(map[string]string, len(scriptSources))
	for name, src := range scriptSources {
		sum := sha1.Sum([]byte(src))
		scriptSHA[hex.EncodeToString(sum[:])] = name
		ops[name] = newOpMetrics(name)
	}
	ops["pipeline"] = newOpMetrics("pipeline")
}

func newOpMetrics(op string) *opMetrics {
	return &opMetrics{Metrics.Duration.WithLabelValues(op), Metrics.Errors.WithLabelValues(op)}
}

// opFor returns the series of an operation name.
func opFor(op string) *opMetrics {
	opsMu.RLock()
	m := ops[op]
	opsMu.RUnlock()
	if m != nil {
		return m
	}
	opsMu.Lock()
	defer opsMu.Unlock()
	if m = ops[op]; m == nil {
		m = newOpMetrics(op)
		ops[op] = m
	}
	return m
}

// cmdOp is the series of a command's operation (opName).
func cmdOp(cmd redis.Cmder) *opMetrics { return opFor(opName(cmd)) }

// opName names the operation of a command: the script of an EVALSHA or
// EVAL ("script_unknown" for one not of this package), or the command's
// name.
func opName(cmd redis.Cmder) string {
	opsOnce.Do(loadOps)
	name := cmd.Name()
	args := cmd.Args()
	if len(args) < 2 {
		return name
	}
	switch name {
	case "evalsha", "evalsha_ro":
		if sha, ok := args[1].(string); ok {
			opsMu.RLock()
			s, ok := scriptSHA[sha] // redis.Script hashes are lower-case hex
			opsMu.RUnlock()
			if ok {
				return s
			}
		}
		return "script_unknown"
	case "eval", "eval_ro":
		if src, ok := args[1].(string); ok {
			for s, known := range scriptSources {
				if known == src {
					return s
				}
			}
		}
		return "script_unknown"
	}
	return name
}

// failed reports whether err counts as a store error: a missing key is
// an answer, and NOSCRIPT is the EVALSHA miss that redis.Script.Run
// answers with EVAL.
func failed(err error) bool {
	return err != nil && !errors.Is(err, redis.Nil) && !isNoScript(err)
}

func (metricsHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

func (metricsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		m := cmdOp(cmd)
		m.duration.Observe(time.Since(start).Seconds())
		if failed(err) {
			m.errors.Inc()
		}
		return err
	}
}

func (metricsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		opsOnce.Do(loadOps)
		start := time.Now()
		err := next(ctx, cmds)
		m := opFor("pipeline")
		m.duration.Observe(time.Since(start).Seconds())
		if failed(err) {
			m.errors.Inc()
		}
		return err
	}
}
