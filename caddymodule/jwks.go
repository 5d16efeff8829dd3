package caddymodule

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/idlink/idlink/caddymodule/internal/lograte"
)

func init() {
	apiRoutes["GET /jwks.json"] = func(a *API, w http.ResponseWriter, r *http.Request) {
		a.tenant.serveJWKS(w)
	}
}

// Algorithms idlink verifies and signs with. HMAC algorithms and "none" are
// never accepted: a contact token is always verified with a public key.
var asymmetricAlgs = map[string]bool{
	"ES256": true, "ES384": true, "ES512": true,
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"EdDSA": true,
}

// defaultAlgorithms is the allow-list when none is configured.
var defaultAlgorithms = []string{"ES256", "RS256", "EdDSA"}

// minRSABits is the smallest RSA modulus accepted for a key.
const minRSABits = 2048

// verifyKey is one public key and the single algorithm it may verify.
type verifyKey struct {
	kid string
	alg string
	pub crypto.PublicKey
	own bool // one of the tenant's own signing keys
}

// keyAlg returns the one algorithm a public key may be used with: the
// declared one (from config or the JWK's "alg") when it fits the key type,
// else the key type's own (EC curve → ESxxx, Ed25519 → EdDSA, RSA → RS256).
func keyAlg(pub crypto.PublicKey, declared string) (string, error) {
	var alg string
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return "", fmt.Errorf("RSA key of %d bits: at least %d are required", k.N.BitLen(), minRSABits)
		}
		switch declared {
		case "":
			return "RS256", nil
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return declared, nil
		}
		return "", fmt.Errorf("an RSA key cannot be used with %q", declared)
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			alg = "ES256"
		case elliptic.P384():
			alg = "ES384"
		case elliptic.P521():
			alg = "ES512"
		default:
			return "", errors.New("unsupported elliptic curve")
		}
	case ed25519.PublicKey:
		alg = "EdDSA"
	default:
		return "", fmt.Errorf("unsupported key type %T (use an EC P-256/P-384/P-521, Ed25519 or RSA key)", pub)
	}
	if declared != "" && declared != alg {
		return "", fmt.Errorf("a %s key cannot be used with %q", alg, declared)
	}
	return alg, nil
}

// publicOf returns the public half of a key (a private key read from a
// JWKS or a PEM file), or the key itself when it is public.
func publicOf(k any) crypto.PublicKey {
	if s, ok := k.(interface{ Public() crypto.PublicKey }); ok {
		return s.Public()
	}
	return k
}

// readPEMKey reads the first key of a PEM file: a public key (PKIX
// "PUBLIC KEY", PKCS#1 "RSA PUBLIC KEY", or a certificate) or a private
// key (PKCS#8, PKCS#1 or SEC 1).
func readPEMKey(path string) (any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for rest := raw; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%s: no PEM key found", path)
		}
		var k any
		switch block.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(block.Bytes); err == nil {
				k = c.PublicKey
			}
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue // e.g. "EC PARAMETERS" before the key
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", path, block.Type, err)
		}
		return k, nil
	}
}

// JWKS fetch counters, exported to Prometheus through the metrics
// registry of the Caddy context (App.registerMetrics) as
// idlink_jwks_fetches_total.
var jwksFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "idlink",
	Name:      "jwks_fetches_total",
	Help:      "JWKS fetches by tenant and result (success, failure).",
}, []string{"tenant", "result"})

// jwksSource is the tenant's remote JWKS: jwkset fetches it when the app
// starts and then every refresh interval, keeps the last good set when a
// fetch fails, and refetches on an unknown kid at most once per
// refetchMin. Everything it starts stops with the app's context.
type jwksSource struct {
	url        string
	tenant     string
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
}

func newJWKSSource(rawURL, tenant string, timeout, refresh, refetchMin time.Duration, logger *zap.Logger, now func() time.Time) (*jwksSource, error) {
	if _, err := outboundURL("jwks_url", rawURL, "keys fetched over it can be replaced in transit", logger); err != nil {
		return nil, err
	}
	return &jwksSource{
		url: rawURL, tenant: tenant, timeout: timeout, refresh: refresh, refetchMin: refetchMin,
		client: outboundClient(timeout),
		logger: logger, now: now, ready: make(chan struct{}),
	}, nil
}

// start fetches the set in the background and keeps refreshing it until
// ctx is done. Requests that need a key before the first fetch ends wait
// for it (within their own deadline).
func (s *jwksSource) start(ctx context.Context, wg *sync.WaitGroup) {
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
	src *jwksSource
}

func (o *observedStorage) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	err := o.Storage.KeyReplaceAll(ctx, given)
	if err == nil {
		o.src.fetchOK(len(given))
	}
	return err
}

func (s *jwksSource) fetchOK(keys int) {
	recovered := !s.healthy()
	s.okSeq.Store(s.seq.Add(1))
	s.okN.Add(1)
	jwksFetches.WithLabelValues(s.tenant, "success").Inc()
	if recovered {
		s.logger.Info("JWKS fetched", zap.String("jwks_url", s.url), zap.Int("keys", keys))
	} else if ce := s.logger.Check(zap.DebugLevel, "JWKS refreshed"); ce != nil {
		ce.Write(zap.String("jwks_url", s.url), zap.Int("keys", keys))
	}
}

func (s *jwksSource) fetchFailed(ctx context.Context, err error) {
	if ctx.Err() != nil && s.ctx != nil && s.ctx.Err() != nil {
		return // stopping: not a failure of the source
	}
	s.failSeq.Store(s.seq.Add(1))
	s.failN.Add(1)
	jwksFetches.WithLabelValues(s.tenant, "failure").Inc()
	// Fetches happen at most once per refresh or refetch interval; still,
	// log at most one warning a second.
	if s.failureLogs.Allow(s.now(), time.Second) {
		s.logger.Warn("JWKS fetch failed; keeping the last good keys",
			zap.String("jwks_url", s.url), zap.Error(err))
	}
}

// healthy reports whether the latest fetch succeeded.
func (s *jwksSource) healthy() bool {
	return s.okSeq.Load() > s.failSeq.Load()
}

// errKeyNotInSource is a kid the source does not have.
var errKeyNotInSource = errors.New("kid not in the JWKS")

// lookup returns the JWK of kid. A kid missing from the set triggers a
// refetch (rate-limited by jwkset); concurrent lookups of one kid share it.
func (s *jwksSource) lookup(ctx context.Context, kid string) (jwkset.JWK, error) {
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

// jwkVerifyKey turns a JWK of the set into a verifyKey, refusing keys
// that are not for signatures or whose type does not fit their "alg".
func jwkVerifyKey(kid string, jwk jwkset.JWK) (verifyKey, error) {
	m := jwk.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return verifyKey{}, errors.New("the key is not a signature key")
	}
	if m.KTY == jwkset.KtyOct {
		return verifyKey{}, errors.New("symmetric keys are never used")
	}
	pub := publicOf(jwk.Key())
	alg, err := keyAlg(pub, string(m.ALG))
	if err != nil {
		return verifyKey{}, err
	}
	return verifyKey{kid: kid, alg: alg, pub: pub}, nil
}

// signKey is one of the tenant's own signing keys.
type signKey struct {
	kid    string
	alg    string
	signer crypto.Signer
}

// buildJWKS renders the public JWKS of the tenant's signing keys.
func buildJWKS(keys []signKey) ([]byte, error) {
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.signer.Public(), jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: jwkset.ALG(k.alg), USE: jwkset.UseSig},
		})
		if err != nil {
			return nil, fmt.Errorf("sign_key %q: %v", k.kid, err)
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	return json.Marshal(set)
}

// serveJWKS answers GET /jwks.json: the public keys of the tenant's
// signing keys, the current one first, the previous ones kept for
// overlap while tokens they signed may still be live. A tenant that does
// not issue tokens publishes an empty set.
func (t *Tenant) serveJWKS(w http.ResponseWriter) {
	body := []byte(`{"keys":[]}`)
	if t.ContactToken != nil && t.ContactToken.jwks != nil {
		body = t.ContactToken.jwks
	}
	h := w.Header()
	h.Set(headerContentType, contentTypeJSON)
	h.Set(headerCacheControl, "public, max-age=300")
	h.Set(headerContentTypeOpts, contentTypeOptsNoSniff)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}
