package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// User linking: the customer backend tells idlink which of its users (the
// external id) uses an install. The steps, their order and why a crash or
// timeout between any two is safe are explained in store/links.go.

// Error codes of linking.
const (
	codeUserNotFound       = "user_not_found"
	codeInstallNotFound    = "install_not_found"
	codeInstallWrongTenant = "install_wrong_tenant"
)

// linkResponse is the answer of POST /users/{install_id}/link.
type linkResponse struct {
	UserID     string `json:"user_id"`
	Created    bool   `json:"created"`
	MergedFrom string `json:"merged_from,omitempty"`
}

// link is POST /users/{install_id}/link with {"external_id": "..."}, for
// an API key with scope user.link. Answers, besides the API key errors:
// 200 linkResponse; 400 invalid_request (body, external id); 404
// install_not_found; 403 install_wrong_tenant; 409 link_in_progress
// (another link of the install holds it, with Retry-After); 503.
func (a *API) link(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if e := t.requireScope(r, ScopeUserLink); e != nil {
		writeError(w, e)
		return
	}
	installID := r.PathValue("install_id")
	if _, err := store.ParseID(store.KindInstall, installID); err != nil {
		writeError(w, errInstallNotFound())
		return
	}
	externalID, e := readLinkBody(w, r)
	if e != nil {
		writeError(w, e)
		return
	}

	res, err := t.id.Link(r.Context(), installID, externalID)
	switch {
	case errors.Is(err, store.ErrInstallNotFound):
		writeError(w, errInstallNotFound())
	case errors.Is(err, store.ErrInstallWrongTenant):
		writeError(w, newError(http.StatusForbidden, codeInstallWrongTenant, "the install belongs to another app"))
	case errors.Is(err, store.ErrLinkInProgress):
		writeError(w, apierr.LinkInProgress())
	case err != nil:
		a.fail(w, err)
	default:
		writeJSON(w, http.StatusOK, linkResponse{UserID: res.UserID, Created: res.Created, MergedFrom: res.MergedFrom})
	}
}

// readLinkBody reads {"external_id": "..."}: 1 to 256 bytes of UTF-8
// without control characters (it may reach an upstream header). The key
// must be spelled exactly and appear once, and the body must be valid
// UTF-8: encoding/json alone would accept "External_ID", take the last of
// duplicate keys and replace invalid bytes, so that idlink could link
// another id than a proxy or log in front of it saw. Other keys are
// ignored.
func readLinkBody(w http.ResponseWriter, r *http.Request) (string, *apiError) {
	var raw json.RawMessage
	if e := readJSON(w, r, &raw); e != nil {
		return "", e
	}
	if !utf8.Valid(raw) {
		return "", apierr.InvalidRequest("the body is not valid UTF-8")
	}
	bad := apierr.InvalidRequest(`the body must be a JSON object {"external_id": "<string>"}`)
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", bad
	}
	var ext *string
	seen := false
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return "", bad
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return "", bad
		}
		if key != "external_id" {
			continue
		}
		if seen {
			return "", apierr.InvalidRequest("external_id appears more than once")
		}
		seen = true
		if string(v) == "null" {
			continue
		}
		ext = new(string)
		if err := json.Unmarshal(v, ext); err != nil {
			return "", apierr.InvalidRequest("external_id must be a string")
		}
	}
	if ext == nil {
		return "", apierr.InvalidRequest("external_id is required")
	}
	if !verify.HeaderValue(*ext, verify.MaxExternalIDLen) {
		return "", apierr.InvalidRequest("external_id must be 1 to 256 bytes of UTF-8 without control characters")
	}
	return *ext, nil
}

func errInstallNotFound() *apiError {
	return newError(http.StatusNotFound, codeInstallNotFound, "no such install")
}

// userResponse is the answer of GET /users/{user_id}.
type userResponse struct {
	UserID           string   `json:"user_id"`
	ExternalID       *string  `json:"external_id"` // null: anonymous
	Installs         []string `json:"installs"`
	Created          string   `json:"created"` // RFC 3339, UTC
	userSessionsView          // live sessions and attributes (sessions.go)
	// Claims are those the customer backend wrote (PUT
	// /users/{user_id}/claims; {} if none).
	Claims json.RawMessage `json:"claims"`
}

// getUser is GET /users/{user_id}, for an API key with scope user.read:
// the user's external id (null while anonymous), the installs that point
// to it, when it was created, its live sessions, its external attributes
// and its claims. 404 user_not_found for a malformed or
// unknown id, which includes every other tenant's users.
func (a *API) getUser(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if e := t.requireScope(r, ScopeUserRead); e != nil {
		writeError(w, e)
		return
	}
	u, err := t.app.store.GetUser(r.Context(), t.id.Keys(), r.PathValue("user_id"))
	if errors.Is(err, store.ErrUserNotFound) {
		writeError(w, newError(http.StatusNotFound, codeUserNotFound, "no such user"))
		return
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	sessions, err := userSessions(r.Context(), t.id, u.ID)
	if err != nil {
		a.fail(w, err)
		return
	}
	claims, err := t.app.store.UserClaims(r.Context(), t.id.Keys(), u.ID)
	if err != nil {
		a.fail(w, err)
		return
	}
	resp := userResponse{UserID: u.ID, Installs: u.Installs, Created: u.Created.UTC().Format(time.RFC3339),
		userSessionsView: sessions, Claims: json.RawMessage(claims)}
	if u.ExternalID != "" {
		resp.ExternalID = &u.ExternalID
	}
	writeJSON(w, http.StatusOK, resp)
}

// createInstall is POST /installs: the SDK's first call on a device. It
// issues an install id with a new anonymous user, both expiring after the
// tenant's install_ttl unless used or linked, and answers 201
// {install_id, user_id}. The body, if any, is ignored. With cookies, the
// answer sets the install cookie, and a request from a foreign Origin is
// 403 csrf_refused (a page elsewhere must not swap a browser's install).
func (a *API) createInstall(w http.ResponseWriter, r *http.Request) {
	if a.tenant.Cookie != nil {
		if _, e := a.tenant.checkOriginOf(r); e != nil {
			writeError(w, e)
			return
		}
	}
	installID, userID, err := a.tenant.id.CreateInstall(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	a.tenant.Cookie.setInstall(w, installID)
	writeJSON(w, http.StatusCreated, struct {
		InstallID string `json:"install_id"`
		UserID    string `json:"user_id"`
	}{installID, userID})
}
