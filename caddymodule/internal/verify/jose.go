package verify

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// How a token is read before and around golang-jwt: its shape, its
// header, and the words of a refusal.

// compactJWS reports whether s is three non-empty base64url parts joined by
// two dots (no padding, no spaces), without decoding anything.
func compactJWS(s string) bool {
	dots, partLen := 0, 0
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '.':
			if partLen == 0 {
				return false
			}
			dots++
			if dots > 2 {
				return false
			}
			partLen = 0
		case ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_':
			partLen++
		default:
			return false
		}
	}
	return dots == 2 && partLen > 0
}

// joseHeader is the part of a token's header read before choosing a key.
type joseHeader struct {
	Alg  string
	KID  *string
	Typ  json.RawMessage // read only for logout tokens
	Crit json.RawMessage
}

// peekHeader decodes a token's header (the token passed compactJWS).
func peekHeader(raw string) (joseHeader, error) {
	var h joseHeader
	seg := raw[:strings.IndexByte(raw, '.')]
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return h, refuse("the token header is not base64url")
	}
	// Read exactly as golang-jwt reads it: a map, whose keys match case
	// by case. (Decoding into the struct would match "ALG" or "Kid" too,
	// and a header with both "alg" and "ALG" would name one algorithm here
	// and another to the verifier.)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return h, refuse("the token header is not a JSON object")
	}
	if v, ok := m["alg"]; ok && json.Unmarshal(v, &h.Alg) != nil {
		return h, refuse("the token header is not a JSON object")
	}
	if v, ok := m["kid"]; ok && json.Unmarshal(v, &h.KID) != nil {
		return h, refuse("the token header is not a JSON object")
	}
	h.Typ, h.Crit = m["typ"], m["crit"]
	return h, nil
}

// jwtReason words a golang-jwt error for the client (never with the token).
func jwtReason(err error, claims jwt.MapClaims) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the token is malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "the token's signature does not verify"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		for _, name := range []string{"exp", "iss", "aud"} {
			if _, ok := claims[name]; !ok {
				return "the token has no " + name + " claim"
			}
		}
		return "the token lacks a required claim"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "the token is not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the token was issued in the future"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the token's issuer is not accepted"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the token's audience is not accepted"
	case errors.Is(err, jwt.ErrInvalidType):
		return "a claim of the token has the wrong type"
	}
	return "the token cannot be verified"
}
