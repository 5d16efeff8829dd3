package peerauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/idlink/idlink/caddymodule/store"
	"github.com/idlink/idlink/testenv"
)

// The peer must refuse what idlink refuses, or the load harness would
// compare idlink with a service that checks less.
func TestPeerAuth(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs a redis-server")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	secret := []byte("peer-secret")
	addr := Start(t, Config{Secret: secret, RedisURL: r.URL(), Key: &key.PublicKey, Issuer: "idlink/t", Tenant: "t"})

	ask := func(h ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/auth", nil)
		for i := 0; i < len(h); i += 2 {
			req.Header.Set(h[i], h[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Platform-User-Id")
	}
	sig := func(ext string) string {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(ext))
		return hex.EncodeToString(m.Sum(nil))
	}
	tok := func(k *ecdsa.PrivateKey, iss, sub string, exp time.Time) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{
			Issuer: iss, Subject: sub, ExpiresAt: jwt.NewNumericDate(exp),
		}).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// HMAC: the user is created on first sight and the same afterwards.
	code, first := ask("X-External-Id", "alice", "X-External-Id-Signature", sig("alice"))
	if code != 200 || !strings.HasPrefix(first, "u_") {
		t.Fatalf("signed id: %d %q", code, first)
	}
	if code, again := ask("X-External-Id", "alice", "X-External-Id-Signature", sig("alice")); code != 200 || again != first {
		t.Fatalf("signed id again: %d %q, want %q", code, again, first)
	}
	if code, _ := ask("X-External-Id", "alice", "X-External-Id-Signature", sig("bob")); code != 401 {
		t.Fatalf("wrong signature: %d", code)
	}

	// Tokens: signature, issuer and expiry are checked.
	hour := time.Now().Add(time.Hour)
	if code, u := ask("Authorization", "Bearer "+tok(key, "idlink/t", "u_tok", hour)); code != 200 || u != "u_tok" {
		t.Fatalf("token: %d %q", code, u)
	}
	for name, bad := range map[string]string{
		"other key":    tok(other, "idlink/t", "u_tok", hour),
		"other issuer": tok(key, "someone", "u_tok", hour),
		"expired":      tok(key, "idlink/t", "u_tok", time.Now().Add(-time.Minute)),
	} {
		if code, _ := ask("Authorization", "Bearer "+bad); code != 401 {
			t.Errorf("token, %s: %d", name, code)
		}
	}

	// Sessions: only a live session identifies its user.
	keys := store.NewKeys("t")
	live, ended := store.NewID(store.KindSession, 3), store.NewID(store.KindSession, 3)
	rdb := r.Client()
	ctx := context.Background()
	rdb.HSet(ctx, keys.Session(3, live), "user", "u_live", "state", "live")
	rdb.HSet(ctx, keys.Session(3, ended), "user", "u_ended", "state", "ended")
	if code, u := ask("X-Session-Id", live); code != 200 || u != "u_live" {
		t.Fatalf("live session: %d %q", code, u)
	}
	if code, _ := ask("X-Session-Id", ended); code != 401 {
		t.Fatalf("ended session: %d", code)
	}
	if code, _ := ask("X-Session-Id", store.NewID(store.KindSession, 3)); code != 401 {
		t.Fatalf("unknown session: %d", code)
	}
	if code, _ := ask(); code != 401 {
		t.Fatalf("no credential: %d", code)
	}
}
