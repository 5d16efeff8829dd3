package caddymodule

import (
	"io"
	"net/http"
	"strings"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// Inbound credential headers (what an SDK sends).
const (
	hdrInstallID         = "X-Install-Id"
	hdrExternalID        = "X-External-Id"
	hdrExternalIDSig     = "X-External-Id-Signature"
	hdrPlatform          = "X-Platform"
	hdrUserEmail         = "X-User-Email"
	hdrUserEmailSig      = "X-User-Email-Signature"
	hdrUserPhone         = "X-User-Phone"
	hdrUserPhoneSig      = "X-User-Phone-Signature"
	hdrContactToken      = "X-Contact-Token"
	hdrSSOToken          = "X-Sso-Token"
	hdrSessionID         = "X-Session-Id"
	hdrAuthorization     = "Authorization"
	hdrAccessControlReqM = "Access-Control-Request-Method"
)

// Identity headers (what the upstream receives).
const (
	hdrPlatformUserID   = "X-Platform-User-Id"
	hdrIdentitySource   = "X-Identity-Source"
	hdrIdentityVerified = "X-Identity-Verified"
	hdrVerifiedEmail    = "X-Verified-Email"
	hdrVerifiedPhone    = "X-Verified-Phone"
	// X-External-Id, X-Install-Id and X-Session-Id are both.
)

// identityHeaders are deleted from every request before anything else, in
// every spelling, and only ever set by idlink.
var identityHeaders = []string{
	hdrPlatformUserID, hdrIdentitySource, hdrIdentityVerified,
	hdrExternalID, hdrInstallID, hdrSessionID,
	hdrVerifiedEmail, hdrVerifiedPhone,
}

// credentialHeaders are inputs of verification that are not forwarded
// (unless the operator asks): signatures, the unverified attribute values
// they sign, and tokens.
var credentialHeaders = []string{
	hdrExternalIDSig, hdrUserEmail, hdrUserEmailSig, hdrUserPhone, hdrUserPhoneSig,
	hdrContactToken, hdrSSOToken,
}

// headerSet matches header names the way CGI, PHP and WSGI upstreams fold
// them: ASCII case-insensitive, with '_', '.' and '-' the same. (Caddy
// itself drops underscore and dot spellings at intake unless the operator
// allow-lists them with expected_underscore_headers/expected_dot_headers;
// idlink strips them regardless.)
type headerSet struct {
	byLen map[int][]string // lower-case, '-' separated names by length
}

func newHeaderSet(names ...[]string) headerSet {
	s := headerSet{byLen: map[int][]string{}}
	seen := map[string]bool{}
	for _, list := range names {
		for _, n := range list {
			f := foldHeader(n)
			if !seen[f] {
				seen[f] = true
				s.byLen[len(f)] = append(s.byLen[len(f)], f)
			}
		}
	}
	return s
}

func foldHeader(n string) string {
	b := []byte(n)
	for i, c := range b {
		b[i] = foldByte(c)
	}
	return string(b)
}

func foldByte(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	if c == '_' || c == '.' {
		return '-'
	}
	return c
}

// has reports whether name is in the set, in any spelling.
func (s headerSet) has(name string) bool {
	for _, f := range s.byLen[len(name)] {
		if equalFolded(name, f) {
			return true
		}
	}
	return false
}

func equalFolded(name, folded string) bool {
	for i := 0; i < len(name); i++ {
		if foldByte(name[i]) != folded[i] {
			return false
		}
	}
	return true
}

// strip deletes every header of the set, all spellings and duplicates.
func (s headerSet) strip(h http.Header) {
	for k := range h {
		if s.has(k) {
			delete(h, k)
		}
	}
}

// stripTokens removes from every value of the comma-separated list header
// name (Connection, Trailer) the tokens that name a header of the set, in
// any spelling, and deletes the header when no token is left.
func (s headerSet) stripTokens(h http.Header, name string) {
	vs, ok := h[name]
	if !ok {
		return
	}
	kept := vs[:0:0]
	for _, v := range vs {
		var out []string
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !s.has(tok) {
				out = append(out, tok)
			}
		}
		if len(out) > 0 {
			kept = append(kept, strings.Join(out, ", "))
		}
	}
	if len(kept) == 0 {
		delete(h, name)
	} else {
		h[name] = kept
	}
}

// stripTrailers deletes the set's names from r's trailers: from the
// declaration now (the Trailer header, which net/http moves into the keys
// of r.Trailer), and from the values net/http adds to that same map when
// the body is read to its end, before the reader of the body (the proxy)
// gets the end. A request without declared trailers has a nil r.Trailer,
// and net/http then gives what trailers it reads to no handler.
func (s headerSet) stripTrailers(r *http.Request) {
	s.stripTokens(r.Header, "Trailer")
	if r.Trailer == nil {
		return
	}
	s.strip(r.Trailer)
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &trailerStripBody{ReadCloser: r.Body, trailer: r.Trailer, set: s}
	}
}

// trailerStripBody strips its set from trailer whenever a Read of the body
// ends it (io.EOF or an error): net/http fills in the trailers just then.
type trailerStripBody struct {
	io.ReadCloser
	trailer http.Header
	set     headerSet
}

func (b *trailerStripBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.set.strip(b.trailer)
	}
	return n, err
}

// Limits on client values that can reach an upstream header (external id
// and email: verify.MaxExternalIDLen, verify.MaxEmailLen).
const (
	maxPhoneLen     = 64
	maxIDLen        = 128
	maxSignatureLen = 256 // longer values are rejected before decoding
)

// readCredentials reads the credential headers. A header sent more than
// once, or a value too long or holding a control character, is a bad
// request: identity must never be ambiguous.
func readCredentials(h http.Header) (identity.Credentials, *apiError) {
	var c identity.Credentials
	var e *apiError
	get := func(name string, max int, what string) string {
		v, sent := single(h, name, &e)
		if sent && !verify.HeaderValue(v, max) {
			e = apierr.InvalidRequest(what + " must be 1 to " + itoa(max) + " bytes of UTF-8 without control characters")
			return ""
		}
		return v
	}
	// The external id and the email may come in RFC 8187's encoded form
	// (verify.DecodeText): what a browser must send for non-ASCII text.
	// What is verified, stored and forwarded is the decoded text.
	text := func(name string, max int, what string) string {
		v, sent := single(h, name, &e)
		if !sent {
			return ""
		}
		t, ok := verify.DecodeText(v, max)
		if !ok {
			e = apierr.InvalidRequest(what + " must be 1 to " + itoa(max) + " bytes of UTF-8 without control characters," +
				" sent as is or encoded as utf-8''<percent-encoded UTF-8>")
			return ""
		}
		return t
	}
	c.Platform = get(hdrPlatform, 64, "X-Platform")
	c.ExternalID = text(hdrExternalID, verify.MaxExternalIDLen, "the external id")
	c.ExternalIDSig = get(hdrExternalIDSig, maxSignatureLen, "the external id signature")
	c.Email = text(hdrUserEmail, verify.MaxEmailLen, "the email")
	c.EmailSig = get(hdrUserEmailSig, maxSignatureLen, "the email signature")
	c.Phone = get(hdrUserPhone, maxPhoneLen, "the phone")
	c.PhoneSig = get(hdrUserPhoneSig, maxSignatureLen, "the phone signature")
	c.InstallID = get(hdrInstallID, maxIDLen, "the install id")
	c.SessionID = get(hdrSessionID, maxIDLen, "the session id")
	c.SSOToken = get(hdrSSOToken, 8192, "the SSO token")
	c.ContactToken = getRaw(h, hdrContactToken, &e)
	c.Bearer = bearerToken(h, &e)
	return c, e
}

// getRaw reads a token header that the token check validates itself (so
// that an over-long or malformed token is 401 invalid_token, not 400); only
// a repeated header is a bad request here.
func getRaw(h http.Header, name string, e **apiError) string {
	v, _ := single(h, name, e)
	return v
}

// single is the one value of header name, and whether it was sent; a
// header sent more than once is a bad request (*e), as is any header
// once *e is set.
func single(h http.Header, name string, e **apiError) (string, bool) {
	vs := h[name]
	switch {
	case len(vs) == 0 || *e != nil:
		return "", false
	case len(vs) > 1:
		*e = apierr.InvalidRequest(name + " was sent more than once")
		return "", false
	}
	return vs[0], true
}

// bearerToken returns the token of "Authorization: Bearer <token>" (scheme
// case-insensitive), or "" for another scheme. Whether it is read as a
// contact token depends on the tenant.
func bearerToken(h http.Header, e **apiError) string {
	vs := h[hdrAuthorization]
	bearer := ""
	for _, v := range vs {
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			bearer = strings.TrimLeft(v[7:], " ")
		}
	}
	if bearer != "" && len(vs) > 1 && *e == nil {
		*e = apierr.InvalidRequest("Authorization was sent more than once")
		return ""
	}
	return bearer
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// isPreflight reports a CORS preflight request.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get(hdrAccessControlReqM) != ""
}
