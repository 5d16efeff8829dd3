package caddymodule

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/store"
)

// Limits of the dead-letter endpoints.
const (
	defaultDeadLetterPage = 100
	maxDeadLetterPage     = 1000
	maxReplayIDs          = 1000
	maxReplayAll          = 10000 // per request; the answer says how many remain
	replayBatch           = 500
)

// deadLetterJSON is one dead letter as the API shows it.
type deadLetterJSON struct {
	ID         string          `json:"id"`
	EventID    string          `json:"event_id"`
	Type       string          `json:"type"`
	OccurredAt time.Time       `json:"occurred_at"`
	FailedAt   time.Time       `json:"failed_at"`
	Attempts   int             `json:"attempts"`
	Reason     string          `json:"reason"`
	LastError  string          `json:"last_error"`
	Data       json.RawMessage `json:"data,omitempty"`
}

// listDeadLetters answers GET /deadletters?limit=N&after=ID (scope
// events.admin): {"deadletters": [...], "total": N, "next": ID}, oldest
// first per shard; "next" (absent on the last page) is the "after" of the
// next page.
func (a *API) listDeadLetters(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if e := t.requireScope(r, ScopeEventsAdmin); e != nil {
		writeError(w, e)
		return
	}
	q := r.URL.Query()
	limit := defaultDeadLetterPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDeadLetterPage {
			writeError(w, apierr.InvalidRequest("limit must be a number from 1 to "+strconv.Itoa(maxDeadLetterPage)))
			return
		}
		limit = n
	}
	startShard, after := 0, ""
	if v := q.Get("after"); v != "" {
		shard, entry, err := store.ParseEventID(v)
		if err != nil {
			writeError(w, apierr.InvalidRequest("after must be a dead letter id"))
			return
		}
		startShard, after = shard, entry
	}

	ctx := r.Context()
	out := make([]deadLetterJSON, 0, min(limit, 64))
	for shard := startShard; shard < store.Shards && len(out) < limit; shard++ {
		from := ""
		if shard == startShard {
			from = after
		}
		list, err := t.app.store.DeadLetters(ctx, t.id.Keys(), shard, from, limit-len(out))
		if err != nil {
			a.fail(w, err)
			return
		}
		for _, d := range list {
			j := deadLetterJSON{
				ID: d.ID, EventID: d.EventID, Type: d.Type, Attempts: d.Attempts, Reason: d.Reason, LastError: d.LastError,
				OccurredAt: time.UnixMilli(d.OccurredAt).UTC(), FailedAt: time.UnixMilli(d.FailedAt).UTC(),
			}
			if json.Valid([]byte(d.Data)) {
				j.Data = json.RawMessage(d.Data)
			}
			out = append(out, j)
		}
	}
	total, err := a.deadLetterTotal(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	resp := struct {
		DeadLetters []deadLetterJSON `json:"deadletters"`
		Total       int64            `json:"total"`
		Next        string           `json:"next,omitempty"`
	}{DeadLetters: out, Total: total}
	if len(out) == limit {
		resp.Next = out[len(out)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *API) deadLetterTotal(r *http.Request) (int64, error) {
	t := a.tenant
	var total int64
	for shard := range store.Shards {
		n, err := t.app.store.DeadLetterCount(r.Context(), t.id.Keys(), shard)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// replayDeadLetters answers POST /deadletters/replay (scope events.admin)
// with body {"ids": [...]} (at most 1000 dead letter ids) or {"all": true}:
// each dead letter moves back to the outbox atomically, keeping its event
// id, with its attempts starting over. The answer is {"replayed": N,
// "not_found": [...]} for ids, {"replayed": N, "remaining": M} for all
// (which moves at most 10000 per request; call again while remaining > 0).
func (a *API) replayDeadLetters(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if e := t.requireScope(r, ScopeEventsAdmin); e != nil {
		writeError(w, e)
		return
	}
	var body struct {
		IDs []string `json:"ids"`
		All bool     `json:"all"`
	}
	if e := readJSON(w, r, &body); e != nil {
		writeError(w, e)
		return
	}
	if body.All == (len(body.IDs) > 0) {
		writeError(w, apierr.InvalidRequest(`send either {"ids": [...]} or {"all": true}`))
		return
	}
	ctx := r.Context()
	if body.All {
		replayed := 0
		for shard := 0; shard < store.Shards && replayed < maxReplayAll; {
			n, err := t.app.store.ReplayOldestDeadLetters(ctx, t.id.Keys(), shard, min(replayBatch, maxReplayAll-replayed))
			if err != nil {
				a.fail(w, err)
				return
			}
			replayed += n
			if n < replayBatch {
				shard++
			}
		}
		remaining, err := a.deadLetterTotal(r)
		if err != nil {
			a.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"replayed": replayed, "remaining": remaining})
		return
	}

	if len(body.IDs) > maxReplayIDs {
		writeError(w, apierr.InvalidRequest("at most "+strconv.Itoa(maxReplayIDs)+" ids per request"))
		return
	}
	var byShard [store.Shards][]string
	for _, id := range body.IDs {
		shard, entry, err := store.ParseEventID(id)
		if err != nil {
			writeError(w, apierr.InvalidRequest("ids must be dead letter ids as GET /deadletters lists them"))
			return
		}
		byShard[shard] = append(byShard[shard], entry)
	}
	replayed, notFound := 0, []string{}
	for shard, ids := range byShard {
		if len(ids) == 0 {
			continue
		}
		n, missing, err := t.app.store.ReplayDeadLetters(ctx, t.id.Keys(), shard, ids)
		if err != nil {
			a.fail(w, err)
			return
		}
		replayed += n
		notFound = append(notFound, missing...)
	}
	writeJSON(w, http.StatusOK, map[string]any{"replayed": replayed, "not_found": notFound})
}
