package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
)

// Error codes of the JSON error bodies, as SPEC.md names them.
const (
	codeInvalidRequest     = "invalid_request"
	codeInvalidSignature   = "invalid_signature"
	codeAuthRequired       = "authentication_required"
	codeStoreUnavailable   = "store_unavailable"
	codeIdentityMismatch   = "identity_mismatch"
	codeNotFound           = "not_found"
	codeMethodNotAllowed   = "method_not_allowed"
	codeInternal           = "internal_error"
	retryAfterStoreOutage  = 1 // seconds
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
// {"error": code, "message": message} with its status. Its message is
// written by us, never copied from client input, a Redis error or a token.
type apiError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter int    // seconds; 0: no Retry-After header
	Challenge  string // WWW-Authenticate value, if any
	Reason     string // answered as "reason" when set (session_ended)
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func newError(status int, code, message string) *apiError {
	return &apiError{Status: status, Code: code, Message: message}
}

func errInvalidRequest(msg string) *apiError {
	return newError(http.StatusBadRequest, codeInvalidRequest, msg)
}

func errStoreUnavailable() *apiError {
	return &apiError{
		Status:     http.StatusServiceUnavailable,
		Code:       codeStoreUnavailable,
		Message:    "the identity store is unavailable; retry shortly",
		RetryAfter: retryAfterStoreOutage,
	}
}

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
