package verify

import (
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
	"os"

	"github.com/MicahParks/jwkset"
)

// AsymmetricAlgs are the algorithms idlink verifies and signs with. HMAC algorithms and "none" are
// never accepted: a contact token is always verified with a public key.
var AsymmetricAlgs = map[string]bool{
	"ES256": true, "ES384": true, "ES512": true,
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"EdDSA": true,
}

// DefaultAlgorithms is the allow-list when none is configured.
var DefaultAlgorithms = []string{"ES256", "RS256", "EdDSA"}

// MinRSABits is the smallest RSA modulus accepted for a key.
const MinRSABits = 2048

// Key is one public key and the single algorithm it may verify.
type Key struct {
	KID string
	Alg string
	Pub crypto.PublicKey
	Own bool // one of the tenant's own signing keys
}

// KeyAlg returns the one algorithm a public key may be used with: the
// declared one (from config or the JWK's "alg") when it fits the key type,
// else the key type's own (EC curve → ESxxx, Ed25519 → EdDSA, RSA → RS256).
func KeyAlg(pub crypto.PublicKey, declared string) (string, error) {
	var alg string
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return "", fmt.Errorf("RSA key of %d bits: at least %d are required", k.N.BitLen(), MinRSABits)
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

// PublicOf returns the public half of a key (a private key read from a
// JWKS or a PEM file), or the key itself when it is public.
func PublicOf(k any) crypto.PublicKey {
	if s, ok := k.(interface{ Public() crypto.PublicKey }); ok {
		return s.Public()
	}
	return k
}

// ReadPEMKey reads the first key of a PEM file: a public key (PKIX
// "PUBLIC KEY", PKCS#1 "RSA PUBLIC KEY", or a certificate) or a private
// key (PKCS#8, PKCS#1 or SEC 1).
func ReadPEMKey(path string) (any, error) {
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

// PrivateSigner returns a private key read from a PEM file as a signer.
func PrivateSigner(k any) (crypto.Signer, bool) {
	switch p := k.(type) {
	case *rsa.PrivateKey:
		return p, true
	case *ecdsa.PrivateKey:
		return p, true
	case ed25519.PrivateKey:
		return p, true
	}
	return nil, false
}

// jwkVerifyKey turns a JWK of the set into a Key, refusing keys
// that are not for signatures or whose type does not fit their "alg".
func jwkKey(kid string, jwk jwkset.JWK) (Key, error) {
	m := jwk.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return Key{}, errors.New("the key is not a signature key")
	}
	if m.KTY == jwkset.KtyOct {
		return Key{}, errors.New("symmetric keys are never used")
	}
	pub := PublicOf(jwk.Key())
	alg, err := KeyAlg(pub, string(m.ALG))
	if err != nil {
		return Key{}, err
	}
	return Key{KID: kid, Alg: alg, Pub: pub}, nil
}

// SignKey is one of the tenant's own signing keys.
type SignKey struct {
	KID    string
	Alg    string
	Signer crypto.Signer
}

// BuildJWKS renders the public JWKS of the tenant's signing keys.
func BuildJWKS(keys []SignKey) ([]byte, error) {
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.Signer.Public(), jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: jwkset.ALG(k.Alg), USE: jwkset.UseSig},
		})
		if err != nil {
			return nil, fmt.Errorf("sign_key %q: %v", k.KID, err)
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	return json.Marshal(set)
}
