package caddymodule

import (
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestAPIKeyDigestPlaceholder: an api_key digest may come from {env.*};
// the key then works, and an unset variable fails provisioning instead of
// leaving an unusable key.
func TestAPIKeyDigestPlaceholder(t *testing.T) {
	t.Setenv("IDLINK_TEST_KEY_SHA256", strings.ToUpper(sha256Hex("k-from-env")))
	ten := &Tenant{APIKeys: []APIKey{{SHA256: "{env.IDLINK_TEST_KEY_SHA256}", Scopes: []string{ScopeUserLink}}}}
	if err := ten.APIKeys[0].provision(); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("X-Api-Key", "k-from-env")
	if e := ten.requireScope(r, ScopeUserLink); e != nil {
		t.Fatalf("key from env refused: %v", e)
	}
	// An unset variable disables the key: nothing matches it, not even
	// the key whose digest is all zeros or an empty key.
	ten.APIKeys = append(ten.APIKeys, APIKey{SHA256: "{env.IDLINK_TEST_KEY_UNSET}", Scopes: []string{ScopeUserRead}})
	if err := ten.APIKeys[1].provision(); err != nil || !ten.APIKeys[1].disabled {
		t.Fatalf("unset variable: %v, disabled %v", err, ten.APIKeys[1].disabled)
	}
	ten.logger = zap.NewNop()
	for _, key := range []string{"", "x", "k-from-env"} {
		r.Header.Set("X-Api-Key", key)
		if e := ten.requireScope(r, ScopeUserRead); e == nil || e.Status != 401 && key != "k-from-env" {
			t.Fatalf("disabled key let %q in: %v", key, e)
		}
	}
	bad := APIKey{SHA256: "{env.IDLINK_TEST_KEY_SHA256}x", Scopes: []string{ScopeUserLink}}
	if err := bad.provision(); err == nil {
		t.Fatal("a digest that is not hex after replacement was accepted")
	}
}
