package store

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Activity is the latest request an instance saw on a session.
type Activity struct {
	SessionID string
	At        time.Time
}

// RecordActivity writes the activity an instance saw since its last flush,
// in one pipelined round trip: one script per shard (all of a shard's
// sessions share its slot), so the cost is per shard, not per session.
// Activity only moves forward; it never revives nor ends a session (see
// session_activity.lua). It returns how many sessions moved.
func (s *Store) RecordActivity(ctx context.Context, k *Keys, p SessionPolicy, acts []Activity, now time.Time) (int, error) {
	byShard := map[int][]Activity{}
	for _, a := range acts {
		shard, err := ParseID(KindSession, a.SessionID)
		if err != nil {
			continue
		}
		byShard[shard] = append(byShard[shard], a)
	}
	if len(byShard) == 0 {
		return 0, nil
	}
	type call struct {
		keys []string
		args []any
		cmd  *redis.Cmd
	}
	calls := make([]*call, 0, len(byShard))
	for shard, as := range byShard {
		c := &call{keys: make([]string, 0, 1+len(as)), args: p.args(k, now)}
		c.keys = append(c.keys, k.Events(shard))
		for _, a := range as {
			c.keys = append(c.keys, k.Session(shard, a.SessionID))
			c.args = append(c.args, unixMS(a.At))
		}
		calls = append(calls, c)
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, c := range calls {
			c.cmd = sessionActivityScript.EvalSha(ctx, pipe, c.keys, c.args...)
		}
		return nil
	})
	moved := 0
	for _, c := range calls {
		err := c.cmd.Err()
		if err != nil && isNoScript(err) {
			// The script is not loaded on that node yet: Run loads it.
			c.cmd = sessionActivityScript.Run(ctx, s.rdb, c.keys, c.args...)
			err = c.cmd.Err()
		}
		if err != nil {
			return moved, wrap(err)
		}
		n, _ := c.cmd.Int()
		moved += n
	}
	return moved, nil
}

// isNoScript reports an EVALSHA of a script the node has not loaded (in a
// pipeline, where redis.Script.Run cannot fall back to EVAL by itself).
func isNoScript(err error) bool { return strings.HasPrefix(err.Error(), "NOSCRIPT") }
