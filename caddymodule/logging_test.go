package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestNoSecretsInLogs captures every log entry (debug and up) while bad,
// good and report-mode credentials go through, and checks that refusals
// never log at error level and that no entry holds a secret or signature.
func TestNoSecretsInLogs(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	app := newTestApp(t, testRedisURL(t), func(a *App) { a.logger = logger })
	h := newTestHandler(t, app, nil)

	goodSig := sign(testSecret, "alice")
	badSig := sign("attacker-secret-0123456789", "alice")
	reqs := []*http.Request{
		signedRequest("alice", "ios", testSecret),
		signedRequest("alice", "ios", "attacker-secret-0123456789"),
		signedRequest("alice", "web", "attacker-secret-0123456789"),
		signedRequest("alice", "nope", testSecret),
	}
	email := signedRequest("alice", "ios", testSecret)
	email.Header.Set(hdrUserEmail, "alice@example.com")
	email.Header.Set(hdrUserEmailSig, sign("attacker-secret-0123456789", "alice@example.com"))
	reqs = append(reqs, email, httptest.NewRequest(http.MethodGet, "/", nil))
	for _, r := range reqs {
		serve(h, r)
	}
	if logs.Len() == 0 {
		t.Fatal("nothing was logged: the test would prove nothing")
	}
	// Each entry as the JSON line Caddy would write.
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		if e.Level >= zapcore.ErrorLevel {
			t.Errorf("a credential problem logged at %s: %s", e.Level, e.Message)
		}
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		line := buf.String()
		for _, secret := range []string{testSecret, goodSig, badSig, "attacker-secret"} {
			if strings.Contains(strings.ToLower(line), strings.ToLower(secret)) {
				t.Errorf("log entry holds a secret or signature: %s", line)
			}
		}
	}
}
