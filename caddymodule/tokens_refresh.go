package caddymodule

import (
	"net/http"
	"time"

	"github.com/idlink/idlink/caddymodule/internal/identity"
)

// refreshContactToken is POST /contact-token: a fresh token for a live
// session, named by the current token (Authorization: Bearer or
// X-Contact-Token; it must still verify) or by X-Session-Id.
func (a *API) refreshContactToken(w http.ResponseWriter, r *http.Request) {
	if !a.tenant.id.Issues() {
		writeError(w, identity.ErrNoSigningKey)
		return
	}
	creds, bad := a.tenant.credentials(r)
	if bad != nil {
		writeError(w, bad)
		return
	}
	res, err := a.tenant.id.Refresh(r.Context(), creds)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		ContactToken string `json:"contact_token"`
		ExpiresAt    string `json:"expires_at"`
		UserID       string `json:"user_id"`
		SessionID    string `json:"session_id"`
	}{res.ContactToken, res.ExpiresAt.UTC().Format(time.RFC3339), res.UserID, res.SessionID})
}
