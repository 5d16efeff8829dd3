package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Standard Webhooks format (https://www.standardwebhooks.com), the
// default: the event id, the attempt's time and the signatures travel in
// three headers, and the signed content is id + "." + timestamp + "." +
// body, so the id is covered by the signature too.

// Header names of a delivery in the Standard Webhooks format. (HTTP header
// names are case-insensitive; http.Header.Get finds them as written.)
const (
	IDHeader                = "webhook-id"
	TimestampHeader         = "webhook-timestamp"
	StandardSignatureHeader = "webhook-signature"
)

// SecretPrefix starts every Standard Webhooks secret: "whsec_" followed
// by the base64 (standard alphabet, padded) of the HMAC key.
const SecretPrefix = "whsec_"

// maxIDLen bounds a webhook-id VerifyStandard accepts (idlink's are 20 to
// 40 bytes).
const maxIDLen = 256

// ErrBadSecret is returned for a secret that is not "whsec_" followed by
// the base64 of a non-empty key.
var ErrBadSecret = errors.New("webhook: secret is not whsec_ followed by base64")

// DecodeSecret returns the HMAC key of a Standard Webhooks secret
// "whsec_<base64>", or ErrBadSecret.
func DecodeSecret(secret string) ([]byte, error) {
	b64, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, ErrBadSecret
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(key) == 0 {
		return nil, ErrBadSecret
	}
	return key, nil
}

// SignStandard returns the webhook-signature header value for the event id
// sent at time t with body: "v1,<base64 HMAC-SHA256(key, id + "." + unix
// seconds + "." + body)>", one per key (decoded secrets, see DecodeSecret),
// space-separated, in the order given. It returns ErrNoSecrets if keys is
// empty or holds an empty key, and ErrMalformed for an id that is empty,
// longer than 256 bytes, or holds a '.', a space or a control character
// (a '.' would let one signed content be read as another id and
// timestamp).
func SignStandard(keys [][]byte, id string, t time.Time, body []byte) (string, error) {
	if len(keys) == 0 {
		return "", ErrNoSecrets
	}
	if !validID(id) {
		return "", ErrMalformed
	}
	ts := strconv.FormatInt(t.Unix(), 10)
	sigLen := base64.StdEncoding.EncodedLen(sha256.Size)
	b := make([]byte, 0, len(keys)*(4+sigLen))
	var sum [sha256.Size]byte
	for i, k := range keys {
		if len(k) == 0 {
			return "", ErrNoSecrets
		}
		standardMAC(k, id, ts, body, &sum)
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, "v1,"...)
		b = base64.StdEncoding.AppendEncode(b, sum[:])
	}
	return string(b), nil
}

// VerifyStandard checks a delivery in the Standard Webhooks format: the
// webhook-id, webhook-timestamp and webhook-signature headers of h against
// the raw request body. It succeeds when any v1 signature is the
// HMAC-SHA256 of id + "." + timestamp + "." + body under the key of any of
// secrets ("whsec_<base64>" each; a receiver rotating its secret lists the
// old and the new one), and the timestamp is within tolerance of now (a
// zero or negative tolerance means DefaultTolerance). Every signature is
// compared with every secret in constant time, without early exit.
// Signatures of other versions (v1a, v2) are ignored; headers without any
// v1 signature, a v1 signature that is not the base64 of 32 bytes, a
// timestamp that is not decimal, or a missing or invalid id are
// ErrMalformed. A secret not in the whsec_ form is ErrBadSecret.
//
// Pass the body exactly as received, before any JSON decoding, and
// deduplicate on the id: a retry carries the same id and a new timestamp.
func VerifyStandard(h http.Header, body []byte, secrets []string, tolerance time.Duration, now time.Time) error {
	if len(secrets) == 0 {
		return ErrNoSecrets
	}
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		if s == "" {
			return ErrNoSecrets
		}
		k, err := DecodeSecret(s)
		if err != nil {
			return err
		}
		keys[i] = k
	}
	id, ts := h.Get(IDHeader), h.Get(TimestampHeader)
	if !validID(id) || !decimal(ts) {
		return ErrMalformed
	}
	sigs, ok := parseStandard(h.Values(StandardSignatureHeader))
	if !ok {
		return ErrMalformed
	}
	var want [sha256.Size]byte
	match := 0
	for _, k := range keys {
		standardMAC(k, id, ts, body, &want)
		for _, sig := range sigs {
			match |= boolInt(hmac.Equal(want[:], sig))
		}
	}
	if match == 0 {
		return ErrNoMatch
	}
	return inTolerance(ts, tolerance, now)
}

// parseStandard splits webhook-signature values ("v1,<base64>" items
// separated by spaces; several header lines count as one list) into the
// decoded v1 signatures. It rejects over-long headers, too many items, an
// item without a comma, and a v1 item that is not the base64 of 32 bytes.
func parseStandard(values []string) (sigs [][]byte, ok bool) {
	n := 0
	for _, v := range values {
		n += len(v) + 1
	}
	if n > maxHeaderLen {
		return nil, false
	}
	items := 0
	for _, v := range values {
		for item := range strings.FieldsSeq(v) {
			items++
			if items > maxSignatures {
				return nil, false
			}
			version, sig, found := strings.Cut(item, ",")
			if !found {
				return nil, false
			}
			if version != "v1" {
				continue // another scheme (v1a, a later version): not ours to check
			}
			b, err := base64.StdEncoding.DecodeString(sig)
			if err != nil || len(b) != sha256.Size {
				return nil, false
			}
			sigs = append(sigs, b)
		}
	}
	return sigs, len(sigs) > 0
}

// validID reports whether id is 1 to maxIDLen visible ASCII characters
// other than '.'.
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '.' {
			return false
		}
	}
	return true
}

// standardMAC computes HMAC-SHA256(key, id + "." + ts + "." + body) into out.
func standardMAC(key []byte, id, ts string, body []byte, out *[sha256.Size]byte) {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	m.Sum(out[:0])
}
