package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors of install and user lookups.
var (
	ErrInstallNotFound    = errors.New("install not found")
	ErrInstallWrongTenant = errors.New("install belongs to another tenant")
	ErrUserNotFound       = errors.New("user not found")
)

// CreateInstall issues a new install id with a new anonymous user, both in
// one random shard, and appends user.created to that shard's outbox: one
// script in that shard. With a TTL in e, the install and its user (which
// lists the install) expire after it unless used or linked (expiry.go).
// The anonymous user's id is AnonymousUserOf(install id).
// An id is 144 random bits, so it is never issued twice; the script
// refuses one that exists in this tenant all the same. Before it, the
// tenant is added to the Tenants set (SADD, in the same round trip on one
// node without durability; a member already there costs nothing).
func (s *Store) CreateInstall(ctx context.Context, k *Keys, now time.Time, e Expiry) (installID, userID string, err error) {
	shard := rand.IntN(Shards)
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	installID = NewID(KindInstall, shard)
	userID = AnonymousUserOf(installID)
	data, _ := json.Marshal(struct {
		UserID    string `json:"user_id"`
		InstallID string `json:"install_id"`
	}{userID, installID})
	keys := []string{k.Install(shard, installID), k.User(shard, userID), k.Events(shard)}
	args := []any{installID, userID, strconv.FormatInt(now.UnixMilli(), 10), k.Tenant(), data, ttlArg(e.TTL)}
	var script *redis.Cmd
	if _, oneNode := s.rdb.(*redis.Client); oneNode && s.durability.Replicas <= 0 {
		// One round trip: Redis runs a pipeline in order, so the tenant is
		// in the set before its install exists.
		var reg *redis.IntCmd
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			reg = p.SAdd(ctx, Tenants, k.Tenant())
			script = installCreateScript.EvalSha(ctx, p, keys, args...)
			return nil
		})
		if err := reg.Err(); err != nil {
			return "", "", wrap(err)
		}
		if redis.HasErrorPrefix(script.Err(), "NOSCRIPT") {
			script = installCreateScript.Run(ctx, s.rdb, keys, args...)
		}
	} else {
		// Another slot (another node on a Cluster), and with durability
		// the script's WAIT follows it on its own connection: one after
		// the other.
		if err := s.rdb.SAdd(ctx, Tenants, k.Tenant()).Err(); err != nil {
			return "", "", wrap(err)
		}
		script = s.runWrite(ctx, installCreateScript, keys, args...)
	}
	n, err := script.Int()
	if err != nil {
		return "", "", wrap(err)
	}
	if n != 1 {
		return "", "", fmt.Errorf("%w: install %s already existed", ErrUnavailable, installID)
	}
	return installID, userID, nil
}

// InstallUser returns the user an install points to and how long the
// install has left (0: it never expires), or ErrInstallNotFound (also for
// a malformed id or another tenant's install). A lookup is a use: an
// install due for renewal under e is renewed with its anonymous user (a
// second round trip), and one no link ever touched that has no TTL (made
// while expiry was off) takes e's.
func (s *Store) InstallUser(ctx context.Context, k *Keys, installID string, e Expiry) (string, time.Duration, error) {
	shard, err := ParseID(KindInstall, installID)
	if err != nil {
		return "", 0, ErrInstallNotFound
	}
	rctx, cancel := s.deadline(ctx)
	defer cancel()
	key := k.Install(shard, installID)
	var f *redis.SliceCmd
	var ttl *redis.DurationCmd
	_, err = s.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
		f = p.HMGet(rctx, key, "user", "anon_user", "anon_claim")
		ttl = p.PTTL(rctx, key)
		return nil
	})
	if err != nil {
		return "", 0, wrap(err)
	}
	v := f.Val()
	u, _ := v[0].(string)
	if u == "" {
		return "", 0, ErrInstallNotFound
	}
	ms := int64(ttl.Val() / time.Millisecond)
	if ttl.Val() < 0 {
		ms = int64(ttl.Val()) // -1 none, -2 gone
	}
	left := leftOf(ms)
	anon, _ := v[1].(string)
	if anon == "" {
		anon = AnonymousUserOf(installID) // not stored (earlier releases did)
	}
	untouched := left == 0 && e.TTL > 0 && u == anon && v[2] == nil
	if e.RenewDue(left) || untouched {
		left, err = s.setInstallExpiry(ctx, k, installID, u, e.TTL, untouched)
		if err != nil {
			return "", 0, err
		}
	}
	return u, left, nil
}

// installTenant tells why an install is missing from a tenant's keys:
// ErrInstallWrongTenant if it is an install of another tenant of the
// Tenants set (its hash exists in that tenant's keys: the id names its
// shard, so that is one EXISTS each, in one pipeline) or if an earlier
// release's global tenant entry names another tenant; else
// ErrInstallNotFound. Only a failed link asks: two round trips.
func (s *Store) installTenant(ctx context.Context, k *Keys, installID string) error {
	shard, err := ParseID(KindInstall, installID)
	if err != nil {
		return ErrInstallNotFound
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	var tenants *redis.StringSliceCmd
	var legacy *redis.StringCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		tenants = p.SMembers(ctx, Tenants)
		legacy = p.Get(ctx, InstallTenant(installID))
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return wrap(err)
	}
	if t := legacy.Val(); t != "" && t != k.Tenant() {
		return ErrInstallWrongTenant
	}
	var exists []*redis.IntCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, t := range tenants.Val() {
			if t != k.Tenant() {
				exists = append(exists, p.Exists(ctx, NewKeys(t).Install(shard, installID)))
			}
		}
		return nil
	})
	if err != nil {
		return wrap(err)
	}
	for _, e := range exists {
		if e.Val() == 1 {
			return ErrInstallWrongTenant
		}
	}
	return ErrInstallNotFound
}

// User is what the store knows of a user.
type User struct {
	ID         string
	ExternalID string // empty: anonymous
	Created    time.Time
	Installs   []string // installs that point to the user, sorted
}

// GetUser reads a user and the installs that point to it. The user's
// list of installs (its i: fields, and an old-schema installs set) may hold installs that have moved on (a link interrupted
// between its steps leaves them; see links.go): each is checked against
// the install itself, so only installs whose user is this one are listed.
// A malformed id or an unknown user is ErrUserNotFound.
func (s *Store) GetUser(ctx context.Context, k *Keys, userID string) (*User, error) {
	shard, err := ParseID(KindUser, userID)
	if err != nil {
		return nil, ErrUserNotFound
	}
	ctx, cancel := s.deadline(ctx)
	defer cancel()
	res, err := userGetScript.Run(ctx, s.rdb, []string{k.User(shard, userID), k.UserInstalls(shard, userID)}).StringSlice()
	if err != nil {
		return nil, wrap(err)
	}
	if len(res) < 2 {
		return nil, ErrUserNotFound
	}
	ms, _ := strconv.ParseInt(res[1], 10, 64)
	u := &User{ID: userID, ExternalID: res[0], Created: time.UnixMilli(ms).UTC(), Installs: []string{}}
	members := res[2:]
	if len(members) == 0 {
		return u, nil
	}
	cmds := make([]*redis.StringCmd, len(members))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, inst := range members {
			is, err := ParseID(KindInstall, inst)
			if err != nil {
				continue
			}
			cmds[i] = p.HGet(ctx, k.Install(is, inst), "user")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, wrap(err)
	}
	for i, c := range cmds {
		if c == nil {
			continue
		}
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return nil, wrap(err)
		}
		if c.Val() == userID {
			u.Installs = append(u.Installs, members[i])
		}
	}
	sort.Strings(u.Installs)
	return u, nil
}
