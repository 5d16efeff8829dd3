package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
)

// Shards is the number of hash-tag shards of each tenant. Every key of a
// tenant carries the hash tag {<tenant>:<shard>}, with the shard written as
// two hex digits, so one tenant's data spreads over Shards slots of a Redis
// Cluster while each multi-key script stays inside one slot.
//
// The number is part of the key schema: ids embed the shard they live in and
// external ids are placed by a hash modulo Shards, so it can never change for
// existing data.
const Shards = 16

// Id kinds: the first letter of every id idlink issues.
const (
	KindUser    = 'u'
	KindInstall = 'i'
	KindSession = 's'
)

// idRandomBytes is the randomness of every issued id: 144 bits.
const idRandomBytes = 18

// idLen is the length of an issued id: kind, '_', two hex digits of shard,
// and the base64url of the random part.
var idLen = 2 + 2 + base64.RawURLEncoding.EncodedLen(idRandomBytes)

// ErrBadID is returned by ParseID for a string that is not an id of the
// wanted kind.
var ErrBadID = errors.New("malformed id")

// NewID returns a new unguessable, URL-safe id of the given kind living in
// the given shard, e.g. "u_0aKq3...".
func NewID(kind byte, shard int) string {
	var raw [idRandomBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		// crypto/rand never fails on supported platforms (Go 1.24+ panics
		// itself); keep the guard for older runtimes.
		panic(fmt.Sprintf("idlink: crypto/rand: %v", err))
	}
	b := make([]byte, 0, idLen)
	b = append(b, kind, '_')
	b = append(b, hexDigits[shard>>4&0xf], hexDigits[shard&0xf])
	b = base64.RawURLEncoding.AppendEncode(b, raw[:])
	return string(b)
}

const hexDigits = "0123456789abcdef"

// AnonymousUserOf is the id of the anonymous user CreateInstall makes with
// an install: a user id in the install's shard whose random part is the
// first 144 bits of SHA-256 of the install id. Whoever knows the install
// id can tell its anonymous user (as any request carrying the install id
// could), while a user id, which upstreams and logs see, says nothing of
// the install id. It lets the first step of a link name that user's keys
// before reading the install (links.go); installs of earlier releases
// have a random anonymous user, which a link handles one step later.
func AnonymousUserOf(installID string) string {
	sum := sha256.Sum256([]byte("idlink anonymous user\x00" + installID))
	b := make([]byte, 0, idLen)
	b = append(b, KindUser, '_')
	b = append(b, installID[2:4]...)
	b = base64.RawURLEncoding.AppendEncode(b, sum[:idRandomBytes])
	return string(b)
}

// ParseID checks that id is an id of the given kind as NewID makes them and
// returns the shard it lives in. Everything a client sends as an id goes
// through here before it reaches a key.
func ParseID(kind byte, id string) (int, error) {
	if len(id) != idLen || id[0] != kind || id[1] != '_' {
		return 0, ErrBadID
	}
	hi, lo := strings.IndexByte(hexDigits, id[2]), strings.IndexByte(hexDigits, id[3])
	if hi < 0 || lo < 0 || hi<<4|lo >= Shards {
		return 0, ErrBadID
	}
	shard := hi<<4 | lo
	for i := 4; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return 0, ErrBadID
		}
	}
	return shard, nil
}

// ExternalShard is the shard an external id lives in, and so the shard of
// the user first created for it.
func ExternalShard(externalID string) int {
	return int(externalHash(externalID) % Shards)
}

// ExternalBuckets is the number of bucket hashes per shard that hold the
// permanent external id → user mappings (Keys.ExternalBucket). Like
// Shards, it is part of the key schema and can never change. With Redis's
// default hash-max-listpack-entries (128) a bucket stays a compact
// listpack up to 128 ids, so a tenant's mappings do up to
// Shards × ExternalBuckets × 128 ≈ 2 million external ids; past that
// buckets become hash tables, still cheaper than a key per id, and a
// higher hash-max-listpack-entries keeps them compact.
const ExternalBuckets = 1024

// MaxBucketedExternal is the longest external id (bytes) kept in a
// bucket: longer ones would turn their bucket into a hash table (Redis's
// default hash-max-listpack-value is 64), so they keep a key of their own.
const MaxBucketedExternal = 64

// externalHash is FNV-1a of an external id: its low bits pick the shard,
// the next ones its bucket.
func externalHash(externalID string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(externalID))
	return h.Sum32()
}

// Bucketed reports whether the permanent mapping of an external id lives
// in its bucket (else in its own key, Keys.External).
func Bucketed(externalID string) bool { return len(externalID) <= MaxBucketedExternal }

// Keys names the Redis keys of one tenant. The schema (README "Key schema"):
//
//	idl:{T:SS}:x:<bucket>              hash    external id -> user id, for the
//	                                           permanent mappings of ids of at
//	                                           most MaxBucketedExternal bytes;
//	                                           bucket = three hex digits of
//	                                           (FNV-1a / Shards) % ExternalBuckets
//	idl:{T:SS}:ext:<external id>       string  user id of an external id whose
//	                                           mapping expires (made for it
//	                                           unverified: see below), of a longer
//	                                           id, or written before buckets
//	                                           existed (the first script that
//	                                           reads such a permanent key moves it
//	                                           into its bucket). Either way set
//	                                           only if absent, never reassigned
//	idl:{T:SS}:user:<user id>          hash    ext (absent or empty: anonymous),
//	                                           created (unix ms), email and phone
//	                                           (verified at a login), and a field
//	                                           i:<install id> (empty value) per
//	                                           install of the user (may name stale
//	                                           ids: readers check the install)
//	idl:{T:SS}:user:<user id>:installs set     install ids of the user, as the
//	                                           schema before the i: fields wrote
//	                                           them: still read and removed from,
//	                                           never added to
//	idl:{T:SS}:user:<user id>:sessions zset    live session ids, score = last
//	                                           activity (unix ms)
//	idl:{T:SS}:user:<user id>:attrs    hash    external attributes: JSON-encoded
//	                                           key -> compact JSON value
//	idl:{T:SS}:user:<user id>:claims   hash    claims the customer backend set
//	                                           (PUT /users/{id}/claims), stored
//	                                           like the attributes
//	idl:{T:SS}:sess:<session id>       hash    user, started, last (unix ms),
//	                                           install, verified (0/1), seq (the
//	                                           user's sess_seq at admission),
//	                                           state (live|ended), reason, by
//	                                           (evicting session), ended (unix ms)
//	idl:{T:SS}:inst:<install id>       hash    user, created (unix ms),
//	                                           anon_claim (the one external id
//	                                           the install's anonymous user,
//	                                           AnonymousUserOf(install id), may
//	                                           ever take; earlier releases made a
//	                                           random one, named by anon_user),
//	                                           and the outcome of the last
//	                                           link: link_ext, link_created (0/1),
//	                                           link_merged_from (only when the
//	                                           link merged); the last link's user
//	                                           is the install's user (earlier
//	                                           releases also kept it as link_user);
//	                                           prev (user the install left, while
//	                                           its installs set may still list it)
//	idl:{T:SS}:inst:<install id>:lock  string  per-install link lock (random
//	                                           token, PX 5s)
//	idl:{T:SS}:bcl:jti:<sha256 hex>    string  a used back-channel logout token
//	                                           (sha256 of issuer "\n" jti; shard:
//	                                           its first byte), PX until the token
//	                                           is no longer accepted
//	idl:{T:SS}:events                  stream  the shard's outbox of events
//	idl:{T:SS}:events:due              zset    outbox entry ids being delivered
//	                                           or waiting for a retry, scored by
//	                                           when they may next be taken (unix ms)
//	idl:{T:SS}:deadletter              stream  events that kept failing
//	idl:tenants                        set     tenants that issued installs
//	                                           (global; read on a failed link)
//	idl:itenant:<install id>           string  tenant of an install (global;
//	                                           only earlier releases wrote it;
//	                                           read on a failed link only)
//
// T is the tenant and SS the shard in two hex digits; {T:SS} is the hash
// tag, so every key of one shard is in one Cluster slot.
//
// Expiry (expiry.go): the keys of an install made by CreateInstall (its
// hash and its anonymous user's hash) and of a user
// made by ResolveUnverified (its ext key, its hash, and its
// sessions set once it has sessions) expire after the tenant's
// install_ttl, renewed on use, until a link or a verified credential makes
// them permanent (PERSIST). Every other key above is permanent, except the
// lock and the session hashes (their own TTLs, below). An anonymous user
// that a link moves its install away from is deleted by that link. An install and
// its anonymous user live in one shard (the install's); an external id and
// the user first created for it live in ExternalShard(external id).
//
// Sessions (sessions.go) live in their user's shard: a session id is
// NewID(KindSession, shard of the user), so the session hash, the user's
// session set and the user hash share one slot and one script admits,
// touches or ends a session atomically. The user hash counts the user's
// admissions (sess_seq), which orders sessions last active in the same
// millisecond. A login also stores the user's verified email and phone
// (fields email, phone of the user hash) and
// external attributes: a hash whose fields are the attribute keys JSON-
// encoded (quotes included) and whose values are compact JSON, so that the
// admission script merges them and knows the exact size of the object's
// compact JSON without decoding anything.
//
// A session hash outlives the session as a tombstone, so an ended id
// answers session_ended with its reason: with a lifetime L it expires at
// started+L+keep; without one, at (last activity or end)+idle+keep, where
// keep is idle, or 24h without idle, or 30 days with neither (see
// SessionPolicy.Keep). After that the id is simply unknown; ids are random
// and never reissued.
type Keys struct {
	tenant string
	tags   [Shards]string // "idl:{T:SS}:"
}

// NewKeys returns the key names of a tenant.
func NewKeys(tenant string) *Keys {
	k := &Keys{tenant: tenant}
	for s := range Shards {
		k.tags[s] = "idl:{" + tenant + ":" + string(hexDigits[s>>4&0xf]) + string(hexDigits[s&0xf]) + "}:"
	}
	return k
}

// Tenant is the tenant the keys belong to.
func (k *Keys) Tenant() string { return k.tenant }

// External is the key of an external id's user when that mapping is not
// in its bucket (see ExternalBucket).
func (k *Keys) External(externalID string) string {
	return k.tags[ExternalShard(externalID)] + "ext:" + externalID
}

// ExternalBucket is the bucket hash that holds an external id's permanent
// mapping (when Bucketed); in the external id's shard, so in the slot of
// its ext key and of the user first created for it.
func (k *Keys) ExternalBucket(externalID string) string {
	b := externalHash(externalID) / Shards % ExternalBuckets
	return k.tags[ExternalShard(externalID)] + "x:" + string([]byte{hexDigits[b>>8&0xf], hexDigits[b>>4&0xf], hexDigits[b&0xf]})
}

// User is the hash of a user; the id must have passed ParseID.
func (k *Keys) User(shard int, userID string) string { return k.tags[shard] + "user:" + userID }

// InstallField is the field of a user's hash that lists one of its
// installs.
func InstallField(installID string) string { return "i:" + installID }

// UserInstalls is the set of a user's installs in the old schema: read
// (with the user's install fields) and emptied, never added to.
func (k *Keys) UserInstalls(shard int, userID string) string {
	return k.tags[shard] + "user:" + userID + ":installs"
}

// UserSessions is the sorted set of a user's live sessions.
func (k *Keys) UserSessions(shard int, userID string) string {
	return k.tags[shard] + "user:" + userID + ":sessions"
}

// UserAttributes is the hash of a user's external attributes.
func (k *Keys) UserAttributes(shard int, userID string) string {
	return k.tags[shard] + "user:" + userID + ":attrs"
}

// UserClaims is the hash of a user's claims, written only by the customer
// backend.
func (k *Keys) UserClaims(shard int, userID string) string {
	return k.tags[shard] + "user:" + userID + ":claims"
}

// Session is the hash of a session; the id must have passed ParseID.
func (k *Keys) Session(shard int, sessionID string) string {
	return k.tags[shard] + "sess:" + sessionID
}

// Install is the hash of an install.
func (k *Keys) Install(shard int, installID string) string {
	return k.tags[shard] + "inst:" + installID
}

// InstallLock is the per-install link lock.
func (k *Keys) InstallLock(shard int, installID string) string {
	return k.tags[shard] + "inst:" + installID + ":lock"
}

// Tenants is the global set of the tenants that issued installs (one
// member per tenant, added again by each CreateInstall): a
// failed link looks for the install in each of them to tell "another
// tenant's install" from "no such install".
const Tenants = "idl:tenants"

// InstallTenant is the global key naming the tenant of an install, written
// by earlier releases (104 bytes per install). This release writes none:
// a failed link reads it beside the Tenants set, to tell "another tenant's
// install" from "no such install".
func InstallTenant(installID string) string { return "idl:itenant:" + installID }

// Failures is the failed-verification counter of a client (subject
// "ip:<address or IPv6 /64>"), in the shard a hash of the subject names.
func (k *Keys) Failures(subject string) string {
	return k.tags[ExternalShard(subject)] + "fail:" + subject
}

// SessionFailures is the failed-verification counter of a session.
func (k *Keys) SessionFailures(shard int, sessionID string) string {
	return k.tags[shard] + "sess:" + sessionID + ":fail"
}

// Events is the outbox stream of a shard.
func (k *Keys) Events(shard int) string { return k.tags[shard] + "events" }

// EventsDue is the schedule of a shard's outbox entries that were taken for
// delivery: entry id scored by the time (unix ms) at which the entry may be
// taken again (its lease while an attempt runs, its retry time after a
// failure).
func (k *Keys) EventsDue(shard int) string { return k.tags[shard] + "events:due" }

// Deadletter is the stream of a shard's events that kept failing.
func (k *Keys) Deadletter(shard int) string { return k.tags[shard] + "deadletter" }
