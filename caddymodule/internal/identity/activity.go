package identity

import (
	"context"
	"sync"
	"time"

	"github.com/idlink/idlink/caddymodule/store"
)

// ActivityEvery is how often an instance writes the session activity its
// requests saw: "least recently active" (the session limit's eviction) and
// the idle timeout are accurate to about this much on every instance,
// while the request path makes no Redis call.
const ActivityEvery = time.Second

// activityLog is the sessions that requests used since the last flush.
// A session enters it once per flush (sessionEntry.queued); what is written
// is its latest activity at flush time.
type activityLog struct {
	mu      sync.Mutex
	pending []queuedActivity
}

type queuedActivity struct {
	sid string
	e   *sessionEntry
}

func (l *activityLog) add(sid string, e *sessionEntry) {
	l.mu.Lock()
	l.pending = append(l.pending, queuedActivity{sid, e})
	l.mu.Unlock()
}

func (l *activityLog) take() []queuedActivity {
	l.mu.Lock()
	p := l.pending
	l.pending = nil
	l.mu.Unlock()
	return p
}

// Run writes the session activity of this instance every ActivityEvery
// until ctx ends, then once more, so that a reload or a stop loses none.
func (d *Domain) Run(ctx context.Context) {
	t := time.NewTicker(ActivityEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			d.FlushActivity(context.WithoutCancel(ctx))
			return
		case <-t.C:
			d.FlushActivity(ctx)
		}
	}
}

// FlushActivity writes the activity requests saw since the last flush, in
// one pipelined round trip (one script per shard). A failure is logged and
// forgotten: the next request on each session queues it again.
func (d *Domain) FlushActivity(ctx context.Context) {
	s := &d.sessions
	pending := s.activity.take()
	if len(pending) == 0 {
		return
	}
	acts := make([]store.Activity, 0, len(pending))
	written := make([]*sessionEntry, 0, len(pending))
	for _, q := range pending {
		// Cleared before reading seen: a request after this read queues
		// the session again, so no activity falls between two flushes.
		q.e.queued.Store(false)
		if at := q.e.seen.Load(); at > q.e.wrote.Load() {
			acts = append(acts, store.Activity{SessionID: q.sid, At: time.UnixMilli(at)})
			written = append(written, q.e)
		}
	}
	if len(acts) == 0 {
		return
	}
	if _, err := d.cfg.Store.RecordActivity(ctx, d.keys, s.policy, acts, d.cfg.Now()); err != nil {
		d.LogStoreError(err)
		return
	}
	for i, e := range written {
		if at := acts[i].At.UnixMilli(); at > e.wrote.Load() {
			e.wrote.Store(at)
		}
	}
}
