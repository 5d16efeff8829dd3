// Package spans starts idlink's trace spans as children of the request's
// span, which Caddy's `tracing` directive makes. Without tracing (the
// request's span does not record) it costs one context lookup and starts
// nothing. Spans carry names, kinds and outcomes, never a credential, a
// key or an id a client presented.
package spans

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// instrumentation is the tracer name of idlink's spans.
const instrumentation = "github.com/idlink/idlink"

// noop is a span that records nothing (the one of a context without a
// span): ending it is harmless.
var noop = trace.SpanFromContext(context.Background())

// Recording reports whether ctx's span records: whether a child is worth
// naming.
func Recording(ctx context.Context) bool { return trace.SpanFromContext(ctx).IsRecording() }

// Start starts a child of ctx's span if that one records.
func Start(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, noop
	}
	return parent.TracerProvider().Tracer(instrumentation).Start(ctx, name, trace.WithAttributes(attrs...))
}

// StartTenant is Start with the attribute idlink.tenant, built only when
// the span records (the request path allocates nothing without tracing).
func StartTenant(ctx context.Context, name, tenant string) (context.Context, trace.Span) {
	if !Recording(ctx) {
		return ctx, noop
	}
	return Start(ctx, name, attribute.String("idlink.tenant", tenant))
}

// End ends span with outcome (an attribute idlink.outcome) and marks it as
// an error when failed. The outcome is a fixed word or an error code of
// ours, never an error's text.
func End(span trace.Span, outcome string, failed bool) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("idlink.outcome", outcome))
	if failed {
		span.SetStatus(codes.Error, outcome)
	}
	span.End()
}
