// Package peerauth is the peer the load harness measures idlink against: a
// small auth service behind Caddy's forward_auth directive, written the way
// people do it today. For each request Caddy forwards the client's headers;
// the service answers 200 with X-Platform-User-Id (which Caddy copies to
// the upstream request with copy_headers) or 401.
//
// It knows the same three credentials as idlink's warm paths:
//
//   - X-External-Id + X-External-Id-Signature: the HMAC-SHA256 of the id
//     (hex) under the platform secret; the user id is resolved, or created
//     on first sight, in Redis with one command (SET key id NX GET).
//   - Authorization: Bearer <JWT>: an ES256 token verified with golang-jwt
//     against the public key (issuer and expiry checked); the user id is
//     its "sub". No Redis round trip.
//   - X-Session-Id: the session hash idlink keeps in Redis, read with one
//     HMGET; the session must be live, its user is the user id.
//
// There is no in-process cache: every HMAC and session request is one Redis
// round trip, as in a typical hand-written auth service.
package peerauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/idlink/idlink/caddymodule/store"
)

// Config is what the service verifies against.
type Config struct {
	Secret   []byte           // the HMAC secret of the signed external ids
	RedisURL string           // e.g. "redis://127.0.0.1:6380/0"
	Key      *ecdsa.PublicKey // verifies the ES256 contact tokens
	Issuer   string           // the "iss" the tokens must carry
	Tenant   string           // the idlink tenant whose session hashes are read
}

type service struct {
	c      Config
	rdb    *redis.Client
	keys   *store.Keys
	parser *jwt.Parser
}

// Start runs the service on a free 127.0.0.1 port until the test ends and
// returns its address.
func Start(t testing.TB, c Config) string {
	t.Helper()
	opt, err := redis.ParseURL(c.RedisURL)
	if err != nil {
		t.Fatalf("peerauth: %v", err)
	}
	opt.PoolSize = 128
	s := &service{
		c:      c,
		rdb:    redis.NewClient(opt),
		keys:   store.NewKeys(c.Tenant),
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer(c.Issuer), jwt.WithExpirationRequired()),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("peerauth: %v", err)
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		s.rdb.Close()
	})
	return ln.Addr().String()
}

var errDenied = errors.New("denied")

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, err := s.identify(r)
	if err != nil {
		status := http.StatusUnauthorized
		if !errors.Is(err, errDenied) { // Redis failed
			status = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), status)
		return
	}
	w.Header().Set("X-Platform-User-Id", user)
	w.WriteHeader(http.StatusOK)
}

func (s *service) identify(r *http.Request) (string, error) {
	ctx := r.Context()
	if ext := r.Header.Get("X-External-Id"); ext != "" {
		return s.signed(ctx, ext, r.Header.Get("X-External-Id-Signature"))
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return s.token(tok)
	}
	if id := r.Header.Get("X-Session-Id"); id != "" {
		return s.session(ctx, id)
	}
	return "", errDenied
}

func (s *service) signed(ctx context.Context, ext, sig string) (string, error) {
	got, err := hex.DecodeString(sig)
	if err != nil {
		return "", errDenied
	}
	m := hmac.New(sha256.New, s.c.Secret)
	m.Write([]byte(ext))
	if !hmac.Equal(got, m.Sum(nil)) {
		return "", errDenied
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	id := "u_" + base64.RawURLEncoding.EncodeToString(raw[:])
	old, err := s.rdb.SetArgs(ctx, "peer:ext:"+ext, id, redis.SetArgs{Mode: "NX", Get: true}).Result()
	switch {
	case errors.Is(err, redis.Nil): // created now
		return id, nil
	case err != nil:
		return "", err
	}
	return old, nil
}

func (s *service) token(tok string) (string, error) {
	var claims jwt.RegisteredClaims
	if _, err := s.parser.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return s.c.Key, nil }); err != nil {
		return "", errors.Join(errDenied, err)
	}
	if claims.Subject == "" {
		return "", errDenied
	}
	return claims.Subject, nil
}

func (s *service) session(ctx context.Context, id string) (string, error) {
	shard, err := store.ParseID(store.KindSession, id)
	if err != nil {
		return "", errDenied
	}
	v, err := s.rdb.HMGet(ctx, s.keys.Session(shard, id), "user", "state").Result()
	if err != nil {
		return "", err
	}
	user, _ := v[0].(string)
	state, _ := v[1].(string)
	if user == "" || state != "live" {
		return "", errDenied
	}
	return user, nil
}
