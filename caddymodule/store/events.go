package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// EventsGroup is the consumer group through which every instance reads the
// outboxes: an entry read by one instance is not read by another.
const EventsGroup = "idlink"

// Fields of an outbox entry. The producers write the first four; a replayed
// dead letter also carries the id of the original event, and a dead letter
// the outcome of its delivery.
const (
	FieldType       = "type"
	FieldTenant     = "tenant"
	FieldOccurredAt = "occurred_at" // unix ms
	FieldData       = "data"        // a JSON object
	FieldEventID    = "event_id"
	FieldAttempts   = "attempts"
	FieldReason     = "reason"
	FieldLastError  = "last_error"
	FieldFailedAt   = "failed_at" // unix ms
)

// ErrBadEventID is returned by ParseEventID for a string that is not an
// event (or dead letter) id.
var ErrBadEventID = errors.New("malformed event id")

// EventID is the id consumers see for an outbox entry of a shard:
// "<SS>-<stream entry id>", e.g. "0a-1718000000000-0".
func EventID(shard int, entryID string) string {
	return string(hexDigits[shard>>4&0xf]) + string(hexDigits[shard&0xf]) + "-" + entryID
}

// ParseEventID splits an id made by EventID into its shard and stream entry
// id, accepting nothing else: two lower-case hex digits naming a shard, '-',
// and a stream id "<ms>-<seq>" of two decimal numbers that fit 64 bits,
// without sign or leading zeros.
func ParseEventID(s string) (shard int, entryID string, err error) {
	if len(s) < 6 || len(s) > 2+1+20+1+20 || s[2] != '-' {
		return 0, "", ErrBadEventID
	}
	hi, lo := strings.IndexByte(hexDigits, s[0]), strings.IndexByte(hexDigits, s[1])
	if hi < 0 || lo < 0 || hi<<4|lo >= Shards {
		return 0, "", ErrBadEventID
	}
	entryID = s[3:]
	if _, _, ok := parseEntryID(entryID); !ok {
		return 0, "", ErrBadEventID
	}
	return hi<<4 | lo, entryID, nil
}

// parseEntryID splits a stream entry id "<ms>-<seq>".
func parseEntryID(id string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, ok1 := parseUint(a)
	seq, ok2 := parseUint(b)
	return ms, seq, ok1 && ok2
}

func parseUint(s string) (uint64, bool) {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// EntryTime is the time a stream entry id was made (Redis's clock).
func EntryTime(entryID string) time.Time {
	ms, _, _ := parseEntryID(entryID)
	return time.UnixMilli(int64(ms))
}

// OutboxEntry is an outbox entry taken for delivery.
type OutboxEntry struct {
	Shard    int
	ID       string            // stream entry id
	Fields   map[string]string // type, tenant, occurred_at, data, [event_id]
	Attempts int               // the number of this attempt (the group's delivery count)
	Lease    int64             // the end of the lease taken on it (unix ms)
}

// EventID is the id consumers see: the original event's for a replayed
// dead letter, else the entry's own.
func (e *OutboxEntry) EventID() string {
	if v := e.Fields[FieldEventID]; v != "" {
		return v
	}
	return EventID(e.Shard, e.ID)
}

// EnsureEventsGroup creates the consumer group of a shard's outbox (and the
// stream if missing), reading it from the start. It is a no-op if the group
// exists.
func (s *Store) EnsureEventsGroup(ctx context.Context, k *Keys, shard int) error {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	err := s.rdb.XGroupCreateMkStream(ctx, k.Events(shard), EventsGroup, "0").Err()
	if err != nil && strings.HasPrefix(err.Error(), "BUSYGROUP") {
		err = nil
	}
	return wrap(err)
}

// FetchEvents takes up to max entries of a shard's outbox for delivery by
// consumer, each leased to it until leaseEnd: first those whose retry time
// (or whose previous holder's lease) has come by now, then, if readNew, new
// ones. No other consumer takes an entry before its lease ends.
func (s *Store) FetchEvents(ctx context.Context, k *Keys, shard int, consumer string, now, leaseEnd time.Time, max int, readNew bool) ([]OutboxEntry, error) {
	rn := "0"
	if readNew {
		rn = "1"
	}
	lease := leaseEnd.UnixMilli()
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := fetchEventsScript.Run(ctx, s.rdb, []string{k.Events(shard), k.EventsDue(shard)},
		EventsGroup, consumer, now.UnixMilli(), lease, max, rn).Slice()
	if err != nil {
		return nil, wrap(err)
	}
	out := make([]OutboxEntry, 0, len(res))
	for _, r := range res {
		row, ok := r.([]any)
		if !ok || len(row) != 3 {
			return out, fmt.Errorf("%w: unexpected fetch reply %v", ErrUnavailable, r)
		}
		id, _ := row[0].(string)
		n, _ := row[2].(int64)
		out = append(out, OutboxEntry{Shard: shard, ID: id, Fields: fieldMap(row[1]), Attempts: int(n), Lease: lease})
	}
	return out, nil
}

func fieldMap(v any) map[string]string {
	list, _ := v.([]any)
	m := make(map[string]string, len(list)/2)
	for i := 0; i+1 < len(list); i += 2 {
		k, _ := list[i].(string)
		val, _ := list[i+1].(string)
		m[k] = val
	}
	return m
}

// AckEvent acknowledges a delivered entry.
func (s *Store) AckEvent(ctx context.Context, k *Keys, shard int, entryID string) error {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	return wrap(ackEventScript.Run(ctx, s.rdb, []string{k.Events(shard), k.EventsDue(shard)}, EventsGroup, entryID).Err())
}

// RescheduleEvent sets when an entry taken with FetchEvents may be taken
// again (a retry time after a failure, or now to release it), if the lease
// e.Lease is still the one it holds. It reports whether it was.
func (s *Store) RescheduleEvent(ctx context.Context, k *Keys, e *OutboxEntry, at time.Time) (bool, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	n, err := rescheduleEventScript.Run(ctx, s.rdb, []string{k.EventsDue(e.Shard)}, e.ID, e.Lease, at.UnixMilli()).Int()
	return n == 1, wrap(err)
}

// DeadLetterEvent moves an entry taken with FetchEvents to the shard's
// dead-letter stream, with the attempts made, the reason and the last
// error, if the lease e.Lease is still the one it holds. It returns the
// dead letter's id, or "" when the lease was lost.
func (s *Store) DeadLetterEvent(ctx context.Context, k *Keys, e *OutboxEntry, reason, lastError string, now time.Time) (string, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	id, err := deadletterEventScript.Run(ctx, s.rdb,
		[]string{k.Events(e.Shard), k.EventsDue(e.Shard), k.Deadletter(e.Shard)},
		EventsGroup, e.ID, e.Lease, e.EventID(), e.Attempts, reason, lastError, now.UnixMilli(),
	).Text()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", wrap(err)
	}
	return EventID(e.Shard, id), nil
}

// MaintainOptions are the policy of MaintainOutbox.
type MaintainOptions struct {
	// TrimAcked trims the entries the group acknowledged.
	TrimAcked bool
	// Retention, when positive, trims entries older than that, delivered
	// or not.
	Retention time.Duration
	// Consumer is the caller's consumer name, never deleted.
	Consumer string
	// ConsumerIdle: consumers without pending entries idle longer than
	// that are deleted.
	ConsumerIdle time.Duration
	// OrphanIdle: pending entries idle longer than that and missing from
	// the due schedule are put back in it.
	OrphanIdle time.Duration
	// Now is the current time.
	Now time.Time
}

// OutboxStats describes one shard's outbox after MaintainOutbox.
type OutboxStats struct {
	Group            bool      // the consumer group exists
	Oldest           time.Time // the oldest entry not acknowledged by the group (any entry without a group); zero if none
	Length           int64     // entries in the outbox
	Pending          int64     // entries read and not acknowledged
	DeadLetters      int64     // entries in the dead-letter stream
	AckedTrimmed     int64     // acknowledged entries trimmed
	RetentionTrimmed int64     // entries trimmed because of the retention
	PendingTrimmed   int64     // of those, entries read and not acknowledged
	ConsumersDeleted int64
	Repaired         int64
}

// MaintainOutbox trims a shard's outbox by the policy, cleans up its
// consumer group and measures it (one atomic step).
func (s *Store) MaintainOutbox(ctx context.Context, k *Keys, shard int, o MaintainOptions) (OutboxStats, error) {
	retention, beforeRetention := "", ""
	if o.Retention > 0 {
		ms := max(o.Now.Add(-o.Retention).UnixMilli(), 1)
		retention = strconv.FormatInt(ms, 10) + "-0"
		beforeRetention = strconv.FormatInt(ms-1, 10) + "-18446744073709551615"
	}
	trim := "0"
	if o.TrimAcked {
		trim = "1"
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := maintainOutboxScript.Run(ctx, s.rdb,
		[]string{k.Events(shard), k.EventsDue(shard), k.Deadletter(shard)},
		EventsGroup, retention, trim, o.Consumer, o.ConsumerIdle.Milliseconds(),
		o.Now.UnixMilli(), o.OrphanIdle.Milliseconds(), beforeRetention,
	).Slice()
	if err != nil {
		return OutboxStats{}, wrap(err)
	}
	if len(res) != 10 {
		return OutboxStats{}, fmt.Errorf("%w: unexpected maintain reply %v", ErrUnavailable, res)
	}
	n := func(i int) int64 { v, _ := res[i].(int64); return v }
	st := OutboxStats{
		AckedTrimmed: n(1), RetentionTrimmed: n(2), PendingTrimmed: n(3), Length: n(4),
		Pending: n(5), DeadLetters: n(6), ConsumersDeleted: n(7), Repaired: n(8),
	}
	st.Group = res[9] == "1"
	if oldest, _ := res[0].(string); oldest != "" {
		st.Oldest = EntryTime(oldest)
	}
	return st, nil
}

// DeadLetter is an event that kept failing.
type DeadLetter struct {
	ID         string // the dead letter's id, "<SS>-<dead-letter entry id>"
	EventID    string
	Type       string
	Tenant     string
	OccurredAt int64  // unix ms
	Data       string // JSON
	Attempts   int
	Reason     string
	LastError  string
	FailedAt   int64 // unix ms
}

// DeadLetters lists up to count dead letters of a shard, oldest first,
// after the dead-letter entry id after ("" for the start).
func (s *Store) DeadLetters(ctx context.Context, k *Keys, shard int, after string, count int) ([]DeadLetter, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	msgs, err := s.rdb.XRangeN(ctx, k.Deadletter(shard), start, "+", int64(count)).Result()
	if err != nil {
		return nil, wrap(err)
	}
	out := make([]DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		str := func(f string) string { v, _ := m.Values[f].(string); return v }
		num := func(f string) int64 { v, _ := strconv.ParseInt(str(f), 10, 64); return v }
		out = append(out, DeadLetter{
			ID: EventID(shard, m.ID), EventID: str(FieldEventID), Type: str(FieldType), Tenant: str(FieldTenant),
			OccurredAt: num(FieldOccurredAt), Data: str(FieldData), Attempts: int(num(FieldAttempts)),
			Reason: str(FieldReason), LastError: str(FieldLastError), FailedAt: num(FieldFailedAt),
		})
	}
	return out, nil
}

// ReplayDeadLetters moves the named dead letters (entry ids) of a shard
// back to its outbox, each atomically. It returns how many it moved and the
// ids it did not find.
func (s *Store) ReplayDeadLetters(ctx context.Context, k *Keys, shard int, entryIDs []string) (int, []string, error) {
	args := make([]any, 0, 1+len(entryIDs))
	args = append(args, "=")
	for _, id := range entryIDs {
		args = append(args, id)
	}
	return s.replay(ctx, k, shard, args)
}

// ReplayOldestDeadLetters moves up to n of the oldest dead letters of a
// shard back to its outbox. It returns how many it moved.
func (s *Store) ReplayOldestDeadLetters(ctx context.Context, k *Keys, shard int, n int) (int, error) {
	moved, _, err := s.replay(ctx, k, shard, []any{"*", n})
	return moved, err
}

func (s *Store) replay(ctx context.Context, k *Keys, shard int, args []any) (int, []string, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := replayDeadlettersScript.Run(ctx, s.rdb, []string{k.Deadletter(shard), k.Events(shard)}, args...).Slice()
	if err != nil {
		return 0, nil, wrap(err)
	}
	if len(res) == 0 {
		return 0, nil, fmt.Errorf("%w: empty replay reply", ErrUnavailable)
	}
	moved, _ := res[0].(int64)
	var missing []string
	for _, v := range res[1:] {
		id, _ := v.(string)
		missing = append(missing, EventID(shard, id))
	}
	return int(moved), missing, nil
}

// DeadLetterCount is the number of dead letters of a shard.
func (s *Store) DeadLetterCount(ctx context.Context, k *Keys, shard int) (int64, error) {
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	n, err := s.rdb.XLen(ctx, k.Deadletter(shard)).Result()
	return n, wrap(err)
}
