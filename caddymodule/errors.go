package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
)

// Error codes of the JSON error bodies, as SPEC.md names them.
// The codes the identity domain answers too are apierr's.
const (
	codeNotFound           = "not_found"
	codeMethodNotAllowed   = "method_not_allowed"
	codeInternal           = "internal_error"
	maxErrorMessageLength  = 200
	contentTypeJSON        = "application/json"
	headerRetryAfter       = "Retry-After"
	headerWWWAuthenticate  = "Www-Authenticate"
	headerContentType      = "Content-Type"
	headerCacheControl     = "Cache-Control"
	headerContentTypeOpts  = "X-Content-Type-Options"
	cacheControlNoStore    = "no-store"
	contentTypeOptsNoSniff = "nosniff"
)

// apiError is an error answered to the client as
// {"error": code, "message": message} with its status.
type apiError = apierr.Error

func newError(status int, code, message string) *apiError { return apierr.New(status, code, message) }

// writeError answers e as JSON.
func writeError(w http.ResponseWriter, e *apiError) {
	body, _ := marshalJSON(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
		Reason  string `json:"reason,omitempty"`
	}{e.Code, e.Message, e.Reason})
	h := w.Header()
	h.Set(headerContentType, contentTypeJSON)
	h.Set(headerCacheControl, cacheControlNoStore)
	h.Set(headerContentTypeOpts, contentTypeOptsNoSniff)
	if e.RetryAfter > 0 {
		h.Set(headerRetryAfter, strconv.Itoa(e.RetryAfter))
	}
	if e.Challenge != "" {
		h.Set(headerWWWAuthenticate, e.Challenge)
	}
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
}

// writeJSON answers v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := marshalJSON(v)
	if err != nil {
		writeError(w, newError(http.StatusInternalServerError, codeInternal, "could not encode the response"))
		return
	}
	h := w.Header()
	h.Set(headerContentType, contentTypeJSON)
	h.Set(headerCacheControl, cacheControlNoStore)
	h.Set(headerContentTypeOpts, contentTypeOptsNoSniff)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshalJSON encodes v followed by a newline, without HTML escaping (our
// answers are JSON for programs, and "<key>" reads better than
// "\u003ckey\u003e").
func marshalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return b.Bytes(), err
}
