package store

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"time"
)

// Revocation: a user's sessions ended on request, by the user (from its
// list of sessions) or by an administrator, named by their handle.

// SessionHandle is the public name of a session: the hex SHA-1 of its id
// (what redis.sha1hex computes in the scripts). Lists of a user's
// sessions show it instead of the id, which is a bearer credential; the
// id cannot be derived from it.
func SessionHandle(sessionID string) string {
	sum := sha1.Sum([]byte(sessionID))
	return hex.EncodeToString(sum[:])
}

// ValidHandle reports whether h has the shape of a SessionHandle.
func ValidHandle(h string) bool {
	if len(h) != 2*sha1.Size {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// EndedSession is a session EndUserSessions ended, and why.
type EndedSession struct {
	ID     string
	Reason string
}

// EndUserSessions ends live sessions of userID with reason (revocation),
// in one script in the user's slot, each with its session.ended event and
// announcement on p.Channel: the one whose SessionHandle is handle, or
// all of them when handle is empty, except the session keep (if not
// empty). Only the user's own sessions are
// considered: a handle of another user's session, or of a session that
// has already ended, ends nothing (an empty answer). A session found past
// its idle timeout or lifetime ends with that reason instead.
func (s *Store) EndUserSessions(ctx context.Context, k *Keys, p SessionPolicy, userID, handle, keep, reason string, now time.Time) ([]EndedSession, error) {
	shard, err := ParseID(KindUser, userID)
	if err != nil {
		return nil, nil
	}
	if handle != "" && !ValidHandle(handle) {
		return nil, nil
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := s.runWrite(ctx, userSessionsEndScript,
		[]string{k.Events(shard), k.UserSessions(shard, userID)},
		p.args(k, now, userID, reason, handle, keep)...,
	).Slice()
	if err != nil {
		return nil, wrap(err)
	}
	ended := make([]EndedSession, 0, len(res))
	for _, r := range res {
		f, _ := r.([]any)
		if len(f) != 2 {
			return nil, badReply(res)
		}
		ended = append(ended, EndedSession{ID: replyString(f[0]), Reason: replyString(f[1])})
	}
	return ended, nil
}
