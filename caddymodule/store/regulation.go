package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReasonTooManyFailures ends a session whose requests kept failing
// verification (regulation).
const ReasonTooManyFailures = "too_many_failures"

// InvalidateBan is the invalidation kind announcing a banned client: the
// key is "<subject> <end of the ban, unix ms>".
const InvalidateBan = "ban"

// FailurePolicy is a tenant's regulation of failed verifications: more
// than Max failures within Window bans a client for Ban and ends a
// session.
type FailurePolicy struct {
	Max    int
	Window time.Duration
	Ban    time.Duration
}

// Failures is what counting one failure found.
type Failures struct {
	// BannedFor is how long the client is (now) banned; 0 if it is not.
	BannedFor time.Duration
	// SessionEnded: the session the request carried was ended by it.
	SessionEnded bool
}

// RecordFailure counts one failed verification against the client subject
// and, when sessionID names a live session, against that session, in one
// pipelined round trip: one single-key script for the client, one script
// in the session's slot for the session. Each is atomic on its own.
func (s *Store) RecordFailure(ctx context.Context, k *Keys, fp FailurePolicy, sp SessionPolicy, subject, sessionID string, now time.Time) (Failures, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	type call struct {
		sc   *redis.Script
		keys []string
		args []any
		cmd  *redis.Cmd
	}
	calls := []*call{{sc: failureCountScript, keys: []string{k.Failures(subject)},
		args: []any{unixMS(now), durMS(fp.Window), fp.Max, durMS(fp.Ban), sp.Channel,
			InvalidationMessage(k.Tenant(), InvalidateBan, subject)}}}
	if shard, err := ParseID(KindSession, sessionID); sessionID != "" && err == nil {
		calls = append(calls, &call{sc: failureSessionScript,
			keys: []string{k.Events(shard), k.Session(shard, sessionID), k.SessionFailures(shard, sessionID)},
			args: sp.args(k, now, sessionID, durMS(fp.Window), fp.Max)})
	}
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, c := range calls {
			c.cmd = c.sc.EvalSha(ctx, p, c.keys, c.args...)
		}
		return nil
	})
	var f Failures
	for i, c := range calls {
		if err := c.cmd.Err(); err != nil && isNoScript(err) {
			c.cmd = c.sc.Run(ctx, s.rdb, c.keys, c.args...)
		}
		res, err := c.cmd.Slice()
		if err != nil {
			return f, wrap(err)
		}
		if len(res) == 0 {
			return f, badReply(res)
		}
		switch status := replyString(res[0]); {
		case i == 0 && status == "banned" && len(res) == 2:
			ms, _ := res[1].(int64)
			f.BannedFor = time.Duration(ms) * time.Millisecond
		case i == 1 && status == "ended":
			f.SessionEnded = true
		}
	}
	return f, nil
}
