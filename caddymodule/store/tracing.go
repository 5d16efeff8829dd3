package store

import (
	"context"
	"errors"
	"net"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"

	"github.com/idlink/idlink/caddymodule/internal/spans"
)

// spanHook makes a span of every Redis call made for a traced request
// (Caddy's tracing directive): "redis <operation>", the operation named
// as in the store metrics (a script by its file: "redis session_touch"). Keys and arguments are never
// recorded: they hold external ids and session ids.
type spanHook struct{}

func (spanHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (spanHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !spans.Recording(ctx) {
			return next(ctx, cmd)
		}
		ctx, span := spans.Start(ctx, "redis "+opName(cmd), attribute.String("db.system", "redis"))
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
			ops = append(ops, opName(c))
		}
		ctx, span := spans.Start(ctx, "redis pipeline", attribute.String("db.system", "redis"),
			attribute.StringSlice("db.operations", ops))
		err := next(ctx, cmds)
		spans.End(span, outcome(err), failed(err))
		return err
	}
}

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
	case isNoScript(err):
		return "noscript"
	}
	return "error"
}
