package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Linking an install to an external id
//
// An install I (shard sI) points to a user X; an external id E lives in
// shard sE; its user U lives wherever it was made. No single slot holds
// them all, so Link is a sequence of steps, each ONE single-slot script or
// single-key command, each idempotent, under a per-install lock:
//
//	1 lock    (sI)  read I; a repeat of its last link is answered from the
//	                remembered outcome with no lock and no write. Else take
//	                I's lock; if I still has its own anonymous user (X ==
//	                anon_user), reserve X for E (anon_claim, set once: X can
//	                never take another external id); fix the id a new user
//	                would get (pending_user for pending_ext).
//	1b persist (sI) only if I expires (made by POST /installs, never
//	                linked: expiry.go): PERSIST I's tenant entry, then I and
//	                X (X is then I's own anonymous user, in sI). Nothing
//	                permanent names an install or a user that may expire.
//	  (rare)        X's state when I alone does not tell: GET the ext key of
//	                an older reservation, or HGET X's ext.
//	2 claim   (sE)  ext:E exists → U (if ext:E expires, U was made for E
//	                unverified, in sE: PERSIST ext:E, U and U's sessions, in
//	                one script). Else SET ext:E (only ever here, only
//	                if absent): to X if X is reserved for E ("claim", event
//	                user.linked), or to a new user N made in sE ("create",
//	                event user.created).
//	3 adopt   (sU)  only if U != X: SADD U:installs I (and U.ext = E if
//	                missing).
//	4 move    (sI)  only if U != X: CAS I.user X → U, remember the outcome,
//	                XADD user.merged (X anonymous) or user.linked, PUBLISH the
//	                invalidation. If X lives in sI (an anonymous X always
//	                does), SREM X:installs I and release the lock here too,
//	                and delete an anonymous X (hash and installs set): it
//	                was I's own, nothing else names it; else set I.prev = X.
//	5 drop    (sX)  only if X is elsewhere: SREM X:installs I, then
//	6 finish  (sI)  record the outcome when U == X (and X.ext = E if X is in
//	                sI), forget prev, release the lock.
//
// Why every crash or timeout point is safe (invariants: every install's
// user lists the install; an external id has one user, and a user at most
// one external id):
//
//   - before 2: only the reservation and the pending id were written, both
//     in I, and maybe I and X made permanent (1b, which a retry redoes if
//     it was cut short: a permanent tenant entry beside an install that
//     still expires is harmless); a retry with E reuses them. A retry with another E' finds X
//     reserved for E: if ext:E names X, X is identified (shared device);
//     else X can never be claimed, so E' gets a new user and X is merged.
//   - between 2 and 4: ext:E names U (or X, or N with no install yet); I
//     still points to X, which lists it. A retry of E finds ext:E and goes
//     on (a claim of X for E answers created:true again since X is reserved
//     for E; a made N is recognised as pending_user).
//   - between 3 and 4: U lists I but I points to X, which still lists I.
//     A stale member is harmless: readers check the install (GetUser).
//   - between 4 and 5/6: I points to U, which lists I; X may still list
//     I (stale) and I.prev names X, so the next link of I, or a repeat of
//     this one, drops it under the lock.
//   - 5 is the only step that removes a member, so it runs only under the
//     lock and only while the lock has not half expired; otherwise the
//     stale member stays, which is harmless. The lock keeps two links of I
//     from interleaving; the CAS in 4 makes a link whose lock expired
//     start over instead of overwriting a newer one.
//   - ext:E is never reassigned and a user is claimed only for the one id
//     it was reserved for, so neither crashes nor races give an external id
//     two users or a user two external ids.
//
// Events are appended in the same script as the change they describe, so
// a link interrupted and retried emits each event once; a repeat emits none.

// Link defaults.
const (
	DefaultLinkLockTTL  = 5 * time.Second
	DefaultLinkLockWait = time.Second
	maxLinkAttempts     = 3
)

// ErrLinkInProgress is returned when another link of the same install
// holds its lock for longer than the wait.
var ErrLinkInProgress = errors.New("another link of this install is in progress")

// LinkRequest is one link of an install to an external id.
type LinkRequest struct {
	InstallID  string
	ExternalID string
	Now        time.Time
	// Channel and Message are published when the install moves to
	// another user (in the same script as the move).
	Channel, Message string
}

// LinkOptions tune Link; the zero value means the defaults.
type LinkOptions struct {
	// LockTTL is the expiry of the install's link lock. Default 5s.
	LockTTL time.Duration
	// LockWait is how long a link waits for another link of the same
	// install before ErrLinkInProgress. Default 1s.
	LockWait time.Duration
	// Hook, if set, runs after each step with its name ("locked",
	// "persisted", "claimed", "adopted", "moved", "dropped", "finished");
	// an error aborts the link there as a crash or timeout would. For
	// tests.
	Hook func(step string) error
}

// LinkResult is the answer of a link.
type LinkResult struct {
	UserID     string
	Created    bool   // the external id was new: UserID was made (or made identified) for it
	MergedFrom string // the install's previous, anonymous user, when it moved away from it
	Moved      bool   // the install points to another user than before this call
	Repeat     bool   // a repeat of the install's last link: nothing changed
}

// Link links an install to an external id (see the comment above) and
// returns the outcome. ErrInstallNotFound (also for a malformed id),
// ErrInstallWrongTenant, ErrLinkInProgress, or ErrUnavailable.
func (s *Store) Link(ctx context.Context, k *Keys, req LinkRequest, o LinkOptions) (LinkResult, error) {
	sI, err := ParseID(KindInstall, req.InstallID)
	if err != nil {
		return LinkResult{}, ErrInstallNotFound
	}
	if o.LockTTL <= 0 {
		o.LockTTL = DefaultLinkLockTTL
	}
	if o.LockWait <= 0 {
		o.LockWait = DefaultLinkLockWait
	}
	l := &linker{s: s, k: k, req: req, o: o, sI: sI, sE: ExternalShard(req.ExternalID)}
	for range maxLinkAttempts {
		res, again, err := l.once(ctx)
		if err != nil || !again {
			return res, err
		}
	}
	return LinkResult{}, ErrLinkInProgress
}

// linker runs one Link.
type linker struct {
	s      *Store
	k      *Keys
	req    LinkRequest
	o      LinkOptions
	sI, sE int

	token    string
	lockedAt time.Time
	locked   bool // we may hold the lock: release it if we fail
}

// installState is what step 1 read.
type installState struct {
	kind                                string // missing, busy, same, repair, locked
	user, anon, claim                   string
	linkExt, linkUser, linkMerged, prev string
	linkCreated                         bool
	candidate                           string
	expires                             bool // the install has a TTL (locked only)
}

func (l *linker) step(name string) error {
	if l.o.Hook != nil {
		return l.o.Hook(name)
	}
	return nil
}

// once is one attempt; again reports that the install changed under a
// lock that expired and the link must start over.
func (l *linker) once(ctx context.Context) (res LinkResult, again bool, err error) {
	l.token = rand.Text()
	st, err := l.lock(ctx)
	if err != nil {
		return res, false, err
	}
	defer func() {
		if err != nil && l.locked {
			l.release()
		}
	}()
	switch st.kind {
	case "missing":
		return res, false, l.s.installTenant(ctx, l.k, l.req.InstallID)
	case "same":
		return st.remembered(), false, nil
	case "repair":
		done, err := l.dropPrev(ctx, st.prev, st.user)
		if err != nil {
			return res, false, err
		}
		return st.remembered(), false, l.finish(ctx, ifThen(done, st.prev))
	}
	if err := l.step("locked"); err != nil {
		return res, false, err
	}
	if st.expires {
		// Step 1b: a link touches the install, which from now on never
		// expires, nor does its user.
		if _, err := l.s.setInstallExpiry(ctx, l.k, l.req.InstallID, st.user, 0, false); err != nil {
			return res, false, err
		}
		if err := l.step("persisted"); err != nil {
			return res, false, err
		}
	}

	X, E := st.user, l.req.ExternalID
	xs, err := l.userState(ctx, st)
	if err != nil {
		return res, false, err
	}
	if xs.repairExt != "" {
		if err := l.adopt(ctx, X, xs.repairExt); err != nil {
			return res, false, err
		}
	}
	// A prev left by an earlier interrupted move: drop it now, under the
	// lock. Its record is overwritten by a move or forgotten by finish.
	prevDone := ""
	if st.prev != "" {
		done, err := l.dropPrev(ctx, st.prev, X)
		if err != nil {
			return res, false, err
		}
		prevDone = ifThen(done, st.prev)
	}

	U, assigned, err := l.claim(ctx, xs.claimable, X, st.candidate)
	if err != nil {
		return res, false, err
	}
	if err := l.step("claimed"); err != nil {
		return res, false, err
	}
	// Made for E by this call, or by an interrupted attempt of it: X was
	// reserved for E, or U is the id this link fixed for a new user.
	created := assigned || (xs.claimable && U == X) || U == st.candidate

	sX, err := ParseID(KindUser, X)
	if err != nil {
		return res, false, fmt.Errorf("%w: install %s points to malformed user %q", ErrUnavailable, l.req.InstallID, X)
	}
	if U == X {
		if sX != l.sI {
			if err := l.adopt(ctx, X, E); err != nil {
				return res, false, err
			}
		}
		ok, err := l.record(ctx, X, created, sX == l.sI, prevDone)
		if err != nil || !ok {
			return res, err == nil, err
		}
		return LinkResult{UserID: X, Created: created}, false, l.step("finished")
	}

	if err := l.adopt(ctx, U, E); err != nil {
		return res, false, err
	}
	if err := l.step("adopted"); err != nil {
		return res, false, err
	}
	mergedFrom := ifThen(xs.anonymous, X)
	sameShard := sX == l.sI
	ok, err := l.move(ctx, X, U, created, mergedFrom, sameShard)
	if err != nil {
		return res, false, err
	}
	if !ok || sameShard {
		l.locked = false // released by the script
	}
	if !ok {
		return res, true, nil
	}
	res = LinkResult{UserID: U, Created: created, MergedFrom: mergedFrom, Moved: true}
	if err := l.step("moved"); err != nil {
		return res, false, err
	}
	if sameShard {
		return res, false, nil
	}
	done, err := l.dropPrev(ctx, X, U)
	if err != nil {
		return res, false, err
	}
	return res, false, l.finish(ctx, ifThen(done, X))
}

func ifThen(cond bool, v string) string {
	if cond {
		return v
	}
	return ""
}

func (st *installState) remembered() LinkResult {
	return LinkResult{UserID: st.user, Created: st.linkCreated, MergedFrom: st.linkMerged, Repeat: true}
}

// lock runs step 1, waiting for another link of the install to finish.
func (l *linker) lock(ctx context.Context) (installState, error) {
	deadline := time.Now().Add(l.o.LockWait)
	delay := 5 * time.Millisecond
	candidate := NewID(KindUser, l.sE)
	for {
		st, err := l.lockOnce(ctx, candidate)
		if err != nil || st.kind != "busy" {
			if err == nil && (st.kind == "locked" || st.kind == "repair") {
				l.locked, l.lockedAt = true, time.Now()
			}
			return st, err
		}
		if time.Now().Add(delay).After(deadline) {
			return st, ErrLinkInProgress
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return st, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

func (l *linker) lockOnce(ctx context.Context, candidate string) (installState, error) {
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	r, err := linkLockScript.Run(ctx, l.s.rdb,
		[]string{l.k.Install(l.sI, l.req.InstallID), l.k.InstallLock(l.sI, l.req.InstallID)},
		l.req.ExternalID, l.token, l.o.LockTTL.Milliseconds(), candidate,
	).StringSlice()
	if err != nil {
		return installState{}, wrap(err)
	}
	st := installState{kind: r[0]}
	switch {
	case st.kind == "same" && len(r) == 4, st.kind == "repair" && len(r) == 5:
		st.user, st.linkCreated, st.linkMerged = r[1], r[2] == "1", r[3]
		st.linkExt, st.linkUser = l.req.ExternalID, r[1]
		if st.kind == "repair" {
			st.prev = r[4]
		}
	case st.kind == "locked" && len(r) == 11:
		st.user, st.anon, st.claim = r[1], r[2], r[3]
		st.linkExt, st.linkUser, st.linkCreated, st.linkMerged = r[4], r[5], r[6] == "1", r[7]
		st.prev, st.candidate = r[8], r[9]
		st.expires = r[10] != "-1" && r[10] != "-2"
		if sh, err := ParseID(KindUser, st.candidate); err != nil || sh != l.sE {
			st.candidate = candidate // never make a user outside E's shard
		}
	case st.kind == "missing", st.kind == "busy":
	default:
		return installState{}, fmt.Errorf("%w: unexpected link_lock reply %q", ErrUnavailable, r)
	}
	return st, nil
}

// userX is what the install's user X is.
type userX struct {
	claimable bool   // the install's own anonymous user, reserved for this external id
	anonymous bool   // no external id: merged if the install moves away
	repairExt string // X is identified by this id, which its hash may lack
}

// userState tells what the install's user X is, from what step 1 read,
// asking Redis only when that does not tell.
func (l *linker) userState(ctx context.Context, st installState) (userX, error) {
	X, E := st.user, l.req.ExternalID
	switch {
	case st.linkUser == X && st.linkExt != "":
		// The install's last link made X the user of linkExt.
		return userX{}, nil
	case X == st.anon && st.claim == E:
		return userX{claimable: true, anonymous: true}, nil
	case X == st.anon && st.claim != "":
		// Reserved for another id by a link that was interrupted: did
		// that id get X? If not, X can never be claimed any more.
		owner, err := l.get(ctx, l.k.External(st.claim))
		if err != nil {
			return userX{}, err
		}
		if owner == X {
			return userX{repairExt: st.claim}, nil
		}
		return userX{anonymous: true}, nil
	default:
		// Not the install's own user and not from its last link: ask X
		// itself. An anonymous user that is not the install's own can
		// never be claimed by it.
		sX, err := ParseID(KindUser, X)
		if err != nil {
			return userX{}, fmt.Errorf("%w: install %s points to malformed user %q", ErrUnavailable, l.req.InstallID, X)
		}
		ext, err := l.hget(ctx, l.k.User(sX, X), "ext")
		if err != nil {
			return userX{}, err
		}
		return userX{anonymous: ext == ""}, nil
	}
}

// claim runs step 2 and returns the external id's user and whether this
// call assigned it. A user it finds that expires (made for the id
// unverified) is made permanent before anything else names it.
func (l *linker) claim(ctx context.Context, claimable bool, X, candidate string) (string, bool, error) {
	E := l.req.ExternalID
	mode, who, typ := "create", candidate, EventUserCreated
	var data []byte
	if claimable {
		mode, who, typ = "claim", X, EventUserLinked
		data, _ = json.Marshal(linkedEvent{UserID: X, ExternalID: E, InstallID: l.req.InstallID})
	} else {
		data, _ = json.Marshal(struct {
			UserID     string `json:"user_id"`
			ExternalID string `json:"external_id"`
		}{candidate, E})
	}
	cctx, cancel := l.s.deadline(ctx)
	defer cancel()
	r, err := l.s.runWrite(cctx, linkClaimScript,
		[]string{l.k.External(E), l.k.User(l.sE, candidate), l.k.Events(l.sE)},
		mode, who, E, l.nowMS(), l.k.Tenant(), typ, data,
	).Slice()
	if err != nil {
		return "", false, wrap(err)
	}
	if len(r) != 3 {
		return "", false, fmt.Errorf("%w: unexpected link_claim reply %v", ErrUnavailable, r)
	}
	u, _ := r[0].(string)
	n, _ := r[1].(int64)
	ttl, _ := r[2].(int64)
	if _, err := ParseID(KindUser, u); err != nil {
		return "", false, fmt.Errorf("%w: external id maps to malformed user %q", ErrUnavailable, u)
	}
	if ttl > 0 {
		if _, err := l.s.setUserExpiry(ctx, l.k, E, u, 0); err != nil {
			return "", false, err
		}
	}
	return u, n == 1, nil
}

// adopt runs step 3: U lists the install (and knows its external id).
func (l *linker) adopt(ctx context.Context, U, ext string) error {
	sU, err := ParseID(KindUser, U)
	if err != nil {
		return fmt.Errorf("%w: malformed user %q", ErrUnavailable, U)
	}
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	return wrap(l.s.runWrite(ctx, linkAdoptScript,
		[]string{l.k.User(sU, U), l.k.UserInstalls(sU, U)}, l.req.InstallID, ext).Err())
}

// move runs step 4; false if the install no longer points to X.
func (l *linker) move(ctx context.Context, X, U string, created bool, mergedFrom string, sameShard bool) (bool, error) {
	typ := EventUserLinked
	var data []byte
	if mergedFrom != "" {
		typ = EventUserMerged
		data, _ = json.Marshal(mergedEvent{UserID: U, MergedFrom: X, ExternalID: l.req.ExternalID, InstallID: l.req.InstallID})
	} else {
		data, _ = json.Marshal(linkedEvent{UserID: U, ExternalID: l.req.ExternalID, InstallID: l.req.InstallID})
	}
	inst := l.k.Install(l.sI, l.req.InstallID)
	xSet, xHash, xClaims, same := inst, inst, inst, "0"
	if sameShard {
		xSet, xHash, xClaims, same = l.k.UserInstalls(l.sI, X), l.k.User(l.sI, X), l.k.UserClaims(l.sI, X), "1"
	}
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	n, err := l.s.runWrite(ctx, linkMoveScript,
		[]string{inst, l.k.InstallLock(l.sI, l.req.InstallID), l.k.Events(l.sI), xSet, xHash, xClaims},
		l.req.InstallID, X, U, l.req.ExternalID, boolArg(created), mergedFrom, l.token, same,
		l.nowMS(), l.k.Tenant(), typ, data, l.req.Channel, l.req.Message,
	).Int()
	if err != nil {
		return false, wrap(err)
	}
	return n == 1, nil
}

// dropPrev runs step 5: the user the install left no longer lists it.
// Only under the lock, and only while the lock is far from expiring: a
// removal that ran after another link moved the install back to prev
// would break the invariant, while skipping it only leaves a stale
// member (done is then false). cur is the install's current user.
func (l *linker) dropPrev(ctx context.Context, prev, cur string) (done bool, err error) {
	sP, err := ParseID(KindUser, prev)
	if err != nil || prev == cur || time.Since(l.lockedAt) > l.o.LockTTL/2 {
		return false, nil
	}
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	if err := wrap(l.s.rdb.SRem(ctx, l.k.UserInstalls(sP, prev), l.req.InstallID).Err()); err != nil {
		return false, err
	}
	return true, l.step("dropped")
}

// record runs step 6 for a link that kept the install's user.
func (l *linker) record(ctx context.Context, X string, created, xInShard bool, prevDone string) (bool, error) {
	inst := l.k.Install(l.sI, l.req.InstallID)
	xHash, same := inst, "0"
	if xInShard {
		xHash, same = l.k.User(l.sI, X), "1"
	}
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	n, err := l.s.runWrite(ctx, linkFinishScript,
		[]string{inst, l.k.InstallLock(l.sI, l.req.InstallID), xHash},
		l.token, prevDone, X, l.req.ExternalID, boolArg(created), same,
	).Int()
	if err != nil {
		return false, wrap(err)
	}
	l.locked = false
	return n == 1, nil
}

// finish runs step 6 without recording: forget prev, release the lock.
func (l *linker) finish(ctx context.Context, prevDone string) error {
	inst := l.k.Install(l.sI, l.req.InstallID)
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	err := l.s.runWrite(ctx, linkFinishScript,
		[]string{inst, l.k.InstallLock(l.sI, l.req.InstallID), inst},
		l.token, prevDone, "", "", "0", "0",
	).Err()
	if err != nil {
		return wrap(err)
	}
	l.locked = false
	return l.step("finished")
}

// release gives the lock back after a failure, best effort: if it fails
// too, the lock expires by itself.
func (l *linker) release() {
	ctx, cancel := context.WithTimeout(context.Background(), l.s.timeout)
	defer cancel()
	inst := l.k.Install(l.sI, l.req.InstallID)
	_ = linkFinishScript.Run(ctx, l.s.rdb,
		[]string{inst, l.k.InstallLock(l.sI, l.req.InstallID), inst},
		l.token, "", "", "", "0", "0").Err()
	l.locked = false
}

func (l *linker) get(ctx context.Context, key string) (string, error) {
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	v, err := l.s.rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return v, wrap(err)
}

func (l *linker) hget(ctx context.Context, key, field string) (string, error) {
	ctx, cancel := l.s.deadline(ctx)
	defer cancel()
	v, err := l.s.rdb.HGet(ctx, key, field).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return v, wrap(err)
}

func (l *linker) nowMS() string { return strconv.FormatInt(l.req.Now.UnixMilli(), 10) }

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Event data of links (the "data" field of the outbox entry).
type linkedEvent struct {
	UserID     string `json:"user_id"`
	ExternalID string `json:"external_id"`
	InstallID  string `json:"install_id"`
}

type mergedEvent struct {
	UserID     string `json:"user_id"`
	MergedFrom string `json:"merged_from"`
	ExternalID string `json:"external_id"`
	InstallID  string `json:"install_id"`
}
