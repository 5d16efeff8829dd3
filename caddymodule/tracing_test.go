package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/idlink/idlink/testenv"
)

// span is what OpenTelemetry's console exporter prints of a span.
type span struct {
	Name        string
	SpanContext struct{ SpanID string }
	Parent      struct{ SpanID string }
	Attributes  []struct {
		Key   string
		Value struct{ Value any }
	}
	Status struct{ Code string }
}

func (s span) attr(key string) string {
	for _, a := range s.Attributes {
		if a.Key == key {
			return fmt.Sprint(a.Value.Value)
		}
	}
	return ""
}

// TestTracingSpans: with Caddy's tracing directive on, idlink adds child
// spans for the authentication, each credential's verification and each
// Redis call, with tenant, source and outcome, and no credential, secret
// or client id anywhere in them. A real Caddy process exporting to its
// standard output (OTEL_TRACES_EXPORTER=console).
func TestTracingSpans(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	const ext = "tracing-ext-7f3a"
	t.Setenv("IDLINK_E2E_NEW", e2eNew)
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	redis := ""
	if u := testRedisURL(t); u != "" {
		redis = "redis " + u
	}
	port := testenv.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	p := testenv.StartCaddyProcess(t, fmt.Sprintf(`{
	idlink {
		%s
		tenant acme {
			platform ios {
				secret {env.IDLINK_E2E_NEW}
			}
			default_platform ios
		}
	}
}

http://127.0.0.1:%d {
	tracing {
		span idlink-e2e
	}
	idlink acme {
		api /idlink
	}
	respond "{idlink.user_id} {idlink.source}"
}
`, redis, port), base+"/")
	do := func(method, path string, h ...[2]string) string {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		for _, kv := range h {
			req.Header.Set(kv[0], kv[1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	sig := sign(e2eNew, ext)
	do("GET", "/", [2]string{"X-External-Id", ext}, [2]string{"X-External-Id-Signature", sig})
	do("GET", "/", [2]string{"X-External-Id", ext}, [2]string{"X-External-Id-Signature", strings.Repeat("0", 64)})
	var login struct {
		SessionID string `json:"session_id"`
	}
	json.Unmarshal([]byte(do("POST", "/idlink/sessions", [2]string{"X-External-Id", ext}, [2]string{"X-External-Id-Signature", sig})), &login)
	if login.SessionID == "" {
		t.Fatal("no session")
	}
	do("GET", "/", [2]string{"X-Session-Id", login.SessionID})
	p.Stop() // flushes the exporter

	logs := p.Logs()
	var all []span
	byID := map[string]span{}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.HasPrefix(line, `{"Name":`) {
			continue
		}
		var s span
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("span %q: %v", line, err)
		}
		all = append(all, s)
		byID[s.SpanContext.SpanID] = s
		for _, secret := range []string{sig, e2eNew, login.SessionID, ext} {
			if strings.Contains(line, secret) {
				t.Errorf("span %s holds %q: %s", s.Name, secret, line)
			}
		}
	}
	find := func(name, outcome string) span {
		t.Helper()
		for _, s := range all {
			if s.Name == name && s.attr("idlink.outcome") == outcome {
				return s
			}
		}
		t.Fatalf("no span %s with outcome %s among %d spans:\n%s", name, outcome, len(all), logs)
		return span{}
	}
	auth := find("idlink.authenticate", "verified")
	if auth.attr("idlink.tenant") != "acme" || auth.attr("idlink.source") != "hmac" {
		t.Errorf("authenticate span attributes %+v", auth.Attributes)
	}
	hmacSpan := find("idlink.verify.hmac", "verified")
	if hmacSpan.Parent.SpanID != auth.SpanContext.SpanID {
		t.Errorf("idlink.verify.hmac is not a child of idlink.authenticate")
	}
	if refused := find("idlink.authenticate", "invalid_signature"); refused.Status.Code != "Error" {
		t.Errorf("refused authentication status %q", refused.Status.Code)
	}
	find("idlink.verify.hmac", "invalid_signature")
	if s := find("idlink.authenticate", "verified"); s.attr("idlink.source") == "" {
		t.Error("no source")
	}
	find("idlink.verify.session", "verified")
	// Redis calls are children of the check that made them, named by
	// script, never by key.
	redisUnder := 0
	for _, s := range all {
		if strings.HasPrefix(s.Name, "redis ") && strings.HasPrefix(byID[s.Parent.SpanID].Name, "idlink.verify.") {
			redisUnder++
			if s.Name != "redis resolve" && !strings.HasPrefix(s.Name, "redis session_") {
				t.Errorf("redis span %q", s.Name)
			}
		}
	}
	if redisUnder == 0 {
		t.Errorf("no redis span under a verification span:\n%s", logs)
	}
}
