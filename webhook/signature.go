package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is the tolerance Verify uses when given none: how far
// the signature's timestamp may be from the receiver's clock.
const DefaultTolerance = 5 * time.Minute

// Limits of a signature header Verify accepts.
const (
	maxHeaderLen  = 4096
	maxSignatures = 16
	sigHexLen     = 2 * sha256.Size
)

// Errors of Verify and VerifyStandard. Every error they return is one of
// them or ErrBadSecret (test with errors.Is); none of them says which
// secret or how much of a signature matched.
var (
	ErrNoSecrets  = errors.New("webhook: no secret to verify with")
	ErrMalformed  = errors.New("webhook: malformed signature headers")
	ErrNoMatch    = errors.New("webhook: no signature matches")
	ErrOutOfRange = errors.New("webhook: signature timestamp outside the tolerance")
)

// The idlink format (format idlink), idlink's own before Standard
// Webhooks: the Idlink-Event-Id and Idlink-Signature headers, signing
// t + "." + body with the secret's bytes as they are.

// Sign returns the Idlink-Signature header value for body sent at time t:
// "t=<unix>,v1=<hex>" with one v1= per secret, in the order given. It
// returns ErrNoSecrets if secrets is empty or holds an empty secret.
func Sign(secrets []string, t time.Time, body []byte) (string, error) {
	if len(secrets) == 0 {
		return "", ErrNoSecrets
	}
	ts := strconv.FormatInt(t.Unix(), 10)
	b := make([]byte, 0, 2+len(ts)+len(secrets)*(4+sigHexLen))
	b = append(b, "t="...)
	b = append(b, ts...)
	var sum [sha256.Size]byte
	for _, s := range secrets {
		if s == "" {
			return "", ErrNoSecrets
		}
		mac(s, ts, body, &sum)
		b = append(b, ",v1="...)
		b = hex.AppendEncode(b, sum[:])
	}
	return string(b), nil
}

// Verify checks an Idlink-Signature header against the raw request body:
// it succeeds when any v1= signature is the HMAC-SHA256 of t + "." + body
// under any of secrets (so a receiver rotating its secret lists the old and
// the new one), and t is within tolerance of now (a zero or negative
// tolerance means DefaultTolerance). Every signature is compared with every
// secret in constant time, without early exit. Unknown schemes (v0=, v2=)
// are ignored; a header without t= or without any v1= is malformed.
//
// Pass the body exactly as received, before any JSON decoding.
func Verify(header string, body []byte, secrets []string, tolerance time.Duration, now time.Time) error {
	if len(secrets) == 0 {
		return ErrNoSecrets
	}
	for _, s := range secrets {
		if s == "" {
			return ErrNoSecrets
		}
	}
	ts, sigs, ok := parse(header)
	if !ok {
		return ErrMalformed
	}
	var want, got [sha256.Size]byte
	match := 0
	for _, s := range secrets {
		mac(s, ts, body, &want)
		for _, sig := range sigs {
			// sig was checked to be sigHexLen hex digits.
			hex.Decode(got[:], []byte(sig))
			match |= boolInt(hmac.Equal(want[:], got[:]))
		}
	}
	if match == 0 {
		return ErrNoMatch
	}
	return inTolerance(ts, tolerance, now)
}

// parse splits "t=<digits>,v1=<hex>[,v1=<hex>]..." (items in any order,
// optional spaces around them) into the timestamp digits and the v1
// signatures. It rejects over-long headers, a missing or repeated t,
// non-decimal timestamps, v1 values that are not 64 hex digits, and too
// many items.
func parse(header string) (ts string, sigs []string, ok bool) {
	if len(header) == 0 || len(header) > maxHeaderLen {
		return "", nil, false
	}
	items := 0
	for item := range strings.SplitSeq(header, ",") {
		items++
		if items > maxSignatures+1 {
			return "", nil, false
		}
		k, v, found := strings.Cut(strings.TrimSpace(item), "=")
		if !found {
			return "", nil, false
		}
		switch k {
		case "t":
			if ts != "" || !decimal(v) {
				return "", nil, false
			}
			ts = v
		case "v1":
			if len(v) != sigHexLen || !isHex(v) {
				return "", nil, false
			}
			sigs = append(sigs, v)
		default:
			// Another scheme: ignored, so that a receiver keeps working
			// while idlink adds one.
		}
	}
	if ts == "" || len(sigs) == 0 {
		return "", nil, false
	}
	return ts, sigs, true
}

// decimal reports whether s is 1 to 12 decimal digits (unix seconds until
// the year 33658), so it parses without overflow.
func decimal(s string) bool {
	if len(s) == 0 || len(s) > 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// mac computes HMAC-SHA256(secret, ts + "." + body) into out.
func mac(secret, ts string, body []byte, out *[sha256.Size]byte) {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	m.Sum(out[:0])
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// inTolerance checks a delivery's timestamp (unix seconds, checked to be
// decimal) against now: ErrOutOfRange beyond tolerance either way
// (DefaultTolerance when not positive).
func inTolerance(ts string, tolerance time.Duration, now time.Time) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	t, _ := strconv.ParseInt(ts, 10, 64)
	d := now.Sub(time.Unix(t, 0))
	if d > tolerance || d < -tolerance {
		return ErrOutOfRange
	}
	return nil
}
