package verify

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Client authentication of the token-info call: how idlink proves to the
// customer's provider that it may ask (RFC 7662 §2.1, RFC 6749 §2.3.1).

// Client authentication methods (the names of RFC 7591's
// token_endpoint_auth_method where one exists).
const (
	AuthNone   = "none"                // no credential: a token-info URL that asks for none
	AuthBasic  = "client_secret_basic" // Authorization: Basic, id and secret form-urlencoded first
	AuthPost   = "client_secret_post"  // client_id and client_secret in the form body
	AuthBearer = "bearer"              // Authorization: Bearer <bearer_token>
)

// ErrClientRefused wraps the errors of a token-info call the provider
// refused for idlink's own request (its client credentials, or their
// absence), not for the user's token. It also wraps ErrUnavailable.
var ErrClientRefused = errors.New("the token-info endpoint refused idlink's client credentials")

// ErrBusy wraps the errors of a check not made because max_concurrent
// token-info calls are already in flight. It also wraps ErrUnavailable.
var ErrBusy = errors.New("too many token-info calls in flight")

// ClientAuth is how the token-info call authenticates idlink.
type ClientAuth struct {
	Method       string // AuthNone, AuthBasic, AuthPost or AuthBearer
	ClientID     string // AuthBasic, AuthPost
	ClientSecret string // AuthBasic, AuthPost
	BearerToken  string // AuthBearer
}

// Check reports a method that is unknown or a credential missing from, or
// meaningless with, its method. Its sentences name the options, never a
// value.
func (a ClientAuth) Check() error {
	switch a.Method {
	case AuthBasic, AuthPost:
		switch {
		case a.ClientID == "":
			return fmt.Errorf("auth_method %s needs client_id", a.Method)
		case a.ClientSecret == "":
			return fmt.Errorf("auth_method %s needs client_secret", a.Method)
		case a.BearerToken != "":
			return fmt.Errorf("bearer_token is sent only with auth_method bearer, not %s", a.Method)
		}
	case AuthBearer:
		switch {
		case a.BearerToken == "":
			return errors.New("auth_method bearer needs bearer_token")
		case a.ClientID != "" || a.ClientSecret != "":
			return errors.New("auth_method bearer sends bearer_token only: remove client_id and client_secret")
		case !visibleASCII(a.BearerToken):
			return errors.New("bearer_token must be printable ASCII without spaces")
		}
	case AuthNone:
		if a.ClientID != "" || a.ClientSecret != "" || a.BearerToken != "" {
			return errors.New("auth_method none sends no credential: remove client_id, client_secret and bearer_token")
		}
	default:
		return fmt.Errorf("auth_method %q: want client_secret_basic, client_secret_post, bearer or none", a.Method)
	}
	return nil
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return s != ""
}

// authorization is the Authorization header value of a, "" for none.
// With client_secret_basic the id and the secret are form-urlencoded
// before they are joined and base64-encoded (RFC 6749 §2.3.1), so a
// colon in either survives.
func (a ClientAuth) authorization() string {
	switch a.Method {
	case AuthBasic:
		pair := url.QueryEscape(a.ClientID) + ":" + url.QueryEscape(a.ClientSecret)
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(pair))
	case AuthBearer:
		return "Bearer " + a.BearerToken
	}
	return ""
}

// form is the body of the call for token: `<param>=<token>`, the
// token_type_hint when set, and the client's id and secret with
// client_secret_post.
func (v *TokenInfo) form(token string) string {
	f := url.Values{v.param: {token}}
	if v.hint != "" {
		f.Set("token_type_hint", v.hint)
	}
	if v.auth.Method == AuthPost {
		f.Set("client_id", v.auth.ClientID)
		f.Set("client_secret", v.auth.ClientSecret)
	}
	return f.Encode()
}

// introspection reports whether the call authenticates idlink: the
// endpoint is then an RFC 7662 introspection endpoint, whose verdict on a
// token is only ever a 200 ({"active": false} for a token it refuses).
func (v *TokenInfo) introspection() bool { return v.auth.Method != AuthNone }

// refusesClient reports whether a 400, 401 or 403 answer is about
// idlink's request rather than the user's token, and says why (for the
// log: a status and the answer's OAuth error code, never its text).
//
// With client authentication every such answer is (RFC 7662 §2.3: an
// invalid token is a 200 with active false). Without it, a token-info URL
// refuses a bad token with a 4xx, so only an answer that asks for client
// authentication counts: the OAuth error codes about the client
// (invalid_client, unauthorized_client: RFC 6749 §5.2;
// request_unauthorized, as fosite/Hydra answer) or a 401 with a Basic
// challenge.
func (v *TokenInfo) refusesClient(resp *http.Response, body []byte) (string, bool) {
	if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusUnauthorized &&
		resp.StatusCode != http.StatusForbidden {
		return "", false
	}
	code := oauthErrorCode(body)
	why := fmt.Sprintf("answered %d", resp.StatusCode)
	if code != "" {
		why += " " + code
	}
	if v.introspection() {
		return why, true
	}
	switch code {
	case "invalid_client", "unauthorized_client", "request_unauthorized":
		return why + "; configure client_id and client_secret", true
	}
	challenge := strings.ToLower(resp.Header.Get("WWW-Authenticate"))
	if resp.StatusCode == http.StatusUnauthorized && strings.HasPrefix(challenge, "basic") {
		return why + " with a Basic challenge; configure client_id and client_secret", true
	}
	return "", false
}

// oauthErrorCode is the "error" of an OAuth error answer when it is a
// plain code (RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E; here at most 64
// of [a-z0-9_.-], so the log never carries the provider's free text).
func oauthErrorCode(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Error) > 64 {
		return ""
	}
	for i := 0; i < len(e.Error); i++ {
		c := e.Error[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' && c != '.' {
			return ""
		}
	}
	return e.Error
}
