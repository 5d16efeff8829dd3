package identity

import (
	"errors"

	"github.com/idlink/idlink/caddymodule/internal/cache"
	"github.com/idlink/idlink/caddymodule/store"
)

// Cache names, the values of idlink_cache_requests_total's cache label.
const (
	CacheUsers           = "users"            // verified external id -> user
	CacheUnverifiedUsers = "unverified_users" // report/off-mode external id -> expiring user
	CacheInstalls        = "installs"         // install id -> user
	CacheSessions        = "sessions"         // session id -> what this instance knows of it
	CacheContactTokens   = "contact_tokens"   // verified contact tokens
	CacheSSO             = "sso"              // token-info answers
)

// CacheStats calls f with the lookups of each of the domain's caches (the
// contact-token and SSO ones only when the tenant accepts them). It reads
// atomic counters: a scrape costs the requests nothing.
func (d *Domain) CacheStats(f func(name string, s cache.Stats)) {
	f(CacheUsers, d.users.verified.Stats())
	f(CacheUnverifiedUsers, d.users.unverified.Stats())
	f(CacheInstalls, d.installs.users.Stats())
	f(CacheSessions, d.sessions.cache.Stats())
	if d.cfg.Tokens != nil {
		f(CacheContactTokens, d.cfg.Tokens.CacheStats())
	}
	if d.cfg.SSO != nil {
		f(CacheSSO, d.cfg.SSO.CacheStats())
	}
}

// PlatformOf is the platform a request's credentials count under: the
// one named (or the default) when the tenant has it, "" otherwise.
func (d *Domain) PlatformOf(c *Credentials) string {
	name := c.Platform
	if name == "" {
		name = d.cfg.DefaultPlatform
	}
	if d.cfg.Platforms[name] == nil {
		return ""
	}
	return name
}

// Session events (idlink_sessions_total's event label).
const (
	EventStarted = "started"
	EventEnded   = "ended"
)

// Link outcomes (idlink_links_total's outcome label).
const (
	LinkCreated    = "created"     // the external id was new
	LinkMerged     = "merged"      // the install moved from its anonymous user to the external id's
	LinkLinked     = "linked"      // any other link that changed something
	LinkRepeat     = "repeat"      // a repeat of the install's last link
	LinkNotFound   = "not_found"   // unknown install (or another tenant's)
	LinkInProgress = "in_progress" // another link of the install was under way
	LinkError      = "error"       // the store failed
)

// Observer is told of the domain's session and link events, for metrics.
// Either field may be nil.
type Observer struct {
	// Session: event EventStarted with reason "verified" or
	// "unverified", or EventEnded with the store's reason (evicted,
	// logged_out, revoked), n sessions at once.
	Session func(event, reason string, n int)
	// Link: the outcome of one link of an install.
	Link func(outcome string)
}

func (d *Domain) observeSession(event, reason string, n int) {
	if f := d.cfg.Observe.Session; f != nil && n > 0 {
		f(event, reason, n)
	}
}

func (d *Domain) observeLink(res store.LinkResult, err error) {
	f := d.cfg.Observe.Link
	if f == nil {
		return
	}
	switch {
	case errors.Is(err, store.ErrInstallNotFound), errors.Is(err, store.ErrInstallWrongTenant):
		f(LinkNotFound)
	case errors.Is(err, store.ErrLinkInProgress):
		f(LinkInProgress)
	case err != nil:
		f(LinkError)
	case res.Repeat:
		f(LinkRepeat)
	case res.Created:
		f(LinkCreated)
	case res.MergedFrom != "":
		f(LinkMerged)
	default:
		f(LinkLinked)
	}
}
