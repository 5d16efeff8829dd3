package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/verify"
	"github.com/idlink/idlink/caddymodule/store"
)

// Claims are what the customer backend vouches for about a user (e.g. a
// contact id, a predict id): the only source of the extra claims of the
// tokens idlink issues, and so of their claim headers. Two ways in, both
// server to server: the backend writes them (PUT /users/{user_id}/claims,
// API key scope user.write), and the tenant's optional resolver
// (claims_url) answers them synchronously when a token is issued or
// refreshed. External attributes, which the client writes, never become
// claims.

// Claims limits, defaults and error codes.
const (
	maxClaimsBytes        = 8 << 10 // a user's claims as compact JSON
	maxClaimsAnswerBytes  = 64 << 10
	defaultClaimsTimeout  = 2 * time.Second
	defaultClaimsCacheTTL = time.Minute
	retryAfterClaims      = 5 // seconds
	codeClaimsTooLarge    = "claims_too_large"
	codeClaimsUnavailable = "claims_unavailable"
	codeUserExpires       = "user_expires"
)

// Claims resolver calls by tenant and outcome, exported as
// idlink_claims_lookups_total.
var claimsLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "idlink",
	Name:      "claims_lookups_total",
	Help:      "Calls to claims_url resolvers by tenant and result (found, none, unavailable).",
}, []string{"tenant", "result"})

func errClaimsUnavailable() *apiError {
	return &apiError{
		Status:     http.StatusServiceUnavailable,
		Code:       codeClaimsUnavailable,
		Message:    "the user's claims cannot be had right now, so no token is issued; retry shortly",
		RetryAfter: retryAfterClaims,
	}
}

// --- PUT /users/{user_id}/claims ---------------------------------------------

// putClaimsRequest is the body of PUT /users/{user_id}/claims.
type putClaimsRequest struct {
	// Claims is a JSON object of scalar values (string, number, boolean;
	// null removes the claim).
	Claims json.RawMessage `json:"claims"`
	// Merge false replaces the stored claims instead of merging into
	// them. Default: true.
	Merge *bool `json:"merge"`
}

// putClaims is PUT /users/{user_id}/claims, for an API key with scope
// user.write: it merges (or, with "merge": false, replaces) the user's
// claims and answers 200 {"user_id", "claims"} with the claims as they
// now are. A change appends user.claims_updated. Tokens issued from then
// on carry the claims their tenant maps (claim_header); tokens already
// issued keep theirs until they expire.
//
// Errors, besides those of the API key: 400 invalid_request (body, a
// non-scalar value, a claim idlink sets itself), 404 user_not_found, 409
// user_expires (an install's anonymous user, or one made for an
// unverified id, that no link or verified credential has named yet), 413
// claims_too_large (nothing stored), 503 store_unavailable.
func (a *API) putClaims(w http.ResponseWriter, r *http.Request) {
	t := a.tenant
	if e := t.requireScope(r, ScopeUserWrite); e != nil {
		writeError(w, e)
		return
	}
	var req putClaimsRequest
	if e := readJSON(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	if len(bytes.TrimSpace(req.Claims)) == 0 || string(bytes.TrimSpace(req.Claims)) == "null" {
		writeError(w, apierr.InvalidRequest(`the body must be {"claims": {...}, "merge": true|false}`))
		return
	}
	update, e := parseObjectUpdate("claims", req.Claims, req.Merge, maxClaimsBytes)
	if e != nil {
		writeError(w, e)
		return
	}
	for _, f := range update.Fields {
		var name string
		_ = json.Unmarshal([]byte(f[0]), &name)
		if verify.RegisteredClaims[name] {
			writeError(w, apierr.InvalidRequest(fmt.Sprintf("claim %q is set by idlink itself", name)))
			return
		}
		if f[1] == "null" {
			continue
		}
		var v any
		_ = json.Unmarshal([]byte(f[1]), &v)
		if s, ok := verify.ClaimString(v); !ok || !verify.HeaderValue(s, verify.MaxClaimHeaderValue) {
			writeError(w, apierr.InvalidRequest(fmt.Sprintf(
				"claim %q must be a string, number or boolean of at most %d bytes without control characters", name, verify.MaxClaimHeaderValue)))
			return
		}
	}
	userID := r.PathValue("user_id")
	claims, changed, err := t.app.store.SetUserClaims(r.Context(), t.id.Keys(), userID, *update, t.now())
	var tooLarge *store.ClaimsTooLargeError
	switch {
	case errors.Is(err, store.ErrUserNotFound):
		writeError(w, newError(http.StatusNotFound, codeUserNotFound, "no such user"))
	case errors.Is(err, store.ErrUserExpires):
		writeError(w, newError(http.StatusConflict, codeUserExpires,
			"this user expires (no link or verified login has named it yet): claims are kept for permanent users only"))
	case errors.As(err, &tooLarge):
		writeError(w, newError(http.StatusRequestEntityTooLarge, codeClaimsTooLarge,
			fmt.Sprintf("the claims would be %d bytes of JSON after merging; the limit is %d", tooLarge.Size, tooLarge.Limit)))
	case err != nil:
		a.fail(w, err)
	default:
		t.logger.Debug("claims set", zap.String("user_id", userID), zap.Bool("changed", changed))
		writeJSON(w, http.StatusOK, struct {
			UserID string          `json:"user_id"`
			Claims json.RawMessage `json:"claims"`
		}{userID, json.RawMessage(claims)})
	}
}

// parseObjectUpdate checks a JSON object sent to be merged into (or, with
// merge false, to replace) a stored object, and turns it into the store's
// form: absent or null changes nothing; anything else must be a JSON
// object in valid UTF-8 with each key once. Either way a key set to null
// is removed. The limit applies to the result as compact JSON, keys and
// values as sent (no HTML escaping: the size is what JSON.stringify
// counts), and is checked in the store's script, atomically with the
// merge. field names the object in errors.
func parseObjectUpdate(field string, raw json.RawMessage, merge *bool, limit int) (*store.AttributeUpdate, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	bad := apierr.InvalidRequest(field + " must be a JSON object")
	if raw[0] != '{' || !utf8.Valid(raw) {
		return nil, bad
	}
	m := map[string]json.RawMessage{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad
	}
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return nil, bad
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, bad
		}
		if _, dup := m[key]; dup {
			return nil, apierr.InvalidRequest(fmt.Sprintf("%s: key %q appears more than once", field, key))
		}
		m[key] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, bad
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad // something after the object
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	u := &store.AttributeUpdate{Replace: merge != nil && !*merge, Limit: limit, Fields: make([][2]string, 0, len(m))}
	var enc bytes.Buffer
	e := json.NewEncoder(&enc)
	e.SetEscapeHTML(false)
	for _, k := range keys {
		enc.Reset()
		_ = e.Encode(k)
		key := string(bytes.TrimSuffix(enc.Bytes(), []byte("\n")))
		var v bytes.Buffer
		if err := json.Compact(&v, m[k]); err != nil {
			return nil, bad
		}
		u.Fields = append(u.Fields, [2]string{key, v.String()})
	}
	return u, nil
}
