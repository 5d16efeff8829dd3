package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"
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
//	                linked: expiry.go): PERSIST I and X (X is then I's own
//	                anonymous user, in sI). In step 1's script when X is
//	                AnonymousUserOf(I) (every install this release makes);
//	                else, for an install of an earlier release, by itself
//	                right after it. Nothing permanent names an install or a
//	                user that may expire.
//	  (rare)        X's state when I alone does not tell: GET the ext key of
//	                an older reservation, or HGET X's ext.
//	2 claim   (sE)  ext:E exists → U (if ext:E expires, U was made for E
//	                unverified, in sE: PERSIST ext:E, U and U's sessions, in
//	                one script). Else SET ext:E (only ever here, only
//	                if absent): to X if X is reserved for E ("claim", event
//	                user.linked), or to a new user N made in sE ("create",
//	                event user.created).
//	3 adopt   (sU)  only if U != X: U lists I (field i:I of U's hash; "U's
//	                installs" below also means an old-schema set) (and U.ext = E if
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
//     it was cut short); a retry with E reuses them. A retry with another E' finds X
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

	// hook, if set, runs after each step with its name ("locked",
	// "persisted", "claimed", "adopted", "moved", "dropped", "finished");
	// an error aborts the link there as a crash or timeout would. Only
	// this package's tests set it.
	hook func(step string) error
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
	l := &linker{s: s, k: k, req: req, o: o, sI: sI, sE: ExternalShard(req.ExternalID),
		anon: AnonymousUserOf(req.InstallID)}
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
	anon   string // AnonymousUserOf the install: its keys are step 1's

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
	if l.o.hook != nil {
		return l.o.hook(name)
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
