package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The steps of a link (see links.go for their order and why a crash
// between any two is safe): each one script in one slot, or one command.

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
	// A write (the reservation, and maybe step 1b): with durability it
	// waits for its replicas like the other steps.
	r, err := l.s.runWrite(ctx, linkLockScript,
		[]string{l.k.Install(l.sI, l.req.InstallID), l.k.InstallLock(l.sI, l.req.InstallID),
			l.k.User(l.sI, l.anon), l.k.UserInstalls(l.sI, l.anon)},
		l.req.ExternalID, l.token, l.o.LockTTL.Milliseconds(), candidate, l.anon,
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
		cctx, cancel := l.s.deadline(ctx)
		owner, err := ExternalUser(cctx, l.s.rdb, l.k, st.claim)
		cancel()
		if err != nil {
			return userX{}, wrap(err)
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
		[]string{l.k.External(E), l.k.User(l.sE, candidate), l.k.Events(l.sE), l.k.ExternalBucket(E)},
		mode, who, E, l.nowMS(), l.k.Tenant(), typ, data, boolArg(Bucketed(E)),
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
		[]string{l.k.User(sU, U)}, l.req.InstallID, ext).Err())
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
	// One script in the old user's slot: the field, and the member of an
	// installs set of the old schema.
	err = l.s.runWrite(ctx, installDropScript,
		[]string{l.k.User(sP, prev), l.k.UserInstalls(sP, prev)},
		InstallField(l.req.InstallID), l.req.InstallID).Err()
	if err := wrap(err); err != nil {
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
