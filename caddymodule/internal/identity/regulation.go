package identity

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/idlink/idlink/caddymodule/internal/apierr"
	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// regulation is a tenant's regulation of failed verifications: clients
// (by IP address, IPv6 by /64) that fail more than the limit within the
// window are banned, and a session whose requests do is ended. Failures
// are counted in Redis (every instance agrees), in one round trip on the
// failure path only; a ban is announced on the invalidation channel and
// held in memory, so a banned client is refused without a Redis call and
// the success path makes none.
type regulation struct {
	d      *Domain
	policy *store.FailurePolicy // nil: not regulated
	bans   *cache.TTL[string, int64]
}

func (g *regulation) init(d *Domain) {
	g.d, g.policy = d, d.cfg.Regulation
	if g.policy == nil {
		return
	}
	g.bans = cache.New[string, int64](d.cfg.CacheSize, g.policy.Ban, d.cfg.Now)
	d.OnInvalidate(store.InvalidateBan, g.heard, nil)
}

// counts reports whether a refusal is a failed verification: a credential
// that did not verify, or ids that name nothing (guessing). A request
// without credentials, a malformed one, an ended session (the app was told
// why) and an outage are not.
func counts(e *apierr.Error) bool {
	switch e.Code {
	case apierr.CodeInvalidSignature, apierr.CodeInvalidToken, apierr.CodeIdentityMismatch,
		apierr.CodeUnknownSession, apierr.CodeUnknownInstall:
		return true
	}
	return false
}

// Banned is the refusal of a client that is banned, as this instance knows
// (no Redis call), or nil. subject is ClientSubject's.
func (d *Domain) Banned(subject string) *apierr.Error {
	g := &d.regulation
	if g.policy == nil || subject == "" {
		return nil
	}
	until, ok := g.bans.Get(subject)
	if !ok {
		return nil
	}
	left := time.Duration(until-d.cfg.Now().UnixMilli()) * time.Millisecond
	if left <= 0 {
		return nil
	}
	return apierr.TooManyFailures(left)
}

// Failed counts a refusal against the client and the session the request
// carried, if it is a failed verification (counts), and returns what to
// answer: the refusal itself, or 429 too_many_failures once the client is
// banned. The session, if it exceeded the limit, has ended meanwhile
// (reason too_many_failures, with its event). A store failure refuses
// nothing more: the refusal is answered as is.
func (d *Domain) Failed(ctx context.Context, subject, sessionID string, e *apierr.Error) *apierr.Error {
	g := &d.regulation
	if g.policy == nil || subject == "" || !counts(e) {
		return e
	}
	f, err := d.cfg.Store.RecordFailure(context.WithoutCancel(ctx), d.keys, *g.policy, d.sessions.policy, subject, sessionID, d.cfg.Now())
	if err != nil {
		d.LogStoreError(err)
		return e
	}
	if f.SessionEnded {
		d.sessions.drop(sessionID)
		d.logger.Warn("session ended: too many failed verifications", zap.String("tenant", d.cfg.Tenant))
	}
	if f.BannedFor > 0 {
		g.bans.AddFor(subject, d.cfg.Now().Add(f.BannedFor).UnixMilli(), f.BannedFor)
		return apierr.TooManyFailures(f.BannedFor)
	}
	return e
}

// heard records a ban announced by any instance: "<subject> <until ms>".
func (g *regulation) heard(key string) {
	subject, until, ok := strings.Cut(key, " ")
	ms, err := strconv.ParseInt(until, 10, 64)
	if !ok || err != nil {
		return
	}
	if left := time.Duration(ms-g.d.cfg.Now().UnixMilli()) * time.Millisecond; left > 0 {
		g.bans.AddFor(subject, ms, left)
	}
}

// ClientSubject is the subject failures of a client are counted under:
// "ip:" and its address, an IPv6 address by its /64 (one subscriber's
// whole network, as ISPs assign them); "" for what is not an address.
func ClientSubject(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + a.String()
}
