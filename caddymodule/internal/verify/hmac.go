// Package verify checks the credentials an SDK client presents: HMAC
// signatures of external ids (and of email and phone), contact tokens
// (JWTs) and SSO tokens. It knows neither Caddy nor the store: each
// verifier takes plain configuration and returns plain claims, and is
// tested with real HTTP servers and no Redis.
package verify

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"sync"
)

// SignatureHexLen is the length of a hex HMAC-SHA256: 32 bytes, 64 digits.
const SignatureHexLen = 2 * sha256.Size

// HMACKey is one platform secret with a pool of keyed HMAC states, so a
// verification costs no key schedule and no allocation.
type HMACKey struct {
	pool sync.Pool
}

// hmacState is a keyed HMAC with the buffers of one computation: the
// message as bytes (Write takes a []byte, and converting a string to one
// for an interface call allocates) and the sum (which Sum, an interface
// method, would otherwise take from the heap).
type hmacState struct {
	mac hash.Hash
	msg []byte
	sum [sha256.Size]byte
}

// maxPooledMsg bounds the message buffer a pooled state keeps (messages
// are header values, far below it).
const maxPooledMsg = 4096

// NewHMACKey returns the key of a secret.
func NewHMACKey(secret []byte) *HMACKey {
	k := &HMACKey{}
	key := append([]byte(nil), secret...)
	k.pool.New = func() any { return &hmacState{mac: hmac.New(sha256.New, key)} }
	return k
}

// compute takes a state from the pool with HMAC-SHA256(secret, msg) in
// its sum; the caller puts it back.
func (k *HMACKey) compute(msg string) *hmacState {
	s := k.pool.Get().(*hmacState)
	s.mac.Reset()
	s.msg = append(s.msg[:0], msg...)
	s.mac.Write(s.msg)
	s.mac.Sum(s.sum[:0])
	if cap(s.msg) > maxPooledMsg {
		s.msg = nil
	}
	return s
}

// Sum computes HMAC-SHA256(secret, msg) into out.
func (k *HMACKey) Sum(msg string, out *[sha256.Size]byte) {
	s := k.compute(msg)
	*out = s.sum
	k.pool.Put(s)
}

// equal reports, in constant time, whether want is HMAC-SHA256(secret,
// msg).
func (k *HMACKey) equal(msg string, want *[sha256.Size]byte) bool {
	s := k.compute(msg)
	ok := hmac.Equal(s.sum[:], want[:])
	k.pool.Put(s)
	return ok
}

// DecodeSignature decodes a 64-digit hex signature of either case. It
// rejects every other length and every non-hex digit.
func DecodeSignature(s string, out *[sha256.Size]byte) bool {
	if len(s) != SignatureHexLen {
		return false
	}
	for i := 0; i < sha256.Size; i++ {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		out[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// HMAC reports whether sigHex is the hex HMAC-SHA256 of msg under any
// of keys. Every key is tried (no early exit) and each comparison is
// constant-time, so timing tells neither how much of a signature matched
// nor which secret did.
func HMAC(keys []*HMACKey, msg, sigHex string) bool {
	var want [sha256.Size]byte
	if !DecodeSignature(sigHex, &want) {
		return false
	}
	ok := 0
	for _, k := range keys {
		ok |= boolToInt(k.equal(msg, &want))
	}
	return ok == 1
}

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
