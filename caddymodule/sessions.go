package caddymodule

import (
	"context"
	"fmt"
	"hash/maphash"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// This file is the session limit: the tenant's session policy and the
// per-request session check of the idlink handler. Login (POST
// /sessions), logout and the user's sessions view are in login.go; the
// atomic steps themselves are the Lua scripts of store/sessions.go.

// Session policy defaults and bounds.
const (
	defaultSessionMax  = 1
	defaultSessionIdle = 72 * time.Hour
	maxSessionMax      = 1000
	minSessionTimeout  = time.Second
	// maxTouchEvery caps the interval between two writes of a session's
	// last activity by one instance, so that "least recently active"
	// stays accurate to a few minutes whatever the idle timeout.
	maxTouchEvery = 5 * time.Minute
	// maxAttributesBytes bounds a user's external attributes: the merged
	// object as compact JSON.
	maxAttributesBytes = 8 << 10
	// sessionIDPrefixLen is how much of a session id GET /users shows.
	sessionIDPrefixLen = 8
)

// Error codes of the session endpoints and check.
const (
	codeSessionEnded       = "session_ended"
	codeUnknownSession     = "unknown_session"
	codeAttributesTooLarge = "attributes_too_large"
)

// Sessions is a tenant's session policy: how many live sessions a user may
// have, and when a session ends by itself.
type Sessions struct {
	// Max is how many live sessions one user may have at once. A login
	// beyond it ends the user's least recently active sessions (reason
	// "evicted"). Verified and unverified (report or off mode) sessions
	// are counted apart, each up to max, so that an unverified login
	// never evicts a verified session. Default: 1.
	Max int `json:"max,omitempty"`

	// Idle ends a session after this long without a request (reason
	// "idle"). Default: 72h. A negative value (Caddyfile: `idle off`)
	// disables the idle timeout.
	Idle caddy.Duration `json:"idle,omitempty"`

	// Lifetime ends a session this long after it started, however active
	// (reason "expired"); POST /sessions then answers its expires_at.
	// Default: none (0, Caddyfile: `lifetime off`).
	Lifetime caddy.Duration `json:"lifetime,omitempty"`
}

// sessionRuntime is a tenant's session state built at provision time.
type sessionRuntime struct {
	policy store.SessionPolicy
	// touchEvery is how often one instance writes a session's last
	// activity while requests keep coming: a tenth of the idle timeout,
	// at most maxTouchEvery.
	touchEvery int64 // ms
	// cache maps a session id to what this instance knows of it: live
	// (with its user) or ended (with the reason). Entries are dropped on
	// every instance when a session ends (pub/sub, kind "session").
	cache  *cache.TTL[string, *sessionEntry]
	flight singleflight.Group
	// gen is bumped (per stripe of session ids) whenever an entry is
	// dropped, so that a lookup that raced with the end of its session
	// does not cache the stale answer it read before.
	gen  [64]atomic.Uint64
	seed maphash.Seed
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
	touching atomic.Bool  // a request of this instance is writing it
}

// provisionSessions fills the session policy's defaults and builds the
// session cache. It runs in the tenant's provision.
func (t *Tenant) provisionSessions() {
	if t.Sessions == nil {
		t.Sessions = new(Sessions)
	}
	s := t.Sessions
	if s.Max == 0 {
		s.Max = defaultSessionMax
	}
	if s.Idle == 0 {
		s.Idle = caddy.Duration(defaultSessionIdle)
	}
	p := store.SessionPolicy{Max: s.Max, Channel: store.InvalidationChannel}
	if s.Idle > 0 {
		p.Idle = time.Duration(s.Idle)
	}
	if s.Lifetime > 0 {
		p.Lifetime = time.Duration(s.Lifetime)
	}
	every := maxTouchEvery
	if p.Idle > 0 {
		every = min(p.Idle/10, maxTouchEvery)
	}
	t.sess.policy = p
	t.sess.touchEvery = max(every.Milliseconds(), 1)
	t.sess.seed = maphash.MakeSeed()
	t.sess.cache = cache.New[string, *sessionEntry](t.CacheSize, time.Duration(t.CacheTTL), t.now)
	t.onInvalidate("session", t.dropSession, t.flushSessions)
}

func (t *Tenant) validateSessions() error {
	s := t.Sessions
	if s == nil {
		return nil
	}
	if s.Max < 1 || s.Max > maxSessionMax {
		return fmt.Errorf("tenant %q: sessions max must be 1 to %d, not %d", t.name, maxSessionMax, s.Max)
	}
	if s.Idle > 0 && time.Duration(s.Idle) < minSessionTimeout {
		return fmt.Errorf("tenant %q: sessions idle must be at least %v (or off)", t.name, minSessionTimeout)
	}
	if s.Lifetime > 0 && time.Duration(s.Lifetime) < minSessionTimeout {
		return fmt.Errorf("tenant %q: sessions lifetime must be at least %v (or off)", t.name, minSessionTimeout)
	}
	return nil
}

// --- The per-request check ---------------------------------------------

// checkSession verifies X-Session-Id: it must name a live session. Alone
// it identifies the session's user (X-Identity-Source: session); with
// other credentials the pipeline checks that they name the same user.
//
// X-Identity-Verified is the session's own: true when the login that
// started it verified its credential (a session id is an unguessable
// bearer credential that idlink issued only after that verification),
// false for a session started by an unverified report-mode login.
func (t *Tenant) checkSession(ctx context.Context, c *credentials) (*identity, error) {
	if c.sessionID == "" {
		return nil, nil
	}
	e, err := t.liveSession(ctx, c.sessionID)
	if err != nil {
		return nil, err
	}
	return &identity{
		source: SourceSession, verified: e.verified, userID: e.userID,
		externalID: e.externalID, installID: e.installID, sessionID: c.sessionID,
		verifiedEmail: e.email, verifiedPhone: e.phone,
	}, nil
}

// liveSession returns the live session sid, or the error to answer:
// 401 session_ended (with the reason) or 401 unknown_session. A warm
// answer costs no Redis round trip; activity is written at most every
// touchEvery per session and instance. Contact tokens bound to a session
// (sid claim) check it through here too.
func (t *Tenant) liveSession(ctx context.Context, sid string) (*sessionEntry, error) {
	if _, err := store.ParseID(store.KindSession, sid); err != nil {
		return nil, errUnknownSession()
	}
	now := t.now().UnixMilli()
	e, ok := t.sess.cache.Get(sid)
	if !ok {
		return t.lookupSession(ctx, sid)
	}
	if e.reason != "" {
		return nil, errSessionEnded(e.reason)
	}
	if t.sess.mayBeOver(e, now) {
		// Maybe idle or expired: Redis knows (another instance may have
		// seen later activity), and ends it if so.
		return t.lookupSession(ctx, sid)
	}
	if seen := e.seen.Load(); now > seen {
		e.seen.CompareAndSwap(seen, now)
	}
	if now-e.wrote.Load() < t.sess.touchEvery || !e.touching.CompareAndSwap(false, true) {
		return e, nil
	}
	// This request writes the activity of the interval.
	fresh, err := t.lookupSession(ctx, sid)
	e.touching.Store(false)
	if err != nil && isStoreError(err) {
		// A refresh that fails refuses nothing: the session was live a
		// moment ago. Try again next interval.
		t.logStoreError(err)
		e.wrote.Store(now)
		return e, nil
	}
	return fresh, err
}

// mayBeOver reports whether a live entry may have reached its idle timeout
// or lifetime at now, as far as this instance knows.
func (r *sessionRuntime) mayBeOver(e *sessionEntry, now int64) bool {
	p := r.policy
	return p.Lifetime > 0 && now-e.started >= p.Lifetime.Milliseconds() ||
		p.Idle > 0 && now-e.seen.Load() >= p.Idle.Milliseconds()
}

// lookupSession asks Redis about a session (recording activity on it) and
// caches the answer. Concurrent lookups of one session share one call.
func (t *Tenant) lookupSession(ctx context.Context, sid string) (*sessionEntry, error) {
	v, err, _ := t.sess.flight.Do(sid, func() (any, error) {
		stripe := t.sess.stripe(sid)
		gen := stripe.Load()
		now := t.now()
		st, err := t.app.store.TouchSession(context.WithoutCancel(ctx), t.keys, t.sess.policy, sid, now)
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
			e.wrote.Store(now.UnixMilli())
		}
		// A user that expires (made for an unverified id) is renewed by
		// its session's requests too; the entry lasts until it is due.
		keep := t.renewSessionUser(ctx, st)
		// Cache only if no end of this session was announced meanwhile:
		// the answer may predate it.
		if stripe.Load() == gen {
			t.sess.cache.AddFor(sid, e, keep)
		}
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	e, _ := v.(*sessionEntry)
	switch {
	case e == nil:
		t.debug("unknown session refused")
		return nil, errUnknownSession()
	case e.reason != "":
		t.debug("ended session refused", zap.String("reason", e.reason))
		return nil, errSessionEnded(e.reason)
	}
	return e, nil
}

func (r *sessionRuntime) stripe(sid string) *atomic.Uint64 {
	return &r.gen[maphash.String(r.seed, sid)%uint64(len(r.gen))]
}

// dropSession forgets what this instance knows of a session (it ended).
func (t *Tenant) dropSession(sid string) {
	t.sess.stripe(sid).Add(1)
	t.sess.cache.Remove(sid)
}

// flushSessions forgets every session (invalidations may have been lost).
func (t *Tenant) flushSessions() {
	for i := range t.sess.gen {
		t.sess.gen[i].Add(1)
	}
	t.sess.cache.Purge()
}

func errSessionEnded(reason string) *apiError {
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
	default:
		reason, why = store.ReasonExpired, "it is over"
	}
	e := newError(http.StatusUnauthorized, codeSessionEnded, "the session has ended ("+reason+"): "+why+"; log in again")
	e.Reason = reason
	return e
}

func errUnknownSession() *apiError {
	return newError(http.StatusUnauthorized, codeUnknownSession, "the session id is not known; log in again")
}
