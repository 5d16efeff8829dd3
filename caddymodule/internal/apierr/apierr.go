// Package apierr is the refusal every part of idlink answers with: an
// HTTP status, an error code of SPEC.md's catalogue and a message of ours,
// answered as {"error": code, "message": message}. The identity domain
// returns these for the requests it refuses; the Caddy glue writes them.
package apierr

import (
	"net/http"
	"time"
)

// Error codes shared by the identity domain and the API.
const (
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidSignature     = "invalid_signature"
	CodeAuthRequired         = "authentication_required"
	CodeStoreUnavailable     = "store_unavailable"
	CodeIdentityMismatch     = "identity_mismatch"
	CodeInvalidToken         = "invalid_token"
	CodeKeySourceUnavailable = "key_source_unavailable"
	CodeSSOUnavailable       = "sso_unavailable"
	CodeSessionEnded         = "session_ended"
	CodeSessionUnverified    = "session_unverified"
	CodeUnknownSession       = "unknown_session"
	CodeUnknownInstall       = "unknown_install"
	CodeLinkInProgress       = "link_in_progress"
	CodeAttributesTooLarge   = "attributes_too_large"
	CodeTooManyFailures      = "too_many_failures"

	// BearerInvalidToken is the WWW-Authenticate challenge of a refused
	// token (RFC 6750 §3).
	BearerInvalidToken = `Bearer error="invalid_token"`

	retryAfterStore     = 1 // seconds
	retryAfterKeySource = 5
	retryAfterSSO       = 2
)

// Error is an error answered to the client with its status. Its message
// is written by us, never copied from client input, a Redis error or a
// token.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter int    // seconds; 0: no Retry-After header
	Challenge  string // WWW-Authenticate value, if any
	Reason     string // answered as "reason" when set (session_ended)
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// New is a refusal without Retry-After or challenge.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

// InvalidRequest is 400 invalid_request.
func InvalidRequest(msg string) *Error {
	return New(http.StatusBadRequest, CodeInvalidRequest, msg)
}

// StoreUnavailable is 503 store_unavailable, retry in a second.
func StoreUnavailable() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: CodeStoreUnavailable,
		Message: "the identity store is unavailable; retry shortly", RetryAfter: retryAfterStore}
}

// Token is a refused token: 401 invalid_token with the reason and the
// bearer challenge.
func Token(reason string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: CodeInvalidToken, Message: reason, Challenge: BearerInvalidToken}
}

// KeySourceUnavailable is 503 key_source_unavailable: the key a token
// names cannot be fetched.
func KeySourceUnavailable() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: CodeKeySourceUnavailable,
		Message:    "the key that signed this token cannot be fetched right now; retry shortly",
		RetryAfter: retryAfterKeySource}
}

// SSOUnavailable is 503 sso_unavailable: the token-info URL cannot answer.
func SSOUnavailable() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: CodeSSOUnavailable,
		Message: "the SSO token cannot be checked right now; retry shortly", RetryAfter: retryAfterSSO}
}

// UnknownInstall is 401 unknown_install.
func UnknownInstall() *Error {
	return New(http.StatusUnauthorized, CodeUnknownInstall, "the install id is not known")
}

// UnknownSession is 401 unknown_session.
func UnknownSession() *Error {
	return New(http.StatusUnauthorized, CodeUnknownSession, "the session id is not known; log in again")
}

// LinkInProgress is 409 link_in_progress, retry in a second.
func LinkInProgress() *Error {
	e := New(http.StatusConflict, CodeLinkInProgress, "another link of this install is in progress; retry shortly")
	e.RetryAfter = 1
	return e
}

// SessionUnverified refuses a contact token for a session an unverified
// (report or off mode) login started.
func SessionUnverified() *Error {
	return New(http.StatusForbidden, CodeSessionUnverified,
		"this session's login was not verified (report or off mode): it gets no contact token; log in with a signed credential")
}

// IdentityMismatch is 401 identity_mismatch with why.
func IdentityMismatch(why string) *Error {
	return New(http.StatusUnauthorized, CodeIdentityMismatch, why)
}

// AuthRequired is 401 authentication_required with why.
func AuthRequired(why string) *Error {
	return New(http.StatusUnauthorized, CodeAuthRequired, why)
}

// TooManyFailures is 429 too_many_failures: the client is banned for left
// (regulation of failed verifications), answered as Retry-After.
func TooManyFailures(left time.Duration) *Error {
	secs := int((left + time.Second - 1) / time.Second)
	return &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyFailures,
		Message: "too many failed verifications from this client; retry after the ban", RetryAfter: secs}
}
