package caddymodule

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/MicahParks/jwkset"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/idlink/idlink/caddymodule/internal/identity"
	"github.com/idlink/idlink/caddymodule/internal/verify"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "idlink",
		Usage: "<command> [flags]",
		Short: "Operator tools for idlink: signing keys, external-id signatures, API keys, rollout",
		Long: `
Operator tools for idlink. Run "caddy idlink <command> --help" for each:

  keygen   make a contact-token signing key (PEM) and print its public JWK
  sign     sign an external id with a platform secret (what an SDK sends)
  api-key  make a server API key and print the line for the Caddyfile
  rollout  per tenant and platform, how many requests enforce would refuse

Secrets are never taken as flag values (they would land in shell history):
they come from an environment variable, a file, or standard input.`,
		CobraFunc: func(cmd *cobra.Command) {
			for _, sub := range subcommands() {
				cmd.AddCommand(sub)
			}
		},
	})
	registerSubcommand(keygenCommand)
	registerSubcommand(signCommand)
	registerSubcommand(apiKeyCommand)
}

// idlinkSubcommands make the subcommands of `caddy idlink`. A file of
// another concern adds its own with registerSubcommand from its init().
var idlinkSubcommands []func() *cobra.Command

func registerSubcommand(f func() *cobra.Command) { idlinkSubcommands = append(idlinkSubcommands, f) }

// subcommands returns fresh subcommands, sorted by name.
func subcommands() []*cobra.Command {
	cmds := make([]*cobra.Command, 0, len(idlinkSubcommands))
	for _, f := range idlinkSubcommands {
		cmds = append(cmds, f())
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	return cmds
}

func keygenCommand() *cobra.Command {
	var kid, alg, out string
	var bits int
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen --kid <kid> [--alg ES256|RS256|EdDSA] --out <key.pem>",
		Short: "Make a contact-token signing key and print its public JWK",
		Long: `Makes a private key for idlink to sign contact tokens with, writes it as
PKCS#8 PEM (mode 0600, never over an existing file unless --force), and
prints its public JWK (what GET /jwks.json will publish) on standard output.
Then add the line it prints to the tenant's contact_token block:
sign_key <kid> <key.pem> <alg>, with the algorithm of the JWK (an RSA key
would otherwise sign RS256, whatever --alg was).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkKID(kid); err != nil {
				return fmt.Errorf("--kid: %v", err)
			}
			if out == "" {
				return errors.New("--out is required")
			}
			priv, err := generateKey(alg, bits)
			if err != nil {
				return err
			}
			der, err := x509.MarshalPKCS8PrivateKey(priv)
			if err != nil {
				return err
			}
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			f, err := os.OpenFile(out, flags, 0o600)
			if err != nil {
				return fmt.Errorf("writing the key: %v", err)
			}
			if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			jwk, err := jwkset.NewJWKFromKey(priv.Public(), jwkset.JWKOptions{
				Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg), USE: jwkset.UseSig},
			})
			if err != nil {
				return err
			}
			body, err := json.MarshalIndent(jwk.Marshal(), "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(body))
			// The line names the algorithm: the key type alone does not
			// (RSA signs RS256 unless told PS256).
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s; in the tenant's contact_token block:\n\tsign_key %s %s %s\n",
				out, kid, caddyfileToken(out), alg)
			return nil
		},
	}
	cmd.Flags().StringVar(&kid, "kid", "", "key id tokens will name (required)")
	cmd.Flags().StringVar(&alg, "alg", "ES256", "ES256, ES384, RS256, PS256 or EdDSA")
	cmd.Flags().StringVar(&out, "out", "", "file to write the private key to (required)")
	cmd.Flags().IntVar(&bits, "bits", 3072, "RSA modulus size (RS256/PS256 only)")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite --out if it exists")
	return cmd
}

// caddyfileToken writes s as one Caddyfile token: as it is when it can be,
// else in backquotes (or, holding a backquote, double quotes with escapes).
// Braces stay as they are: they would be placeholders either way.
func caddyfileToken(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\r\n\"'`#") {
		return s
	}
	if !strings.Contains(s, "`") {
		return "`" + s + "`"
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// generateKey makes a private key for alg.
func generateKey(alg string, bits int) (crypto.Signer, error) {
	switch alg {
	case "ES256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "EdDSA":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "RS256", "PS256":
		if bits < verify.MinRSABits {
			return nil, fmt.Errorf("--bits: at least %d", verify.MinRSABits)
		}
		return rsa.GenerateKey(rand.Reader, bits)
	}
	return nil, fmt.Errorf("--alg %q: use ES256, ES384, RS256, PS256 or EdDSA", alg)
}

func signCommand() *cobra.Command {
	var secretEnv, secretFile, email, phone string
	cmd := &cobra.Command{
		Use:   "sign (--secret-env <VAR> | --secret-file <path|->) [--email <email> | --phone <phone>] <external-id>",
		Short: "Sign an external id, or a user's email or phone, with a platform secret",
		Long: `Prints the hex HMAC-SHA256 of the external id under the platform secret:
the value an SDK sends as X-External-Id-Signature.

With --email (or --phone) it prints the signature of that email (phone)
for that external id, the value an SDK sends as X-User-Email-Signature
(X-User-Phone-Signature): the HMAC-SHA256 of "email", the external id and
the email, separated by newlines ("phone" likewise). A tenant with
signed_attributes plain takes the HMAC-SHA256 of the value alone: sign the
value as the argument instead.

The secret is read from an environment variable (--secret-env) or a file
(--secret-file; "-" reads standard input; one trailing newline is
dropped), never from a flag value, which would land in shell history.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if email != "" && phone != "" {
				return errors.New("give --email or --phone, not both: each has its own signature")
			}
			secret, err := readSecret(secretEnv, secretFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			// The id may be given as text or in its header encoding
			// (utf-8''...); what is signed is the text.
			ext, ok := verify.DecodeText(args[0], verify.MaxExternalIDLen)
			if !ok {
				return fmt.Errorf("the external id must be 1 to %d bytes of UTF-8 without control characters", verify.MaxExternalIDLen)
			}
			if enc := verify.EncodeText(ext); enc != ext {
				fmt.Fprintf(cmd.ErrOrStderr(), "a browser sends this id as X-External-Id: %s\n", enc)
			}
			msg := ext
			for _, f := range []struct {
				field, value string
				max          int
			}{{"email", email, verify.MaxEmailLen}, {"phone", phone, maxPhoneLen}} {
				if f.value == "" {
					continue
				}
				if !verify.HeaderValue(f.value, f.max) {
					return fmt.Errorf("the %s must be 1 to %d bytes of UTF-8 without control characters", f.field, f.max)
				}
				msg = identity.AttributeMessage(SignedAttributesBound, f.field, ext, f.value)
			}
			// The same computation the handler verifies against.
			var sum [sha256.Size]byte
			verify.NewHMACKey(secret).Sum(msg, &sum)
			fmt.Fprintln(cmd.OutOrStdout(), hex.EncodeToString(sum[:]))
			return nil
		},
	}
	cmd.Flags().StringVar(&secretEnv, "secret-env", "", "environment variable holding the secret")
	cmd.Flags().StringVar(&secretFile, "secret-file", "", `file holding the secret ("-": standard input)`)
	cmd.Flags().StringVar(&email, "email", "", "sign this email for the external id (X-User-Email-Signature)")
	cmd.Flags().StringVar(&phone, "phone", "", "sign this phone for the external id (X-User-Phone-Signature)")
	return cmd
}

// readSecret reads a secret from exactly one of an environment variable
// or a file (or stdin for "-").
func readSecret(env, file string, stdin io.Reader) ([]byte, error) {
	switch {
	case env != "" && file != "":
		return nil, errors.New("give --secret-env or --secret-file, not both")
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return nil, fmt.Errorf("environment variable %s is not set", env)
		}
		return []byte(v), nil
	case file != "":
		var raw []byte
		var err error
		if file == "-" {
			raw, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
		} else {
			raw, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, fmt.Errorf("reading the secret: %v", err)
		}
		raw = []byte(strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r"))
		if len(raw) == 0 {
			return nil, errors.New("the secret is empty")
		}
		return raw, nil
	}
	return nil, errors.New("give the secret with --secret-env <VAR> or --secret-file <path|->")
}

// apiKeyPrefix marks idlink API keys, so that secret scanners can find
// leaked ones.
const apiKeyPrefix = "idlk_"

func apiKeyCommand() *cobra.Command {
	var scopes []string
	cmd := &cobra.Command{
		Use:   "api-key --scope <scope>...",
		Short: "Make a server API key and print its SHA-256 for the Caddyfile",
		Long: `Makes a random server API key (256 bits) and prints it once, with the
api_key line for the tenant: the Caddyfile holds only the key's SHA-256.
Scopes: ` + scopeList() + ` (repeat --scope or separate with commas).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(scopes) == 0 {
				return errors.New("at least one --scope is required (" + scopeList() + ")")
			}
			for _, s := range scopes {
				if !knownScopes[s] {
					return fmt.Errorf("unknown scope %q (%s)", s, scopeList())
				}
			}
			var raw [32]byte
			if _, err := rand.Read(raw[:]); err != nil {
				return err
			}
			key := apiKeyPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
			sum := sha256.Sum256([]byte(key))
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "key:       %s\n", key)
			fmt.Fprintf(w, "sha256:    %s\n", hex.EncodeToString(sum[:]))
			fmt.Fprintf(w, "Caddyfile: api_key %s %s\n", hex.EncodeToString(sum[:]), strings.Join(scopes, " "))
			fmt.Fprintln(cmd.ErrOrStderr(), "The key is shown only now: give it to the backend that calls the API; keep only the sha256 in the config.")
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&scopes, "scope", nil, "scope the key grants (repeatable)")
	return cmd
}
