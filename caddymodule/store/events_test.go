package store

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// tenantFor names a tenant after the running (sub)test, so that cases
// sharing a server do not meet.
func tenantFor(t *testing.T) string {
	n := strings.ToLower(t.Name())
	n = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, n)
	return "t-" + n[max(0, len(n)-50):]
}

// eventStores are the deployments the outbox operations are checked on:
// every selected deployment (testenv.DeploymentNames: a standalone Redis,
// the shared 3-master+replica Cluster, where every script must stay in one
// slot, and a Sentinel setup), and the embedded store.
func eventStores(t *testing.T) map[string]*Store {
	t.Helper()
	out := map[string]*Store{}
	open := func(name, url string) {
		s, err := Open(url, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out[name] = s
	}
	for _, d := range redisDeployments(t) {
		open(d.Name, d.URL)
	}
	e, err := OpenEmbedded(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	out["embedded"] = e
	return out
}

// appendEvent appends an event to a shard's outbox as the producers do.
func appendEvent(t *testing.T, s *Store, k *Keys, shard int, typ, data string) string {
	t.Helper()
	id, err := s.rdb.XAdd(t.Context(), &redis.XAddArgs{
		Stream: k.Events(shard),
		Values: []any{FieldType, typ, FieldTenant, k.Tenant(), FieldOccurredAt, "1718000000000", FieldData, data},
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestOutbox runs the outbox operations on every deployment. Each case
// uses its own tenant, so they share the servers.
func TestOutbox(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, s *Store)
	}{
		{"delivery", testOutboxDelivery},
		{"fetch limits and order", testOutboxFetchLimitsAndOrder},
		{"dead letter and replay", testDeadLetterAndReplay},
		{"maintain", testMaintainOutbox},
		{"maintain consumers and orphans", testMaintainOutboxConsumersAndOrphans},
	}
	for name, s := range eventStores(t) {
		t.Run(name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(t, s) })
			}
		})
	}
}

func TestParseEventID(t *testing.T) {
	good := []struct {
		in    string
		shard int
		entry string
	}{
		{"00-0-0", 0, "0-0"},
		{"0a-1718000000000-0", 10, "1718000000000-0"},
		{"0f-18446744073709551615-18446744073709551615", 15, "18446744073709551615-18446744073709551615"},
	}
	for _, g := range good {
		shard, entry, err := ParseEventID(g.in)
		if err != nil || shard != g.shard || entry != g.entry {
			t.Errorf("ParseEventID(%q) = %d, %q, %v", g.in, shard, entry, err)
		}
		if EventID(shard, entry) != g.in {
			t.Errorf("EventID round trip of %q = %q", g.in, EventID(shard, entry))
		}
	}
	for _, bad := range []string{
		"", "0a", "0a-", "0a-1", "0a-1-", "0a--1", "10-1-0", "ff-1-0", "0A-1-0", "a-1-0", "0a_1-0",
		"0a-01-0", "0a-1-00", "0a-+1-0", "0a-1-0-0", "0a-18446744073709551616-0", "0a-1-0 ", " 0a-1-0",
		"0a-1-0\n", "0a-*", "0a-$", "0a-(1-0", "0a--", "0a-1-99999999999999999999999",
	} {
		if _, _, err := ParseEventID(bad); !errors.Is(err, ErrBadEventID) {
			t.Errorf("ParseEventID(%q) accepted", bad)
		}
	}
}

func FuzzParseEventID(f *testing.F) {
	for _, s := range []string{"0a-1718000000000-0", "0f-1-1", "10-1-1", "0a-01-0", "", "0a-1-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		shard, entry, err := ParseEventID(s)
		if err != nil {
			return
		}
		if shard < 0 || shard >= Shards || EventID(shard, entry) != s {
			t.Fatalf("ParseEventID(%q) = %d, %q", s, shard, entry)
		}
	})
}

func testOutboxDelivery(t *testing.T, s *Store) {
	ctx := t.Context()
	k := NewKeys(tenantFor(t))
	const shard = 3
	now := time.UnixMilli(1_800_000_000_000)
	lease := now.Add(time.Minute)

	// The group is created on the first read if it is missing.
	id := appendEvent(t, s, k, shard, "user.created", `{"user_id":"u1"}`)
	got, err := s.FetchEvents(ctx, k, shard, "a", now, lease, 10, true)
	if err != nil || len(got) != 1 {
		t.Fatalf("fetch = %v, %v", got, err)
	}
	e := got[0]
	if e.ID != id || e.Attempts != 1 || e.Lease != lease.UnixMilli() || e.Fields[FieldType] != "user.created" ||
		e.Fields[FieldData] != `{"user_id":"u1"}` || e.EventID() != EventID(shard, id) {
		t.Fatalf("entry = %+v", e)
	}
	if err := s.EnsureEventsGroup(ctx, k, shard); err != nil {
		t.Fatalf("EnsureEventsGroup on an existing group: %v", err)
	}

	// Leased: nobody takes it before the lease ends, however often asked.
	for _, c := range []string{"a", "b"} {
		if got, err := s.FetchEvents(ctx, k, shard, c, now.Add(59*time.Second), lease, 10, true); err != nil || len(got) != 0 {
			t.Fatalf("fetch by %s during the lease = %v, %v", c, got, err)
		}
	}

	// A failure reschedules it; only the holder of the lease can.
	stale := e
	stale.Lease--
	if ok, err := s.RescheduleEvent(ctx, k, &stale, now.Add(10*time.Second)); ok || err != nil {
		t.Fatalf("reschedule with a foreign lease = %v, %v", ok, err)
	}
	if ok, err := s.RescheduleEvent(ctx, k, &e, now.Add(10*time.Second)); !ok || err != nil {
		t.Fatalf("reschedule = %v, %v", ok, err)
	}
	if got, _ := s.FetchEvents(ctx, k, shard, "b", now.Add(9*time.Second), lease, 10, true); len(got) != 0 {
		t.Fatalf("fetched before its retry time: %v", got)
	}
	// Its time came: another consumer takes it over, attempt 2.
	later := now.Add(10 * time.Second)
	got, err = s.FetchEvents(ctx, k, shard, "b", later, later.Add(time.Minute), 10, true)
	if err != nil || len(got) != 1 || got[0].ID != id || got[0].Attempts != 2 {
		t.Fatalf("retry fetch = %+v, %v", got, err)
	}
	// The first holder lost its lease: it can no longer move it.
	if ok, _ := s.RescheduleEvent(ctx, k, &e, now); ok {
		t.Fatal("the old holder rescheduled an entry it lost")
	}
	if dl, err := s.DeadLetterEvent(ctx, k, &e, "max_attempts", "x", now); dl != "" || err != nil {
		t.Fatalf("the old holder dead-lettered an entry it lost: %q, %v", dl, err)
	}

	// Acknowledged: gone for everyone, even once the lease ends.
	if err := s.AckEvent(ctx, k, shard, id); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.FetchEvents(ctx, k, shard, "c", later.Add(time.Hour), later.Add(2*time.Hour), 10, true); len(got) != 0 {
		t.Fatalf("fetched after ack: %v", got)
	}
	if n, _ := s.rdb.ZCard(ctx, k.EventsDue(shard)).Result(); n != 0 {
		t.Fatalf("due schedule keeps %d entries", n)
	}
}

func testOutboxFetchLimitsAndOrder(t *testing.T, s *Store) {
	ctx := t.Context()
	k := NewKeys(tenantFor(t))
	now := time.UnixMilli(1_800_000_000_000)
	var ids []string
	for i := range 5 {
		ids = append(ids, appendEvent(t, s, k, 0, "user.created", `{"n":`+strconv.Itoa(i)+`}`))
	}
	got, _ := s.FetchEvents(ctx, k, 0, "a", now, now.Add(time.Second), 2, true)
	if len(got) != 2 || got[0].ID != ids[0] || got[1].ID != ids[1] {
		t.Fatalf("first fetch = %+v", got)
	}
	// readNew false: only due entries.
	if got, _ := s.FetchEvents(ctx, k, 0, "a", now, now.Add(time.Second), 10, false); len(got) != 0 {
		t.Fatalf("fetch without new = %+v", got)
	}
	// Due entries come first, then new ones fill the room.
	got, _ = s.FetchEvents(ctx, k, 0, "b", now.Add(time.Second), now.Add(time.Minute), 3, true)
	if len(got) != 3 || got[0].ID != ids[0] || got[1].ID != ids[1] || got[2].ID != ids[2] ||
		got[0].Attempts != 2 || got[2].Attempts != 1 {
		t.Fatalf("mixed fetch = %+v", got)
	}
}

func testDeadLetterAndReplay(t *testing.T, s *Store) {
	ctx := t.Context()
	k := NewKeys(tenantFor(t))
	const shard = 7
	now := time.UnixMilli(1_800_000_000_000)
	id := appendEvent(t, s, k, shard, "user.created", `{"user_id":"u1"}`)
	got, _ := s.FetchEvents(ctx, k, shard, "a", now, now.Add(time.Minute), 10, true)
	e := got[0]
	dl, err := s.DeadLetterEvent(ctx, k, &e, "max_attempts", "HTTP 500", now)
	if err != nil || dl == "" {
		t.Fatalf("dead letter = %q, %v", dl, err)
	}
	// Off the outbox's pending list and schedule.
	if p, _ := s.rdb.XPending(ctx, k.Events(shard), EventsGroup).Result(); p.Count != 0 {
		t.Fatalf("still pending: %+v", p)
	}
	if got, _ := s.FetchEvents(ctx, k, shard, "a", now.Add(time.Hour), now.Add(2*time.Hour), 10, true); len(got) != 0 {
		t.Fatalf("fetched a dead letter: %v", got)
	}
	list, err := s.DeadLetters(ctx, k, shard, "", 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("list = %v, %v", list, err)
	}
	d := list[0]
	if d.ID != dl || d.EventID != EventID(shard, id) || d.Type != "user.created" || d.Tenant != k.Tenant() ||
		d.OccurredAt != 1718000000000 || d.Data != `{"user_id":"u1"}` || d.Attempts != 1 ||
		d.Reason != "max_attempts" || d.LastError != "HTTP 500" || d.FailedAt != now.UnixMilli() {
		t.Fatalf("dead letter = %+v", d)
	}
	_, dlEntry, _ := ParseEventID(dl)
	if list, _ := s.DeadLetters(ctx, k, shard, dlEntry, 10); len(list) != 0 {
		t.Fatalf("list after the last = %v", list)
	}

	// Replay by id: back in the outbox with the same event id, attempts anew.
	moved, missing, err := s.ReplayDeadLetters(ctx, k, shard, []string{dlEntry, "1-1"})
	if err != nil || moved != 1 || !slices.Equal(missing, []string{EventID(shard, "1-1")}) {
		t.Fatalf("replay = %d, %v, %v", moved, missing, err)
	}
	if n, _ := s.DeadLetterCount(ctx, k, shard); n != 0 {
		t.Fatalf("%d dead letters left", n)
	}
	got, _ = s.FetchEvents(ctx, k, shard, "b", now, now.Add(time.Minute), 10, true)
	if len(got) != 1 || got[0].ID == id || got[0].EventID() != EventID(shard, id) || got[0].Attempts != 1 ||
		got[0].Fields[FieldData] != `{"user_id":"u1"}` || got[0].Fields[FieldAttempts] != "" {
		t.Fatalf("replayed entry = %+v", got)
	}
	// Dead again, and again: the event id stays the original one.
	e = got[0]
	if dl, _ := s.DeadLetterEvent(ctx, k, &e, "max_age", "timeout", now); dl == "" {
		t.Fatal("second dead letter failed")
	}
	list, _ = s.DeadLetters(ctx, k, shard, "", 10)
	if len(list) != 1 || list[0].EventID != EventID(shard, id) || list[0].Reason != "max_age" {
		t.Fatalf("second dead letter = %+v", list)
	}
	// Replay the oldest n.
	for range 3 {
		e2 := appendEvent(t, s, k, shard, "user.created", `{}`)
		_ = e2
	}
	got, _ = s.FetchEvents(ctx, k, shard, "b", now, now.Add(time.Minute), 10, true)
	for i := range got {
		s.DeadLetterEvent(ctx, k, &got[i], "max_attempts", "x", now)
	}
	if n, _ := s.DeadLetterCount(ctx, k, shard); n != 4 {
		t.Fatalf("%d dead letters, want 4", n)
	}
	if moved, err := s.ReplayOldestDeadLetters(ctx, k, shard, 3); moved != 3 || err != nil {
		t.Fatalf("replay oldest = %d, %v", moved, err)
	}
	if n, _ := s.DeadLetterCount(ctx, k, shard); n != 1 {
		t.Fatalf("%d dead letters, want 1", n)
	}
}

func testMaintainOutbox(t *testing.T, s *Store) {
	ctx := t.Context()
	k := NewKeys(tenantFor(t))
	const shard = 1
	now := time.Now()
	opts := MaintainOptions{TrimAcked: true, Consumer: "a", ConsumerIdle: time.Hour, OrphanIdle: time.Hour, Now: now}

	// Nothing there.
	st, err := s.MaintainOutbox(ctx, k, shard, opts)
	if err != nil || st.Group || st.Length != 0 || !st.Oldest.IsZero() {
		t.Fatalf("empty = %+v, %v", st, err)
	}

	var ids []string
	for range 6 {
		ids = append(ids, appendEvent(t, s, k, shard, "user.created", `{}`))
	}
	// No group (no webhook): nothing is trimmed but by retention.
	st, _ = s.MaintainOutbox(ctx, k, shard, opts)
	if st.Group || st.Length != 6 || st.AckedTrimmed != 0 || !st.Oldest.Equal(EntryTime(ids[0])) {
		t.Fatalf("without group = %+v", st)
	}

	// Read 4, ack #0, #1 and #3: #2 is pending, #4 and #5 unread.
	got, _ := s.FetchEvents(ctx, k, shard, "a", now, now.Add(time.Minute), 4, true)
	if len(got) != 4 {
		t.Fatalf("fetched %d", len(got))
	}
	for _, i := range []int{0, 1, 3} {
		s.AckEvent(ctx, k, shard, ids[i])
	}
	st, err = s.MaintainOutbox(ctx, k, shard, opts)
	if err != nil || !st.Group || st.AckedTrimmed != 2 || st.Length != 4 || st.Pending != 1 ||
		!st.Oldest.Equal(EntryTime(ids[2])) {
		t.Fatalf("trim acked = %+v, %v", st, err)
	}
	// Without TrimAcked nothing goes.
	opts2 := opts
	opts2.TrimAcked = false
	s.AckEvent(ctx, k, shard, ids[2])
	if st, _ = s.MaintainOutbox(ctx, k, shard, opts2); st.AckedTrimmed != 0 || st.Length != 4 {
		t.Fatalf("no trim = %+v", st)
	}
	// #2 and #3 acknowledged, #4 and #5 never read: the oldest
	// unacknowledged is #4, and only #2, #3 go.
	st, _ = s.MaintainOutbox(ctx, k, shard, opts)
	if st.AckedTrimmed != 2 || st.Length != 2 || st.Pending != 0 || !st.Oldest.Equal(EntryTime(ids[4])) {
		t.Fatalf("trim up to unread = %+v", st)
	}
	// Everything delivered: everything goes.
	got, _ = s.FetchEvents(ctx, k, shard, "a", now, now.Add(time.Minute), 10, true)
	for _, e := range got {
		s.AckEvent(ctx, k, shard, e.ID)
	}
	st, _ = s.MaintainOutbox(ctx, k, shard, opts)
	if st.AckedTrimmed != 2 || st.Length != 0 || !st.Oldest.IsZero() || !st.Group {
		t.Fatalf("trim all = %+v", st)
	}

	// Retention drops old entries, read or not, and acknowledges
	// the pending ones among them.
	old := []string{appendEvent(t, s, k, shard, "user.created", `{}`), appendEvent(t, s, k, shard, "user.created", `{}`)}
	got, _ = s.FetchEvents(ctx, k, shard, "a", now, now.Add(time.Minute), 1, true)
	if len(got) != 1 || got[0].ID != old[0] {
		t.Fatalf("fetch = %+v", got)
	}
	time.Sleep(5 * time.Millisecond)
	keep := appendEvent(t, s, k, shard, "user.created", `{}`)
	opts3 := opts
	opts3.Now = EntryTime(keep).Add(time.Hour)
	opts3.Retention = opts3.Now.Sub(EntryTime(keep)) // keep is exactly at the retention point
	st, err = s.MaintainOutbox(ctx, k, shard, opts3)
	if err != nil || st.RetentionTrimmed != 2 || st.PendingTrimmed != 1 || st.Length != 1 || st.Pending != 0 ||
		!st.Oldest.Equal(EntryTime(keep)) {
		t.Fatalf("retention = %+v, %v", st, err)
	}
	if n, _ := s.rdb.ZCard(ctx, k.EventsDue(shard)).Result(); n != 0 {
		t.Fatalf("due schedule keeps %d entries", n)
	}
}

func testMaintainOutboxConsumersAndOrphans(t *testing.T, s *Store) {
	if s.Kind() == "embedded" {
		t.Skip("the embedded store does not track consumers' idle time")
	}
	ctx := t.Context()
	k := NewKeys(tenantFor(t))
	now := time.Now()
	appendEvent(t, s, k, 0, "user.created", `{}`)
	id2 := appendEvent(t, s, k, 0, "user.created", `{}`)
	// "old" read one and acknowledged it; "busy" holds one; a hand-made
	// reader took one outside the schedule (an orphan).
	got, _ := s.FetchEvents(ctx, k, 0, "old", now, now.Add(time.Minute), 1, true)
	s.AckEvent(ctx, k, 0, got[0].ID)
	if err := s.rdb.XGroupCreateConsumer(ctx, k.Events(0), EventsGroup, "busy").Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: EventsGroup, Consumer: "hand", Streams: []string{k.Events(0), ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	st, err := s.MaintainOutbox(ctx, k, 0, MaintainOptions{Consumer: "busy", ConsumerIdle: 10 * time.Millisecond, OrphanIdle: 10 * time.Millisecond, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// "old" goes; "busy" is the caller; "hand" has a pending entry.
	if st.ConsumersDeleted != 1 || st.Repaired != 1 {
		t.Fatalf("stats = %+v", st)
	}
	cs, _ := s.rdb.XInfoConsumers(ctx, k.Events(0), EventsGroup).Result()
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"busy", "hand"}) {
		t.Fatalf("consumers = %v", names)
	}
	// The orphan is due now: a fetch takes it over.
	got, err = s.FetchEvents(ctx, k, 0, "busy", now, now.Add(time.Minute), 10, false)
	if err != nil || len(got) != 1 || got[0].ID != id2 || got[0].Attempts != 2 {
		t.Fatalf("orphan fetch = %+v, %v", got, err)
	}
}
