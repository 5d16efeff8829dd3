package verify

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Issuance of the tenant's own tokens, and the claims they may carry.

// ClaimString renders a scalar claim for a header.
func ClaimString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return strconv.FormatInt(int64(x), 10), true
		}
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case json.Number:
		return x.String(), true
	}
	return "", false
}

// RegisteredClaims are set by idlink itself: extra identifiers never
// replace them.
var RegisteredClaims = map[string]bool{
	"iss": true, "aud": true, "sub": true, "sid": true, "iat": true, "exp": true,
	"nbf": true, "jti": true, "external_id": true,
}

// Issue signs a token with the current signing key that expires after
// the ttl, or at notAfter if that is sooner (zero: no bound). Claims: iss,
// aud, sub (the platform user id), sid (when sessionID is set), iat, exp,
// external_id (when externalID is set) and extra, which cannot override
// the registered claims. ErrNoSigningKey without a signing key.
func (c *Tokens) Issue(userID, sessionID, externalID string, extra map[string]string, notAfter time.Time) (string, time.Time, error) {
	if !c.Issues() {
		return "", time.Time{}, ErrNoSigningKey
	}
	now := c.now().Truncate(time.Second)
	exp := now.Add(c.ttl)
	if !notAfter.IsZero() && notAfter.Before(exp) {
		exp = notAfter.Truncate(time.Second)
	}
	claims := jwt.MapClaims{}
	for k, v := range extra {
		if !RegisteredClaims[k] {
			claims[k] = v
		}
	}
	claims["iss"] = c.ownIssuer
	if len(c.ownAud) == 1 {
		claims["aud"] = c.ownAud[0]
	} else {
		claims["aud"] = c.ownAud
	}
	claims["sub"] = userID
	claims["iat"] = now.Unix()
	claims["exp"] = exp.Unix()
	if sessionID != "" {
		claims["sid"] = sessionID
	}
	if externalID != "" {
		claims["external_id"] = externalID
	}
	k := c.signers[0]
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.Alg), claims)
	tok.Header["kid"] = k.KID
	s, err := tok.SignedString(k.Signer)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing a contact token: %w", err)
	}
	return s, exp, nil
}
