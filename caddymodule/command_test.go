package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/idlink/idlink/testenv"

	"github.com/idlink/idlink/caddymodule/internal/verify"
)

// runIdlink runs `caddy idlink <args>` in process.
func runIdlink(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := &cobra.Command{Use: "idlink", SilenceUsage: true, SilenceErrors: true}
	for _, c := range subcommands() {
		root.AddCommand(c)
	}
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func TestKeygen(t *testing.T) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		t.Run(alg, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "k.pem")
			args := []string{"keygen", "--kid", "k-" + alg, "--alg", alg, "--out", out}
			if alg == "RS256" {
				args = append(args, "--bits", "2048") // keep the test fast
			}
			stdout, stderr, err := runIdlink(t, "", args...)
			if err != nil {
				t.Fatal(err)
			}
			var jwk jwkset.JWKMarshal
			if err := json.Unmarshal([]byte(stdout), &jwk); err != nil {
				t.Fatalf("stdout is not a JWK: %v\n%s", err, stdout)
			}
			if jwk.KID != "k-"+alg || string(jwk.ALG) != alg || jwk.USE != "sig" || jwk.D != "" {
				t.Fatalf("jwk %+v", jwk)
			}
			if !strings.Contains(stderr, "sign_key k-"+alg+" "+out) {
				t.Fatalf("stderr %q", stderr)
			}
			st, _ := os.Stat(out)
			if st.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v", st.Mode())
			}
			// The key loads as a sign_key and its tokens verify.
			a := startTestApp(t, nil, map[string]*Tenant{"acme": {
				ContactToken: &ContactToken{SignKeys: []TokenKey{{KID: "k-" + alg, File: out}}},
			}})
			tn := a.Tenants["acme"]
			ctx := context.Background()
			uid, _ := resolveExternal(tn, "alice")
			tok, _, err := tn.ContactToken.v.Issue(uid, "", "alice", nil, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tn.ContactToken.v.Verify(ctx, tok); err != nil {
				t.Fatal(err)
			}
			// The printed JWK verifies the token.
			j, err := jwkset.NewJWKFromMarshal(jwk, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return j.Key(), nil }, jwt.WithValidMethods([]string{alg})); err != nil {
				t.Fatalf("printed JWK does not verify: %v", err)
			}
			// Never over an existing file.
			if _, _, err := runIdlink(t, "", args...); err == nil {
				t.Fatal("overwrote an existing key")
			}
		})
	}
	for _, bad := range [][]string{
		{"keygen", "--kid", "k", "--alg", "HS256", "--out", filepath.Join(t.TempDir(), "x.pem")},
		{"keygen", "--kid", "k", "--alg", "none", "--out", filepath.Join(t.TempDir(), "x.pem")},
		{"keygen", "--alg", "ES256", "--out", filepath.Join(t.TempDir(), "x.pem")},
		{"keygen", "--kid", "k"},
	} {
		if _, _, err := runIdlink(t, "", bad...); err == nil {
			t.Errorf("%v succeeded", bad)
		}
	}
}

func TestSignCommand(t *testing.T) {
	t.Setenv("IDLINK_TEST_SECRET", "secret-0123456789abcdef")
	want := sign("secret-0123456789abcdef", "alice") + "\n"
	if out, _, err := runIdlink(t, "", "sign", "--secret-env", "IDLINK_TEST_SECRET", "alice"); err != nil || out != want {
		t.Fatalf("env: %q %v", out, err)
	}
	file := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(file, []byte("secret-0123456789abcdef\n"), 0o600)
	if out, _, err := runIdlink(t, "", "sign", "--secret-file", file, "alice"); err != nil || out != want {
		t.Fatalf("file: %q %v", out, err)
	}
	if out, _, err := runIdlink(t, "secret-0123456789abcdef\n", "sign", "--secret-file", "-", "alice"); err != nil || out != want {
		t.Fatalf("stdin: %q %v", out, err)
	}
	// --email and --phone print the signatures bound to the external id
	// and the field (the handler's side: TestAttackSignedEmailAndPhoneAreBound).
	for _, f := range []string{"email", "phone"} {
		want := boundSig("secret-0123456789abcdef", f, "alice", "alice@example.com") + "\n"
		if out, _, err := runIdlink(t, "", "sign", "--secret-env", "IDLINK_TEST_SECRET", "--"+f, "alice@example.com", "alice"); err != nil || out != want {
			t.Fatalf("--%s: %q %v, want %q", f, out, err, want)
		}
	}
	// A non-ASCII id, as text or in its header encoding: the signature of
	// the text, and the encoding a browser must send.
	for _, arg := range []string{"zoë", "utf-8''zo%C3%AB"} {
		out, errOut, err := runIdlink(t, "", "sign", "--secret-env", "IDLINK_TEST_SECRET", arg)
		if err != nil || out != sign("secret-0123456789abcdef", "zoë")+"\n" || !strings.Contains(errOut, "X-External-Id: utf-8''zo%C3%AB") {
			t.Fatalf("sign %s: %q %q %v", arg, out, errOut, err)
		}
	}
	if _, _, err := runIdlink(t, "", "sign", "--secret-env", "IDLINK_TEST_SECRET", "--email", "a@b", "--phone", "1", "alice"); err == nil {
		t.Fatal("--email with --phone: no error")
	}
	// The signature is what the handler accepts.
	keys := []*verify.HMACKey{verify.NewHMACKey([]byte("secret-0123456789abcdef"))}
	if !verify.HMAC(keys, "alice", strings.TrimSpace(want)) {
		t.Fatal("the handler would refuse it")
	}
	for _, bad := range [][]string{
		{"sign", "alice"},
		{"sign", "--secret-env", "IDLINK_TEST_UNSET_VAR", "alice"},
		{"sign", "--secret-env", "IDLINK_TEST_SECRET", "--secret-file", file, "alice"},
		{"sign", "--secret-env", "IDLINK_TEST_SECRET", "a\nb"},
		{"sign", "--secret", "inline", "alice"},
	} {
		if _, _, err := runIdlink(t, "", bad...); err == nil {
			t.Errorf("%v succeeded", bad)
		}
	}
}

func TestAPIKeyCommand(t *testing.T) {
	out, stderr, err := runIdlink(t, "", "api-key", "--scope", "user.link", "--scope", "user.read")
	if err != nil {
		t.Fatal(err)
	}
	var key, digest, line string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch k {
		case "key":
			key = strings.TrimSpace(v)
		case "sha256":
			digest = strings.TrimSpace(v)
		case "Caddyfile":
			line = strings.TrimSpace(v)
		}
	}
	sum := sha256.Sum256([]byte(key))
	if !strings.HasPrefix(key, apiKeyPrefix) || len(key) < 40 || digest != hex.EncodeToString(sum[:]) {
		t.Fatalf("key %q digest %q", key, digest)
	}
	if line != "api_key "+digest+" user.link user.read" || !strings.Contains(stderr, "shown only now") {
		t.Fatalf("line %q", line)
	}
	k := APIKey{SHA256: digest, Scopes: []string{"user.link", "user.read"}}
	if err := k.provision(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runIdlink(t, "", "api-key", "--scope", "admin"); err == nil {
		t.Fatal("unknown scope accepted")
	}
	if _, _, err := runIdlink(t, "", "api-key"); err == nil {
		t.Fatal("no scope accepted")
	}
	out2, _, _ := runIdlink(t, "", "api-key", "--scope", "user.read")
	if strings.Contains(out2, key) {
		t.Fatal("keys repeat")
	}
}

// TestKeygenSignKeyLine: the sign_key line keygen prints, pasted into a
// Caddyfile, makes idlink sign with the key and the algorithm of the JWK it
// printed, and publish that JWK, for every algorithm (PS256 shares its key
// type with RS256, the default for an RSA key).
func TestKeygenSignKeyLine(t *testing.T) {
	redisLine := ""
	if u := testRedisURL(t); u != "" {
		redisLine = "redis " + u
	}
	t.Setenv("IDLINK_KEYGEN_SECRET", testSecret)
	for _, alg := range []string{"PS256", "RS256", "ES256", "ES384", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "sign.pem")
			kid := "kg-" + strings.ToLower(alg)
			stdout, stderr, err := runIdlink(t, "", "keygen", "--kid", kid, "--alg", alg, "--out", out, "--bits", "2048")
			if err != nil {
				t.Fatal(err)
			}
			var printed jwkset.JWKMarshal
			if err := json.Unmarshal([]byte(stdout), &printed); err != nil {
				t.Fatal(err)
			}
			line := ""
			for _, l := range strings.Split(stderr, "\n") {
				if l = strings.TrimSpace(l); strings.HasPrefix(l, "sign_key ") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no sign_key line in %q", stderr)
			}
			port := testenv.FreePort(t)
			testenv.StartCaddy(t, fmt.Sprintf(`{
	idlink {
		%s
		tenant acme {
			platform ios {
				secret {env.IDLINK_KEYGEN_SECRET}
			}
			default_platform ios
			contact_token {
				%s
			}
		}
	}
}

http://127.0.0.1:%d {
	handle_path /idlink/* {
		idlink_api acme
	}
	respond 404
}
`, redisLine, line, port))
			base := fmt.Sprintf("http://127.0.0.1:%d", port)

			req, _ := http.NewRequest("POST", base+"/idlink/sessions", nil)
			req.Header.Set("X-External-Id", "alice")
			req.Header.Set("X-External-Id-Signature", sign(testSecret, "alice"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var login startSessionResponse
			if err := json.Unmarshal(body, &login); resp.StatusCode != 201 || err != nil || login.ContactToken == "" {
				t.Fatalf("POST /sessions: %d %s", resp.StatusCode, body)
			}
			tok, _, err := jwt.NewParser().ParseUnverified(login.ContactToken, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			if tok.Header["alg"] != alg || tok.Header["kid"] != kid {
				t.Fatalf("%s: the token's header is %v, keygen printed alg %s", line, tok.Header, printed.ALG)
			}

			resp, err = http.Get(base + "/idlink/jwks.json")
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			var set jwkset.JWKSMarshal
			if err := json.Unmarshal(body, &set); err != nil || len(set.Keys) != 1 {
				t.Fatalf("jwks.json: %d %s", resp.StatusCode, body)
			}
			pub := set.Keys[0]
			if pub.KID != printed.KID || pub.ALG != printed.ALG || pub.KTY != printed.KTY || pub.N != printed.N || pub.X != printed.X || pub.CRV != printed.CRV {
				t.Fatalf("/jwks.json publishes %+v, keygen printed %+v", pub, printed)
			}
			j, err := jwkset.NewJWKFromMarshal(pub, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := jwt.Parse(login.ContactToken, func(*jwt.Token) (any, error) { return j.Key(), nil },
				jwt.WithValidMethods([]string{alg}), jwt.WithoutClaimsValidation()); err != nil {
				t.Fatalf("the published key does not verify the token as %s: %v", alg, err)
			}
		})
	}
}
