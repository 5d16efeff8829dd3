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

// Event types appended to the outbox.
const (
	EventUserCreated = "user.created"
	EventUserLinked  = "user.linked"
	EventUserMerged  = "user.merged"
)

// ResolveExternal returns the user of a verified external id, creating
// the user on first sight, in one round trip. Any number of concurrent
// calls for one external id, from any number of processes, agree on one
// user: the script runs atomically in the external id's slot, and the
// first one to run creates the user (and appends user.created to the
// shard's outbox). A user that ResolveUnverified made for the id, which
// expires, becomes permanent (a second round trip, once): a verified
// credential names it.
func (s *Store) ResolveExternal(ctx context.Context, k *Keys, externalID string, now time.Time) (userID string, created bool, err error) {
	userID, created, left, err := s.resolve(ctx, k, externalID, now, 0)
	if err == nil && left > 0 {
		_, err = s.setUserExpiry(ctx, k, externalID, userID, 0)
	}
	return userID, created, err
}

// resolve runs resolve.lua: a user made here expires after ttl (0:
// never). It returns how long the user has left (0: never).
func (s *Store) resolve(ctx context.Context, k *Keys, externalID string, now time.Time, ttl time.Duration) (userID string, created bool, left time.Duration, err error) {
	shard := ExternalShard(externalID)
	candidate := NewID(KindUser, shard)
	data, _ := json.Marshal(struct {
		UserID     string `json:"user_id"`
		ExternalID string `json:"external_id"`
	}{candidate, externalID})
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := s.runWrite(ctx, resolveScript,
		[]string{k.External(externalID), k.User(shard, candidate), k.Events(shard), k.ExternalBucket(externalID)},
		candidate, externalID, strconv.FormatInt(now.UnixMilli(), 10), k.Tenant(), data, ttlArg(ttl),
		boolArg(Bucketed(externalID)),
	).Slice()
	if err != nil {
		return "", false, 0, wrap(err)
	}
	if len(res) != 3 {
		return "", false, 0, fmt.Errorf("%w: unexpected script reply %v", ErrUnavailable, res)
	}
	userID, _ = res[0].(string)
	n, _ := res[1].(int64)
	ms, _ := res[2].(int64)
	return userID, n == 1, leftOf(ms), nil
}

// ExternalUser reads the user an external id names ("" if none) through
// c, without changing anything: for a check that needs no script. The own
// key is read before the bucket, in one pipeline: a script only ever moves
// a mapping from the key into the bucket, so the read never misses one
// that moves in between.
func ExternalUser(ctx context.Context, c redis.Cmdable, k *Keys, externalID string) (string, error) {
	var own, bucketed *redis.StringCmd
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		own = p.Get(ctx, k.External(externalID))
		if Bucketed(externalID) {
			bucketed = p.HGet(ctx, k.ExternalBucket(externalID), externalID)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", err
	}
	if u := own.Val(); u != "" {
		return u, nil
	}
	if bucketed != nil {
		return bucketed.Val(), nil
	}
	return "", nil
}
