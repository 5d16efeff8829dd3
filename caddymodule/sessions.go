package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// This file is the session limit: the tenant's session policy, admission
// at login (POST /sessions), the per-request session check of the idlink
// handler, logout (DELETE /sessions/current), and the sessions and
// attributes part of GET /users/{user_id}. The atomic steps themselves are
// the Lua scripts of store/sessions.go.

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

// unmarshalCaddyfile parses a tenant's sessions block:
//
//	sessions {
//		max <n>
//		idle <duration>|off
//		lifetime <duration>|off
//	}
func (s *Sessions) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("sessions %s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "max":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxSessionMax {
				return d.Errf("sessions max must be a number of sessions from 1 to %d, not '%s'", maxSessionMax, v)
			}
			s.Max = n
		case "idle", "lifetime":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			var dur caddy.Duration
			if v == "off" {
				dur = -1
				if sub == "lifetime" {
					dur = 0 // none is the default
				}
			} else {
				x, err := caddy.ParseDuration(v)
				if err != nil || x < minSessionTimeout {
					return d.Errf("sessions %s must be a duration of at least %v, or off, not '%s'", sub, minSessionTimeout, v)
				}
				dur = caddy.Duration(x)
			}
			if sub == "idle" {
				s.Idle = dur
			} else {
				s.Lifetime = dur
			}
		default:
			return d.Errf("unrecognized sessions subdirective '%s'", sub)
		}
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

// --- POST /sessions -----------------------------------------------------

// startSessionRequest is the optional body of POST /sessions.
type startSessionRequest struct {
	// ExternalAttributes is a JSON object merged into the user's stored
	// attributes.
	ExternalAttributes json.RawMessage `json:"external_attributes"`
	// MergeExternalAttributes false replaces the stored attributes
	// instead. Default: true.
	MergeExternalAttributes *bool `json:"merge_external_attributes"`
}

// startSessionResponse is the answer of POST /sessions.
type startSessionResponse struct {
	UserID    string `json:"user_id"`
	SessionID string `json:"session_id"`
	// ContactToken is set when the tenant issues contact tokens.
	ContactToken string `json:"contact_token,omitempty"`
	// ExpiresAt is the end of the session's lifetime (RFC 3339), null
	// without a lifetime.
	ExpiresAt *string `json:"expires_at"`
	// Evicted are the user's sessions ended to make room.
	Evicted []string `json:"evicted"`
	// Verified tells whether the login's credential verified. An
	// unverified (report or off mode) login linked no install, stored
	// no attributes and got no contact token.
	Verified bool `json:"verified"`
}

// startSession is POST /sessions (the SDK's session.start, identify and
// ssoLogin): it verifies the login's credentials exactly as the idlink
// handler does, links the install it presents (X-Install-Id) to the user,
// admits a new session under the user's limit, stores the external
// attributes and verified email/phone, and answers 201
// startSessionResponse.
//
// Errors, besides those of the credentials: 401 authentication_required
// (no user credential: anonymous, an install or a session alone), 401
// unknown_install, 409 link_in_progress (with Retry-After), 413
// attributes_too_large (nothing stored), 503 store_unavailable.
func (a *API) startSession(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	creds, bad := readCredentials(r.Header)
	if bad != nil {
		writeError(w, bad)
		return
	}
	var req startSessionRequest
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		if e := readJSON(w, r, &req); e != nil {
			writeError(w, e)
			return
		}
	}
	update, aerr := parseObjectUpdate("external_attributes", req.ExternalAttributes, req.MergeExternalAttributes, maxAttributesBytes)
	if aerr != nil {
		writeError(w, aerr)
		return
	}

	// A login starts a session: a session id sent along (the SDK's
	// previous one, maybe evicted) does not take part, and the install is
	// linked to the user rather than checked against its current user.
	installID := creds.installID
	creds.sessionID, creds.installID = "", ""
	if installID != "" {
		if _, err := store.ParseID(store.KindInstall, installID); err != nil {
			writeError(w, errUnknownInstall())
			return
		}
	}
	ctx := r.Context()
	linked := ""
	if installID != "" && creds.externalID != "" && len(t.Platforms) > 0 && creds.contactToken == "" && creds.ssoToken == "" {
		// A signed external id alone: link before resolving it, so that
		// an external id seen for the first time takes the install's
		// anonymous user (data continuity) instead of a new user that
		// the install's one would be merged into. Only once everything
		// the login presents verifies.
		// An unverified one (report, off) links nothing: see below.
		ok, mode, why := t.verifyExternalID(&creds)
		if !ok && mode == ModeEnforce {
			writeError(w, t.badSignature(why))
			return
		}
		if ok {
			if _, _, err := t.verifyAttributes(&creds, creds.externalID); err != nil {
				a.fail(w, err)
				return
			}
			res, err := t.link(ctx, installID, creds.externalID)
			if err != nil {
				a.fail(w, linkError(err))
				return
			}
			linked = res.UserID
		}
	}
	id, err := t.identify(ctx, &creds)
	if err != nil {
		a.fail(w, err)
		return
	}
	if id.userID == "" {
		writeError(w, newError(http.StatusUnauthorized, codeAuthRequired,
			"a login needs a user credential: a signed external id, a contact token or an SSO token"))
		return
	}
	id.installID = ""
	if !id.verified {
		// Report and off modes observe, they never bind: an unverified
		// login holds an unverified session of the user it names, and
		// that is all. It links no install (nor adopts its anonymous
		// user), writes no attributes (nor email or phone: identify
		// accepts those only beside a verified external id), gets no
		// contact token and evicts no verified session.
		if installID != "" || update != nil {
			t.logger.Info("report mode: unverified login binds nothing",
				zap.Bool("install_ignored", installID != ""), zap.Bool("attributes_ignored", update != nil))
		}
		installID, update = "", nil
		id.verifiedEmail, id.verifiedPhone = "", ""
	}
	if installID != "" {
		if linked == "" && id.externalID != "" {
			res, err := t.link(ctx, installID, id.externalID)
			if err != nil {
				a.fail(w, linkError(err))
				return
			}
			linked = res.UserID
		}
		if linked != id.userID {
			// An identity without an external id (nothing to link to),
			// or, defensively, a link that disagrees with it.
			writeError(w, newError(http.StatusUnauthorized, codeIdentityMismatch,
				"the install cannot be linked to this login's user"))
			return
		}
		id.installID = installID
	}

	res, err := t.startSession(ctx, id, update)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

// linkError maps the errors of linking an install at login.
func linkError(err error) error {
	switch {
	case errors.Is(err, store.ErrInstallNotFound), errors.Is(err, store.ErrInstallWrongTenant):
		return errUnknownInstall()
	case errors.Is(err, store.ErrLinkInProgress):
		e := newError(http.StatusConflict, codeLinkInProgress, "another link of this install is in progress; retry shortly")
		e.RetryAfter = 1
		return e
	}
	return err
}

func errUnknownInstall() *apiError {
	return newError(http.StatusUnauthorized, codeUnknownInstall, "the install id is not known")
}

// startSession admits a session for an identified user.
func (t *Tenant) startSession(ctx context.Context, id identity, attrs *store.AttributeUpdate) (*startSessionResponse, error) {
	shard, err := store.ParseID(store.KindUser, id.userID)
	if err != nil {
		return nil, fmt.Errorf("%w: user id %q: %v", store.ErrUnavailable, id.userID, err)
	}
	sign, err := t.prepareSessionToken(ctx, id)
	if err != nil {
		return nil, err
	}
	ns := store.NewSession{
		ID: store.NewID(store.KindSession, shard), UserID: id.userID, InstallID: id.installID,
		Verified: id.verified, Email: id.verifiedEmail, Phone: id.verifiedPhone, Attributes: attrs,
	}
	// Detached from the client's cancellation (the call keeps its
	// deadline): a client that hangs up mid-login gets no answer, but the
	// admission is not left to chance.
	started := t.now()
	evicted, err := t.app.store.AdmitSession(context.WithoutCancel(ctx), t.keys, t.sess.policy, ns, started)
	var tooLarge *store.AttributesTooLargeError
	if errors.As(err, &tooLarge) {
		return nil, newError(http.StatusRequestEntityTooLarge, codeAttributesTooLarge,
			fmt.Sprintf("the external attributes would be %d bytes of JSON after merging; the limit is %d", tooLarge.Size, tooLarge.Limit))
	}
	if err != nil {
		return nil, err
	}
	// This instance refuses the evicted sessions from now on; the others
	// hear it on the invalidation channel.
	for _, sid := range evicted {
		t.dropSession(sid)
	}
	res := &startSessionResponse{UserID: id.userID, SessionID: ns.ID, Evicted: evicted, Verified: id.verified}
	var expires time.Time
	if lt := t.sess.policy.Lifetime; lt > 0 {
		expires = started.Add(lt).UTC().Truncate(time.Millisecond)
		s := expires.Format(time.RFC3339Nano)
		res.ExpiresAt = &s
	}
	if sign != nil {
		if res.ContactToken, err = sign(ns.ID, expires); err != nil {
			return nil, err
		}
	}
	t.debug("session started", zap.String("user_id", id.userID), zap.Int("evicted", len(evicted)))
	return res, nil
}

// --- DELETE /sessions/current -------------------------------------------

// endCurrentSession is DELETE /sessions/current: logout of the session
// named by X-Session-Id. Its id never works again, on any instance. It is
// idempotent: a session that had already ended answers 200 too, with the
// reason it ended for.
func (a *API) endCurrentSession(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	creds, bad := readCredentials(r.Header)
	if bad != nil {
		writeError(w, bad)
		return
	}
	if creds.sessionID == "" {
		writeError(w, newError(http.StatusUnauthorized, codeAuthRequired, "send the session to end as X-Session-Id"))
		return
	}
	if _, err := store.ParseID(store.KindSession, creds.sessionID); err != nil {
		writeError(w, errUnknownSession())
		return
	}
	why, _, known, err := t.app.store.EndSession(context.WithoutCancel(r.Context()), t.keys, t.sess.policy, creds.sessionID, store.ReasonLoggedOut, t.now())
	if err != nil {
		a.fail(w, err)
		return
	}
	if !known {
		writeError(w, errUnknownSession())
		return
	}
	t.dropSession(creds.sessionID)
	writeJSON(w, http.StatusOK, struct {
		Ended  bool   `json:"ended"`
		Reason string `json:"reason"`
	}{true, why})
}

// --- GET /users/{user_id} -----------------------------------------------

// userSessionsView is the sessions and attributes part of GET
// /users/{user_id}.
type userSessionsView struct {
	// Sessions are the user's live sessions, least recently active first.
	Sessions []sessionView `json:"sessions"`
	// Attributes are the user's external attributes ({} if none).
	Attributes json.RawMessage `json:"attributes"`
}

// sessionView is one live session. Its id is shown as a prefix only: the
// full id is a bearer credential.
type sessionView struct {
	IDPrefix   string `json:"id_prefix"`
	Started    string `json:"started"`
	LastActive string `json:"last_active"`
	InstallID  string `json:"install_id,omitempty"`
}

// userSessions reads a user's live sessions and attributes in one round
// trip. The GET /users/{user_id} handler embeds the result.
func (t *Tenant) userSessions(ctx context.Context, userID string) (userSessionsView, error) {
	attrs, live, err := t.app.store.UserSessions(ctx, t.keys, t.sess.policy, userID, t.now())
	if err != nil {
		return userSessionsView{}, err
	}
	v := userSessionsView{Sessions: make([]sessionView, 0, len(live)), Attributes: json.RawMessage(attrs)}
	if !json.Valid(v.Attributes) {
		return userSessionsView{}, fmt.Errorf("%w: user %s: stored attributes are not valid JSON", store.ErrUnavailable, userID)
	}
	for _, s := range live {
		prefix := s.ID
		if len(prefix) > sessionIDPrefixLen {
			prefix = prefix[:sessionIDPrefixLen] + "…"
		}
		v.Sessions = append(v.Sessions, sessionView{
			IDPrefix: prefix, InstallID: s.InstallID,
			Started:    s.Started.UTC().Format(time.RFC3339Nano),
			LastActive: s.Last.UTC().Format(time.RFC3339Nano),
		})
	}
	return v, nil
}

// --- External attributes --------------------------------------------------
