// Package webhook is what a receiver of idlink's webhooks needs: the shape
// of an event and the check of its Idlink-Signature header. idlink signs
// its deliveries with Sign, so a receiver that verifies with Verify runs
// the very same code.
//
// A delivery is an HTTP POST of one JSON Event with the headers
//
//	Content-Type: application/json
//	Idlink-Event-Id: <the event's id>
//	Idlink-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>
//
// with one v1= per current secret of the tenant (several while a secret
// rotates). A receiver answers any 2xx once it has durably accepted the
// event; anything else (or no answer) is retried later, so the same event
// (same id) may arrive more than once: deduplicate on the id.
//
// The package has no dependency beyond the standard library.
package webhook

import (
	"encoding/json"
	"time"
)

// Header names of a delivery.
const (
	SignatureHeader = "Idlink-Signature"
	EventIDHeader   = "Idlink-Event-Id"
)

// Event types idlink delivers.
const (
	UserCreated    = "user.created"
	UserLinked     = "user.linked"
	UserMerged     = "user.merged"
	SessionStarted = "session.started"
	SessionEnded   = "session.ended"
)

// Event is the JSON body of a delivery.
type Event struct {
	// ID is unique per event and the same on every delivery of it
	// (retries, replays of dead letters): "<shard>-<outbox entry id>",
	// e.g. "0a-1718000000000-0".
	ID string `json:"id"`

	// Type is one of the event types, e.g. "user.created".
	Type string `json:"type"`

	// Tenant is the idlink tenant the event belongs to.
	Tenant string `json:"tenant"`

	// OccurredAt is when the change happened (RFC 3339, UTC, milliseconds).
	OccurredAt time.Time `json:"occurred_at"`

	// Data is the event's own object (e.g. {"user_id": ..., "external_id":
	// ...} for user.created).
	Data json.RawMessage `json:"data"`
}
