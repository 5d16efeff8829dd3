package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Event types appended to the outbox.
const (
	EventUserCreated = "user.created"
	EventUserLinked  = "user.linked"
	EventUserMerged  = "user.merged"
)

// ResolveExternal returns the user of an external id, creating the user on
// first sight, in one round trip. Any number of concurrent calls for one
// external id, from any number of processes, agree on one user: the
// script runs atomically in the external id's slot, and the first one to
// run creates the user (and appends user.created to the shard's outbox).
func (s *Store) ResolveExternal(ctx context.Context, k *Keys, externalID string, now time.Time) (userID string, created bool, err error) {
	shard := ExternalShard(externalID)
	candidate := NewID(KindUser, shard)
	data, _ := json.Marshal(struct {
		UserID     string `json:"user_id"`
		ExternalID string `json:"external_id"`
	}{candidate, externalID})
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := s.runWrite(ctx, resolveScript,
		[]string{k.External(externalID), k.User(shard, candidate), k.Events(shard)},
		candidate, externalID, strconv.FormatInt(now.UnixMilli(), 10), k.Tenant(), data,
	).Slice()
	if err != nil {
		return "", false, wrap(err)
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("%w: unexpected script reply %v", ErrUnavailable, res)
	}
	userID, _ = res[0].(string)
	n, _ := res[1].(int64)
	return userID, n == 1, nil
}
