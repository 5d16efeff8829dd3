// Package webhook is what a receiver of idlink's webhooks needs: the shape
// of an event and the check of its signature, in either of the two formats
// idlink delivers in. idlink signs its deliveries with SignStandard or
// Sign, so a receiver that verifies with VerifyStandard or Verify runs the
// very same code.
//
// A delivery is an HTTP POST of one JSON Event. In the Standard Webhooks
// format (https://www.standardwebhooks.com, the default, with secrets
// "whsec_<base64>") its headers are
//
//	Content-Type: application/json
//	webhook-id: <the event's id>
//	webhook-timestamp: <unix seconds of this attempt>
//	webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// where key is the secret's base64-decoded bytes; check them with
// VerifyStandard, or any Standard Webhooks library. In the idlink format
// (format idlink, the default for secrets not in the whsec_ form) they are
//
//	Content-Type: application/json
//	Idlink-Event-Id: <the event's id>
//	Idlink-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>
//
// checked with Verify. Either way there is one signature per current
// secret of the tenant (several while a secret rotates). A receiver
// answers any 2xx once it has durably accepted the event; anything else
// (or no answer) is retried later, so the same event (same id) may arrive
// more than once: deduplicate on the id. It may answer 429 or 503 with
// Retry-After to be left alone that long, and 410 Gone to stop deliveries
// until idlink's config is reloaded.
//
// The package has no dependency beyond the standard library.
package webhook

import (
	"encoding/json"
	"time"
)

// Header names of a delivery in the idlink format.
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
