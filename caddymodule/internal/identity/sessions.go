package identity

import (
	"context"
	"errors"
	"hash/maphash"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// maxTouchEvery caps the interval between two lookups of a cached session
// by one instance: a safety net for an end announcement it missed (the
// activity itself is written every second: activity.go).
const maxTouchEvery = 5 * time.Minute

// sessions is the per-request session check: what this instance knows of
// each session, kept in step with Redis. The atomic steps themselves
// (admit under the limit, touch, end) are the Lua scripts of
// store/sessions.go.
type sessions struct {
	d      *Domain
	policy store.SessionPolicy
	// touchEvery is how often one instance looks a cached session up again
	// while requests keep coming: a tenth of the idle timeout, at most
	// maxTouchEvery.
	touchEvery int64 // ms
	// cache maps a session id to what this instance knows of it: live
	// (with its user) or ended (with the reason). Entries are dropped on
	// every instance when a session ends (pub/sub, InvalidateSession).
	cache  *cache.TTL[string, *sessionEntry]
	flight singleflight.Group
	// gen is bumped (per stripe of session ids) whenever an entry is
	// dropped, so that a lookup that raced with the end of its session
	// does not cache the stale answer it read before.
	gen  [64]atomic.Uint64
	seed maphash.Seed
	// activity is what requests saw since the last flush (activity.go).
	activity activityLog
}

// sessionEntry is what the per-request check knows of a session.
type sessionEntry struct {
	reason     string // not empty: the session has ended, for this reason
	userID     string
	installID  string
	externalID string
	email      string
	phone      string
	verified   bool
	started    int64 // unix ms

	seen     atomic.Int64 // unix ms of the latest activity known here
	wrote    atomic.Int64 // unix ms of the latest activity written to Redis
	checked  atomic.Int64 // unix ms of this instance's latest lookup in Redis
	touching atomic.Bool  // a request of this instance is looking it up
	queued   atomic.Bool  // in the activity log, to be flushed
}

func (s *sessions) init(d *Domain) {
	s.d, s.policy = d, d.cfg.Sessions
	every := maxTouchEvery
	if s.policy.Idle > 0 {
		every = min(s.policy.Idle/10, maxTouchEvery)
	}
	s.touchEvery = max(every.Milliseconds(), 1)
	s.seed = maphash.MakeSeed()
	s.cache = cache.New[string, *sessionEntry](d.cfg.CacheSize, d.cfg.CacheTTL, d.cfg.Now)
}

// live returns the live session sid, or the error to answer: 401
// session_ended (with the reason) or 401 unknown_session. A warm answer
// costs no Redis round trip: its activity goes to the activity log, which
// is flushed once a second (activity.go), and the session is looked up
// again at most every touchEvery per instance. Contact tokens bound to a
// session (sid claim) check it through here too.
func (s *sessions) live(ctx context.Context, sid string) (*sessionEntry, error) {
	if _, err := store.ParseID(store.KindSession, sid); err != nil {
		return nil, apierr.UnknownSession()
	}
	now := s.d.cfg.Now().UnixMilli()
	e, ok := s.cache.Get(sid)
	if !ok {
		return s.lookup(ctx, sid)
	}
	if e.reason != "" {
		return nil, SessionEnded(e.reason)
	}
	if s.mayBeOver(e, now) {
		// Maybe idle or expired: Redis knows (another instance may have
		// seen later activity), and ends it if so.
		return s.lookup(ctx, sid)
	}
	if seen := e.seen.Load(); now > seen {
		e.seen.CompareAndSwap(seen, now)
	}
	if !e.queued.Load() && now > e.wrote.Load() && e.queued.CompareAndSwap(false, true) {
		s.activity.add(sid, e)
	}
	if now-e.checked.Load() < s.touchEvery || !e.touching.CompareAndSwap(false, true) {
		return e, nil
	}
	// This request looks the session up again (a safety net for an
	// announcement this instance missed), recording its activity.
	fresh, err := s.lookup(ctx, sid)
	e.touching.Store(false)
	if err != nil && errors.Is(err, store.ErrUnavailable) {
		// A refresh that fails refuses nothing: the session was live a
		// moment ago. Try again next interval.
		s.d.LogStoreError(err)
		e.checked.Store(now)
		return e, nil
	}
	return fresh, err
}

// mayBeOver reports whether a live entry may have reached its idle timeout
// or lifetime at now, as far as this instance knows.
func (s *sessions) mayBeOver(e *sessionEntry, now int64) bool {
	p := s.policy
	return p.Lifetime > 0 && now-e.started >= p.Lifetime.Milliseconds() ||
		p.Idle > 0 && now-e.seen.Load() >= p.Idle.Milliseconds()
}

// lookup asks Redis about a session (recording activity on it) and caches
// the answer. Concurrent lookups of one session share one call.
func (s *sessions) lookup(ctx context.Context, sid string) (*sessionEntry, error) {
	d := s.d
	v, err, _ := s.flight.Do(sid, func() (any, error) {
		stripe := s.stripe(sid)
		gen := stripe.Load()
		now := d.cfg.Now()
		st, err := d.cfg.Store.TouchSession(context.WithoutCancel(ctx), d.keys, s.policy, sid, now)
		if err != nil {
			return nil, err
		}
		var e *sessionEntry
		switch st.Status {
		case store.SessionUnknown:
			return nil, nil
		case store.SessionEnded:
			e = &sessionEntry{reason: st.Reason, userID: st.UserID}
			if e.reason == "" {
				e.reason = store.ReasonExpired
			}
		default:
			e = &sessionEntry{
				userID: st.UserID, installID: st.InstallID, externalID: st.ExternalID,
				email: st.Email, phone: st.Phone, verified: st.Verified, started: st.Started.UnixMilli(),
			}
			e.seen.Store(st.Last.UnixMilli())
			e.wrote.Store(st.Last.UnixMilli())
			e.checked.Store(now.UnixMilli())
		}
		// A user that expires (made for an unverified id) is renewed by
		// its session's requests too; the entry lasts until it is due.
		keep := d.users.renewSessionUser(ctx, st)
		// Cache only if no end of this session was announced meanwhile:
		// the answer may predate it.
		if stripe.Load() == gen {
			s.cache.AddFor(sid, e, keep)
		}
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	e, _ := v.(*sessionEntry)
	switch {
	case e == nil:
		d.debug("unknown session refused")
		return nil, apierr.UnknownSession()
	case e.reason != "":
		d.debug("ended session refused", zap.String("reason", e.reason))
		return nil, SessionEnded(e.reason)
	}
	return e, nil
}

func (s *sessions) stripe(sid string) *atomic.Uint64 {
	return &s.gen[maphash.String(s.seed, sid)%uint64(len(s.gen))]
}

// drop forgets what this instance knows of a session (it ended).
func (s *sessions) drop(sid string) {
	s.stripe(sid).Add(1)
	s.cache.Remove(sid)
}

// flush forgets every session (invalidations may have been lost).
func (s *sessions) flush() {
	for i := range s.gen {
		s.gen[i].Add(1)
	}
	s.cache.Purge()
}

// SessionEnded is 401 session_ended with the reason.
func SessionEnded(reason string) *apierr.Error {
	var why string
	switch reason {
	case store.ReasonEvicted:
		why = "a newer login of the same user took its place (session limit)"
	case store.ReasonLoggedOut:
		why = "it was logged out"
	case store.ReasonIdle:
		why = "it was idle for too long"
	case store.ReasonExpired:
		why = "it reached its maximum lifetime"
	case store.ReasonTooManyFailures:
		why = "its requests failed verification too often"
	case store.ReasonRevoked:
		why = "it was ended from the user's session list or by an administrator"
	default:
		reason, why = store.ReasonExpired, "it is over"
	}
	e := apierr.New(http.StatusUnauthorized, apierr.CodeSessionEnded, "the session has ended ("+reason+"): "+why+"; log in again")
	e.Reason = reason
	return e
}
