// Command idlink-demo runs the browser demo of Caddyfile.example: Caddy with
// idlink (the same modules as ./cmd/caddy) and, beside it, a demo customer
// backend that signs an external id after its own (demo) login, so that the
// HMAC secret never reaches the page.
//
//	go run ./cmd/idlink-demo
//
// then open http://www.demo.localhost:8081 (README, "Try it in a browser").
// It is a demo: the backend accepts any user name with the password "demo".
// The product binary, ./cmd/caddy, signs nothing.
package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log"
	"net"
	"net/http"
	"os"
	"regexp"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// idlink.
	_ "github.com/idlink/idlink"
)

// demoPassword is the only password the demo backend accepts.
const demoPassword = "demo"

// userName is what the demo backend accepts as a user name (its external id).
var userName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,31}$`)

func main() {
	// The secret is shared by the backend (which signs) and idlink (which
	// verifies, through {env.IDLINK_DEMO_SECRET} in the Caddyfile).
	secret := os.Getenv("IDLINK_DEMO_SECRET")
	if secret == "" {
		secret = randomHex(32)
		os.Setenv("IDLINK_DEMO_SECRET", secret)
	}
	addr := "127.0.0.1:" + envOr("IDLINK_DEMO_BACKEND_PORT", "9090")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("idlink-demo: the demo backend cannot listen on %s: %v", addr, err)
	}
	srv := &http.Server{Handler: backend([]byte(secret)), ReadHeaderTimeout: 5 * time.Second}
	go func() { log.Fatal(srv.Serve(ln)) }()
	log.Printf("idlink-demo: demo backend on %s; open http://www.demo.localhost:%s", addr, envOr("IDLINK_DEMO_PORT", "8081"))

	os.Args = []string{os.Args[0], "run", "--config", envOr("IDLINK_DEMO_CADDYFILE", "Caddyfile.example"), "--adapter", "caddyfile"}
	caddycmd.Main()
}

// backend is the demo customer backend. POST /backend/login with
// {"name","password"} answers {"external_id","signature"}: the signed
// external id the page then presents to idlink's POST /idlink/sessions.
func backend(secret []byte) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /backend/login", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Name     string `json:"name"`
			Password string `json:"password"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&in); err != nil {
			reply(w, http.StatusBadRequest, map[string]string{"error": "a JSON body {\"name\",\"password\"} is required"})
			return
		}
		if !userName.MatchString(in.Name) {
			reply(w, http.StatusBadRequest, map[string]string{"error": "a user name is 1-32 of a-z 0-9 . _ -"})
			return
		}
		if !hmac.Equal([]byte(in.Password), []byte(demoPassword)) {
			reply(w, http.StatusUnauthorized, map[string]string{"error": "wrong password (the demo's is \"demo\")"})
			return
		}
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(in.Name))
		reply(w, http.StatusOK, map[string]string{
			"external_id": in.Name,
			"signature":   hex.EncodeToString(mac.Sum(nil)),
		})
	})
	return mux
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		log.Fatal(err)
	}
	return hex.EncodeToString(b)
}
