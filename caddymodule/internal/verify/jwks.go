package verify

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
)

// JWKSSource is a remote JWKS: jwkset fetches it when it
// starts and then every refresh interval, keeps the last good set when a
// fetch fails, and refetches on an unknown kid at most once per
// refetchMin. Everything it starts stops with the app's context.
type JWKSSource struct {
	url        string
	timeout    time.Duration
	refresh    time.Duration
	refetchMin time.Duration
	client     *http.Client
	logger     *zap.Logger
	now        func() time.Time

	ready   chan struct{} // closed once the storage exists (first fetch attempted)
	ctx     context.Context
	storage jwkset.Storage
	flight  singleflight.Group

	seq            atomic.Int64 // numbers fetch outcomes in order
	okSeq, failSeq atomic.Int64 // the number of the last successful / failed fetch
	okN, failN     atomic.Uint64
	startOnce      sync.Once
	failureLogs    lograte.Limiter
	observe        func(ok bool)
}

// JWKSConfig configures a JWKSSource.
type JWKSConfig struct {
	URL        string        // checked by the caller
	Timeout    time.Duration // one fetch
	Refresh    time.Duration // the periodic fetch
	RefetchMin time.Duration // the least time between two fetches an unknown kid causes
	Client     *http.Client  // makes the fetches (it should not follow redirects)
	Logger     *zap.Logger
	Now        func() time.Time
	// Observe, if set, hears the outcome of each fetch.
	Observe func(ok bool)
}

// NewJWKSSource returns the source of cfg; Start starts it.
func NewJWKSSource(cfg JWKSConfig) *JWKSSource {
	s := &JWKSSource{
		url: cfg.URL, timeout: cfg.Timeout, refresh: cfg.Refresh, refetchMin: cfg.RefetchMin,
		client: cfg.Client, logger: cfg.Logger, now: cfg.Now, observe: cfg.Observe, ready: make(chan struct{}),
	}
	if s.observe == nil {
		s.observe = func(bool) {}
	}
	return s
}

// Start fetches the set in the background and keeps refreshing it until
// ctx is done. Requests that need a key before the first fetch ends wait
// for it (within their own deadline).
func (s *JWKSSource) Start(ctx context.Context, wg *sync.WaitGroup) {
	s.startOnce.Do(func() {
		s.ctx = ctx
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(s.ready)
			mem := &observedStorage{Storage: jwkset.NewMemoryStorage(), src: s}
			hs, err := jwkset.NewStorageFromHTTP(s.url, jwkset.HTTPClientStorageOptions{
				Client:                    s.client,
				Ctx:                       ctx,
				HTTPTimeout:               s.timeout,
				NoErrorReturnFirstHTTPReq: true, // start anyway; lookups answer 503 until a fetch succeeds
				RefreshErrorHandler:       s.fetchFailed,
				RefreshInterval:           s.refresh,
				Storage:                   mem,
			})
			if err != nil { // only a malformed URL, which provision rejected
				s.fetchFailed(ctx, err)
				return
			}
			s.storage, err = jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
				HTTPURLs:          map[string]jwkset.Storage{s.url: hs},
				RateLimitWaitMax:  s.timeout,
				RefreshUnknownKID: rate.NewLimiter(rate.Every(s.refetchMin), 1),
			})
			if err != nil {
				s.fetchFailed(ctx, err)
			}
		}()
	})
}

// observedStorage records each successful refresh (jwkset replaces the
// whole set only after fetching and parsing it completely).
type observedStorage struct {
	jwkset.Storage
	src *JWKSSource
}

func (o *observedStorage) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	err := o.Storage.KeyReplaceAll(ctx, given)
	if err == nil {
		o.src.fetchOK(len(given))
	}
	return err
}

func (s *JWKSSource) fetchOK(keys int) {
	recovered := !s.Healthy()
	s.okSeq.Store(s.seq.Add(1))
	s.okN.Add(1)
	s.observe(true)
	if recovered {
		s.logger.Info("JWKS fetched", zap.String("jwks_url", s.url), zap.Int("keys", keys))
	} else if ce := s.logger.Check(zap.DebugLevel, "JWKS refreshed"); ce != nil {
		ce.Write(zap.String("jwks_url", s.url), zap.Int("keys", keys))
	}
}

func (s *JWKSSource) fetchFailed(ctx context.Context, err error) {
	if ctx.Err() != nil && s.ctx != nil && s.ctx.Err() != nil {
		return // stopping: not a failure of the source
	}
	s.failSeq.Store(s.seq.Add(1))
	s.failN.Add(1)
	s.observe(false)
	// Fetches happen at most once per refresh or refetch interval; still,
	// log at most one warning a second.
	if s.failureLogs.Allow(s.now(), time.Second) {
		s.logger.Warn("JWKS fetch failed; keeping the last good keys",
			zap.String("jwks_url", s.url), zap.Error(err))
	}
}

// Healthy reports whether the latest fetch succeeded.
func (s *JWKSSource) Healthy() bool {
	return s.okSeq.Load() > s.failSeq.Load()
}

// errKeyNotInSource is a kid the source does not have.
var errKeyNotInSource = errors.New("kid not in the JWKS")

// lookup returns the JWK of kid. A kid missing from the set triggers a
// refetch (rate-limited by jwkset); concurrent lookups of one kid share it.
func (s *JWKSSource) lookup(ctx context.Context, kid string) (jwkset.JWK, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return jwkset.JWK{}, ctx.Err()
	}
	if s.storage == nil {
		return jwkset.JWK{}, errKeyNotInSource
	}
	ch := s.flight.DoChan(kid, func() (any, error) {
		// Shared by every waiter: bounded by the source's own timeout and
		// lifetime, not by the first caller's request.
		fctx, cancel := context.WithTimeout(s.ctx, s.timeout)
		defer cancel()
		jwk, err := s.storage.KeyRead(fctx, kid)
		if err != nil {
			return jwkset.JWK{}, errKeyNotInSource
		}
		return jwk, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return jwkset.JWK{}, res.Err
		}
		return res.Val.(jwkset.JWK), nil
	case <-ctx.Done():
		return jwkset.JWK{}, ctx.Err()
	}
}
