package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Session event types appended to the outbox.
const (
	EventSessionStarted = "session.started"
	EventSessionEnded   = "session.ended"
)

// Reasons a session ends, as session.ended events and session_ended
// answers name them.
const (
	ReasonEvicted   = "evicted"    // a newer login of the user took its place
	ReasonLoggedOut = "logged_out" // DELETE /sessions/current
	ReasonIdle      = "idle"       // no request for the idle timeout
	ReasonExpired   = "expired"    // its absolute lifetime ran out
	ReasonRevoked   = "revoked"    // ended from the user's session list or by an administrator
)

// Session states answered by TouchSession.
const (
	SessionLive    = "live"
	SessionEnded   = "ended"
	SessionUnknown = "unknown"
)

// AttributesTooLargeError is returned by AdmitSession when the user's
// attributes would exceed their limit: nothing was done.
type AttributesTooLargeError struct {
	Size, Limit int // bytes of compact JSON
}

func (e *AttributesTooLargeError) Error() string {
	return fmt.Sprintf("attributes would be %d bytes, over the limit of %d", e.Size, e.Limit)
}

// Defaults of how long an ended session's hash is kept (SessionPolicy.Keep)
// when there is no idle timeout.
const (
	keepWithLifetimeOnly = 24 * time.Hour
	keepWithNeither      = 30 * 24 * time.Hour
)

// SessionPolicy is a tenant's session limit.
type SessionPolicy struct {
	// Max is the number of live sessions a user may have (at least 1).
	Max int
	// Idle ends a session after this long without a request; 0: never.
	Idle time.Duration
	// Lifetime ends a session this long after it started; 0: never.
	Lifetime time.Duration
	// Channel is the pub/sub channel on which the end of a session is
	// announced, as "<tenant> session <session id>".
	Channel string
}

// Keep is how long a session's hash is kept past the moment the session
// would have ended by itself (its lifetime, or its idle timeout from its
// last activity or its end): the idle timeout; with no idle timeout, 24h
// if there is a lifetime, else 30 days (a session with neither is
// forgotten after 30 days without a request).
func (p SessionPolicy) Keep() time.Duration {
	switch {
	case p.Idle > 0:
		return p.Idle
	case p.Lifetime > 0:
		return keepWithLifetimeOnly
	default:
		return keepWithNeither
	}
}

// args are ARGV[1..6] of every session script (see lua/sessions_lib.lua).
func (p SessionPolicy) args(k *Keys, now time.Time, more ...any) []any {
	a := make([]any, 0, 6+len(more))
	a = append(a, unixMS(now), durMS(p.Idle), durMS(p.Lifetime), durMS(p.Keep()), k.Tenant(), p.Channel)
	return append(a, more...)
}

func unixMS(t time.Time) string    { return strconv.FormatInt(t.UnixMilli(), 10) }
func durMS(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
func fromMS(s string) time.Time    { n, _ := strconv.ParseInt(s, 10, 64); return time.UnixMilli(n) }
func replyString(v any) string     { s, _ := v.(string); return s }
func badReply(v any) error         { return fmt.Errorf("%w: unexpected script reply %v", ErrUnavailable, v) }

// NewSession is a session to admit.
type NewSession struct {
	// ID is NewID(KindSession, shard of UserID): the session lives in its
	// user's slot.
	ID     string
	UserID string
	// InstallID is the install the session was started on, linked to
	// UserID; empty if unknown. A new session of an install replaces the
	// install's previous one.
	InstallID string
	// Verified tells whether the login's credential was verified (not a
	// report-mode pass).
	Verified bool
	// Attributes, if not nil, are merged into the user's attributes.
	Attributes *AttributeUpdate
	// Email and Phone, when not empty, are stored as the user's verified
	// email and phone.
	Email, Phone string
}

// AttributeUpdate is a change of a user's external attributes.
type AttributeUpdate struct {
	// Replace replaces the whole object; otherwise the fields are merged
	// into it (keys not named are kept).
	Replace bool
	// Fields are the top-level keys, JSON-encoded with their quotes,
	// and their values as compact JSON; the value "null" removes the key.
	Fields [][2]string
	// Limit is the most bytes the resulting object may take as compact
	// JSON.
	Limit int
}

// AdmitSession admits a new session under the limit in one script in the
// user's slot: it ends the user's sessions past their idle timeout or
// lifetime, and the previous session of the same install, then the least
// recently active ones until, with the new one, the user has p.Max live;
// it appends session.started and a session.ended per ended session to the
// shard's outbox and announces every end on p.Channel; with the session
// it stores the verified email and phone and merges the attributes, unless
// they would exceed their limit (*AttributesTooLargeError: then nothing at
// all is done). It returns the ids
// of the sessions ended to make room (reason evicted). Any number of
// concurrent admissions, from any number of processes, leave at most
// p.Max live sessions.
func (s *Store) AdmitSession(ctx context.Context, k *Keys, p SessionPolicy, ns NewSession, now time.Time) (evicted []string, err error) {
	shard, err := ParseID(KindUser, ns.UserID)
	if err != nil {
		return nil, fmt.Errorf("admit session: user id: %w", err)
	}
	if ss, err := ParseID(KindSession, ns.ID); err != nil || ss != shard {
		return nil, fmt.Errorf("admit session: session id %q is not in the user's shard", ns.ID)
	}
	if p.Max < 1 {
		return nil, fmt.Errorf("admit session: max must be at least 1")
	}
	data, _ := json.Marshal(struct {
		SessionID string `json:"session_id"`
		UserID    string `json:"user_id"`
		InstallID string `json:"install_id,omitempty"`
		Verified  bool   `json:"verified"`
	}{ns.ID, ns.UserID, ns.InstallID, ns.Verified})
	mode, limit := "", 0
	var pairs []any
	if a := ns.Attributes; a != nil {
		mode, limit = "merge", a.Limit
		if a.Replace {
			mode = "replace"
		}
		pairs = make([]any, 0, 2*len(a.Fields))
		for _, f := range a.Fields {
			pairs = append(pairs, f[0], f[1])
		}
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := s.runWrite(ctx, sessionAdmitScript,
		[]string{k.Events(shard), k.UserSessions(shard, ns.UserID), k.Session(shard, ns.ID),
			k.User(shard, ns.UserID), k.UserAttributes(shard, ns.UserID)},
		p.args(k, now, append([]any{ns.ID, ns.UserID, strconv.Itoa(p.Max), ns.InstallID, boolArg(ns.Verified), data,
			mode, strconv.Itoa(limit), ns.Email, ns.Phone}, pairs...)...)...,
	).Slice()
	if err != nil {
		return nil, wrap(err)
	}
	if len(res) != 2 {
		return nil, badReply(res)
	}
	switch replyString(res[0]) {
	case "too_large":
		size, _ := strconv.Atoi(replyString(res[1]))
		return nil, &AttributesTooLargeError{Size: size, Limit: limit}
	case "ok":
	default:
		return nil, badReply(res)
	}
	ids, _ := res[1].([]any)
	evicted = make([]string, 0, len(ids))
	for _, id := range ids {
		evicted = append(evicted, replyString(id))
	}
	return evicted, nil
}

// SessionState is what TouchSession found.
type SessionState struct {
	// Status is SessionLive, SessionEnded or SessionUnknown.
	Status string
	// Reason is why an ended session ended.
	Reason string
	UserID string
	// The rest is known for a live session only.
	InstallID  string
	Verified   bool
	Started    time.Time
	Last       time.Time
	ExternalID string // the user's
	Email      string // the user's verified email
	Phone      string // the user's verified phone
	// UserTTL is how long the user has left, for a user that expires
	// (made for an unverified id: see expiry.go); 0 for one that does not.
	UserTTL time.Duration
}

// TouchSession looks up a session and records activity at now on it, in
// one script in its slot. A live session past its idle timeout or lifetime
// is ended there (with its event and announcement) and answered as ended.
func (s *Store) TouchSession(ctx context.Context, k *Keys, p SessionPolicy, sessionID string, now time.Time) (SessionState, error) {
	shard, err := ParseID(KindSession, sessionID)
	if err != nil {
		return SessionState{Status: SessionUnknown}, nil
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := sessionTouchScript.Run(ctx, s.rdb,
		[]string{k.Events(shard), k.Session(shard, sessionID)},
		p.args(k, now, sessionID)...,
	).Slice()
	if err != nil {
		return SessionState{}, wrap(err)
	}
	if len(res) == 0 {
		return SessionState{}, badReply(res)
	}
	st := SessionState{Status: replyString(res[0])}
	switch {
	case st.Status == SessionUnknown:
	case st.Status == SessionEnded && len(res) == 3:
		st.Reason, st.UserID = replyString(res[1]), replyString(res[2])
	case st.Status == SessionLive && len(res) == 10:
		st.UserID = replyString(res[1])
		st.Started, st.Last = fromMS(replyString(res[2])), fromMS(replyString(res[3]))
		st.InstallID = replyString(res[4])
		st.Verified = replyString(res[5]) == "1"
		st.ExternalID, st.Email, st.Phone = replyString(res[6]), replyString(res[7]), replyString(res[8])
		if ms, _ := res[9].(int64); ms > 0 {
			st.UserTTL = time.Duration(ms) * time.Millisecond
		}
	default:
		return SessionState{}, badReply(res)
	}
	return st, nil
}

// EndSession ends a session with reason (logout), in one script in its
// slot, with its event and announcement. It is idempotent: for a session
// that had already ended it returns that end's reason and endedNow false.
// known is false for an id that names no session (or no longer does).
func (s *Store) EndSession(ctx context.Context, k *Keys, p SessionPolicy, sessionID, reason string, now time.Time) (why string, endedNow, known bool, err error) {
	shard, err := ParseID(KindSession, sessionID)
	if err != nil {
		return "", false, false, nil
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := s.runWrite(ctx, sessionEndScript,
		[]string{k.Events(shard), k.Session(shard, sessionID)},
		p.args(k, now, sessionID, reason)...,
	).Slice()
	if err != nil {
		return "", false, false, wrap(err)
	}
	if len(res) == 0 {
		return "", false, false, badReply(res)
	}
	switch st := replyString(res[0]); {
	case st == SessionUnknown:
		return "", false, false, nil
	case st == SessionEnded && len(res) == 2:
		return replyString(res[1]), false, true, nil
	case st == "ended_now" && len(res) == 2:
		return replyString(res[1]), true, true, nil
	}
	return "", false, false, badReply(res)
}

// UserAttributes returns a user's external attributes as compact JSON
// ("{}" if none), keys in sorted order.
func (s *Store) UserAttributes(ctx context.Context, k *Keys, userID string) (string, error) {
	return s.userObject(ctx, "user attributes", userID, k.UserAttributes)
}

// userObject reads a JSON object a user hash of the kind keyOf names
// stores (attributes, claims) as compact JSON, "{}" if none.
func (s *Store) userObject(ctx context.Context, what, userID string, keyOf func(shard int, userID string) string) (string, error) {
	shard, err := ParseID(KindUser, userID)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	m, err := s.rdb.HGetAll(ctx, keyOf(shard, userID)).Result()
	if err != nil {
		return "", wrap(err)
	}
	return attributesJSON(m), nil
}

// attributesJSON assembles the compact JSON object of an attributes hash.
func attributesJSON(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte(':')
		b.WriteString(m[k])
	}
	b.WriteByte('}')
	return b.String()
}

// LiveSession is one live session of a user.
type LiveSession struct {
	ID        string
	Started   time.Time
	Last      time.Time
	InstallID string
	// Verified tells whether the session's login verified its credential
	// (not a report or off mode pass).
	Verified bool
}

// UserSessions returns a user's live sessions at now (least recently
// active first) and external attributes (compact JSON, "{}" if none), in
// one read-only script. Sessions past their idle timeout or lifetime are
// left out.
func (s *Store) UserSessions(ctx context.Context, k *Keys, p SessionPolicy, userID string, now time.Time) (attrs string, live []LiveSession, err error) {
	shard, err := ParseID(KindUser, userID)
	if err != nil {
		return "", nil, fmt.Errorf("user sessions: %w", err)
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := userSessionsScript.Run(ctx, s.rdb,
		[]string{k.Events(shard), k.UserSessions(shard, userID), k.UserAttributes(shard, userID)},
		p.args(k, now)...,
	).Slice()
	if err != nil {
		return "", nil, wrap(err)
	}
	if len(res) != 2 {
		return "", nil, badReply(res)
	}
	flat, _ := res[0].([]any)
	m := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		m[replyString(flat[i])] = replyString(flat[i+1])
	}
	attrs = attributesJSON(m)
	rows, _ := res[1].([]any)
	live = make([]LiveSession, 0, len(rows))
	for _, r := range rows {
		f, _ := r.([]any)
		if len(f) != 5 {
			return "", nil, badReply(res)
		}
		live = append(live, LiveSession{
			ID: replyString(f[0]), Started: fromMS(replyString(f[1])),
			Last: fromMS(replyString(f[2])), InstallID: replyString(f[3]), Verified: replyString(f[4]) == "1",
		})
	}
	return attrs, live, nil
}
