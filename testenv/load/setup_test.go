package load

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/idlink/idlink/testenv"
)

// bench is the setup TestLoad and TestInstructions share: a Redis (nil:
// the embedded store), an ES256 signing key and the idlink tenant "bench"
// that accepts signed external ids, issues contact tokens with that key
// and keeps sessions.
type bench struct {
	redis     *testenv.Redis
	redisLine string
	keyFile   string
	publicKey *ecdsa.PublicKey
}

func newBench(t *testing.T) *bench {
	b := &bench{redisLine: "# embedded store"}
	if r := testenv.StartRedis(t); r != nil {
		b.redis, b.redisLine = r, "redis "+r.URL()
	}
	b.keyFile, b.publicKey = writeECKey(t, t.TempDir())
	return b
}

// caddyfile is the Caddyfile of the bench: the global options (extra goes
// first, e.g. "admin ..."), a plain reverse_proxy site on port plain, an
// idlink + reverse_proxy site on port guarded (with the API under
// /idlink), both to upstream, then the sites in more.
func (b *bench) caddyfile(extra string, plain, guarded int, upstream, more string) string {
	return fmt.Sprintf(`{
	%s
	idlink {
		%s
		redis_timeout 10s
		tenant bench {
			platform ios {
				secret %s
			}
			default_platform ios
			contact_token {
				sign_key k1 %s ES256
			}
			sessions {
				max 5
			}
		}
	}
}
http://127.0.0.1:%d {
	reverse_proxy %s
}
http://127.0.0.1:%d {
	idlink bench {
		api /idlink
	}
	reverse_proxy %s
}
%s`, extra, b.redisLine, secret, b.keyFile, plain, upstream, guarded, upstream, more)
}

// A path is one of idlink's warm paths: for each user, the headers of a
// request that identifies them that way.
type path struct {
	name  string
	creds [][][2]string
}

var pathNames = []string{"hmac", "token", "session"}

// paths logs each external id in through the idlink site at idlinkURL
// (POST /idlink/sessions with the signed id) and returns the three warm
// paths for these users: the signed external id, the contact token of the
// session (Authorization: Bearer) and the session id (X-Session-Id).
func paths(t *testing.T, client *http.Client, idlinkURL string, exts []string) []path {
	ps := []path{{name: "hmac"}, {name: "token"}, {name: "session"}}
	for _, ext := range exts {
		signed := [][2]string{{"X-External-Id", ext}, {"X-External-Id-Signature", sign(ext)}}
		req, _ := http.NewRequest(http.MethodPost, idlinkURL+"idlink/sessions", nil)
		for _, h := range signed {
			req.Header.Set(h[0], h[1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var login struct {
			SessionID    string `json:"session_id"`
			ContactToken string `json:"contact_token"`
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(body, &login); err != nil || resp.StatusCode != http.StatusCreated || login.ContactToken == "" {
			t.Fatalf("login: %d %s %v", resp.StatusCode, body, err)
		}
		ps[0].creds = append(ps[0].creds, signed)
		ps[1].creds = append(ps[1].creds, [][2]string{{"Authorization", "Bearer " + login.ContactToken}})
		ps[2].creds = append(ps[2].creds, [][2]string{{"X-Session-Id", login.SessionID}})
	}
	return ps
}

// writeECKey writes a new P-256 key (PKCS #8 PEM) for sign_key and returns
// the file and the public key.
func writeECKey(t *testing.T, dir string) (string, *ecdsa.PublicKey) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "sign.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, &k.PublicKey
}
