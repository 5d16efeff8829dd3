package store

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"

	"github.com/idlink/idlink/caddymodule/internal/spans"
)

// spanHook makes a span of every Redis call made for a traced request
// (Caddy's tracing directive): "redis <command>", a script named by its
// file ("redis evalsha session_touch"). Keys and arguments are never
// recorded: they hold external ids and session ids.
type spanHook struct{}

func (spanHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (spanHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !spans.Recording(ctx) {
			return next(ctx, cmd)
		}
		ctx, span := spans.Start(ctx, "redis "+operation(cmd), attribute.String("db.system", "redis"))
		err := next(ctx, cmd)
		spans.End(span, outcome(err), failed(err))
		return err
	}
}

func (spanHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !spans.Recording(ctx) {
			return next(ctx, cmds)
		}
		ops := make([]string, 0, len(cmds))
		for _, c := range cmds {
			ops = append(ops, operation(c))
		}
		ctx, span := spans.Start(ctx, "redis pipeline", attribute.String("db.system", "redis"),
			attribute.StringSlice("db.operations", ops))
		err := next(ctx, cmds)
		spans.End(span, outcome(err), failed(err))
		return err
	}
}

// operation is a command's name, with the script's name for EVAL and
// EVALSHA.
func operation(cmd redis.Cmder) string {
	name := cmd.Name()
	if name != "evalsha" && name != "eval" && name != "evalsha_ro" && name != "eval_ro" {
		return name
	}
	args := cmd.Args()
	if len(args) < 2 {
		return name
	}
	body, _ := args[1].(string)
	if name == "eval" || name == "eval_ro" {
		sum := sha1.Sum([]byte(body))
		body = hex.EncodeToString(sum[:])
	}
	if script := scriptNames()[body]; script != "" {
		return name + " " + script
	}
	return name
}

// scriptNames maps each script's SHA-1 to its name.
var scriptNames = sync.OnceValue(func() map[string]string {
	m := make(map[string]string, len(scriptSources))
	for name, src := range scriptSources {
		sum := sha1.Sum([]byte(src))
		m[hex.EncodeToString(sum[:])] = name
	}
	return m
})

// outcome is "ok", "nil" (no such key: an answer), "timeout", "noscript"
// or "error": never Redis's text, which may quote arguments.
func outcome(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, redis.Nil):
		return "nil"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.HasPrefix(err.Error(), "NOSCRIPT"):
		return "noscript"
	}
	return "error"
}

func failed(err error) bool { return err != nil && !errors.Is(err, redis.Nil) }
