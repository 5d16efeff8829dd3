package store

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// histCount is the number of calls the duration histogram of op holds.
func histCount(t *testing.T, op string) uint64 {
	t.Helper()
	var m dto.Metric
	if err := Metrics.Duration.WithLabelValues(op).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestStoreMetricsNameScripts: a script call is measured under the
// script's name (EVALSHA and its EVAL fallback alike), a missing key is
// no error, and a call to a store that is down counts as an error of its
// operation.
func TestStoreMetricsNameScripts(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s := b.store(t)
			ctx := context.Background()
			k := NewKeys("metrics-" + b.name)
			count := func(op string) uint64 { return histCount(t, op) }
			// The first call on a node may be two (EVALSHA, NOSCRIPT, then EVAL).
			if _, _, err := s.ResolveExternal(ctx, k, "u1", time.Now()); err != nil {
				t.Fatal(err)
			}
			before, errsBefore := count("resolve"), testutil.ToFloat64(Metrics.Errors.WithLabelValues("resolve"))
			for range 3 {
				if _, _, err := s.ResolveExternal(ctx, k, "u1", time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			if got := count("resolve") - before; got != 3 {
				t.Fatalf("resolve calls measured: %d, want 3", got)
			}
			if _, err := s.ExternalUser(ctx, k, "nobody"); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ToFloat64(Metrics.Errors.WithLabelValues("resolve")) - errsBefore; got != 0 {
				t.Fatalf("resolve errors: %v, want 0", got)
			}
		})
	}
	t.Run("down", func(t *testing.T) {
		s, err := Open("redis://127.0.0.1:1", 100*time.Millisecond) // nothing listens on port 1
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		before := testutil.ToFloat64(Metrics.Errors.WithLabelValues("resolve"))
		if _, _, err := s.ResolveExternal(context.Background(), NewKeys("down"), "u1", time.Now()); err == nil {
			t.Fatal("a store that is down answered")
		}
		if got := testutil.ToFloat64(Metrics.Errors.WithLabelValues("resolve")) - before; got < 1 {
			t.Fatalf("resolve errors after a failed call: %v, want at least 1", got)
		}
	})
}
