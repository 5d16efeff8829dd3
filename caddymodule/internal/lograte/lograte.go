// Package lograte lets a repeated log line through at most once per
// interval, so an outage does not flood the log.
package lograte

import (
	"sync/atomic"
	"time"
)

// Limiter lets a repeated log line through at most once per interval. The
// zero value is ready; it is safe for concurrent use.
type Limiter struct {
	last atomic.Int64 // unix seconds of the last line let through
}

// Allow reports whether a line may be logged at now, at most one per
// every (whole seconds; at least one).
func (l *Limiter) Allow(now time.Time, every time.Duration) bool {
	n, step := now.Unix(), max(int64(every/time.Second), 1)
	last := l.last.Load()
	return (last == 0 || n >= last+step) && l.last.CompareAndSwap(last, n)
}
