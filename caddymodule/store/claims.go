package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// EventUserClaimsUpdated is appended when the customer backend changes a
// user's claims: data {user_id, claims}, the claims as they now are.
const EventUserClaimsUpdated = "user.claims_updated"

// ErrUserExpires is returned by SetUserClaims for a user that expires (an
// install's anonymous user, or one made for an unverified id, that no link
// or verified credential has named yet): claims are kept for permanent
// users only, so that nothing outlives the user it describes.
var ErrUserExpires = errors.New("the user expires: claims are kept for permanent users only")

// ClaimsTooLargeError is returned by SetUserClaims when the user's claims
// would exceed their limit: nothing was done.
type ClaimsTooLargeError struct {
	Size, Limit int
}

func (e *ClaimsTooLargeError) Error() string {
	return fmt.Sprintf("claims would be %d bytes, over the limit of %d", e.Size, e.Limit)
}

// SetUserClaims changes a user's claims (the values the customer backend
// vouches for, which idlink's tokens carry) in one script in the user's
// slot: merged or replaced as u says, unless the result would exceed
// u.Limit (*ClaimsTooLargeError), and with a user.claims_updated event
// when they changed. It returns the claims as compact JSON, keys in
// sorted order. A malformed id or an unknown user is ErrUserNotFound.
func (s *Store) SetUserClaims(ctx context.Context, k *Keys, userID string, u AttributeUpdate, now time.Time) (claims string, changed bool, err error) {
	shard, err := ParseID(KindUser, userID)
	if err != nil {
		return "", false, ErrUserNotFound
	}
	mode := "merge"
	if u.Replace {
		mode = "replace"
	}
	args := make([]any, 0, 5+2*len(u.Fields))
	args = append(args, mode, strconv.Itoa(u.Limit), strconv.FormatInt(now.UnixMilli(), 10), k.Tenant(), userID)
	for _, f := range u.Fields {
		args = append(args, f[0], f[1])
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := s.runWrite(ctx, userClaimsScript,
		[]string{k.User(shard, userID), k.UserClaims(shard, userID), k.Events(shard)}, args...).Slice()
	if err != nil {
		return "", false, wrap(err)
	}
	switch {
	case len(res) == 1 && replyString(res[0]) == "not_found":
		return "", false, ErrUserNotFound
	case len(res) == 1 && replyString(res[0]) == "expires":
		return "", false, ErrUserExpires
	case len(res) == 2 && replyString(res[0]) == "too_large":
		size, _ := strconv.Atoi(replyString(res[1]))
		return "", false, &ClaimsTooLargeError{Size: size, Limit: u.Limit}
	case len(res) == 3 && replyString(res[0]) == "ok":
		n, _ := res[2].(int64)
		return replyString(res[1]), n == 1, nil
	}
	return "", false, badReply(res)
}

// UserClaims returns a user's claims as compact JSON ("{}" if none), keys
// in sorted order.
func (s *Store) UserClaims(ctx context.Context, k *Keys, userID string) (string, error) {
	return s.userObject(ctx, "user claims", userID, k.UserClaims)
}
