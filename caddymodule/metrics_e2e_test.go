package caddymodule

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/idlink/idlink/testenv"
)

// scrape reads a Prometheus text endpoint.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// metricValue is the value of the series of family with exactly labels
// (counter or untyped; a histogram's sample count), 0 if absent.
func metricValue(mf map[string]*dto.MetricFamily, family string, labels map[string]string) float64 {
	f := mf[family]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// metricsCaddyfile has one tenant "rollout" (ios enforce, web report) in
// front of upstream on port, and Caddy's metrics on metricsPort.
func metricsCaddyfile(redisURL string, port, metricsPort int, upstream string) string {
	return fmt.Sprintf(`{
	idlink {
		redis %s
		tenant rollout {
			platform ios {
				secret %s
				mode enforce
			}
			platform web {
				secret %s
				mode report
			}
		}
	}
}

http://127.0.0.1:%d {
	idlink rollout
	reverse_proxy %s
}

http://127.0.0.1:%d {
	metrics
}
`, redisURL, testSecret, testSecret, port, upstream, metricsPort)
}

// TestMetricsRolloutE2E: known traffic through a real Caddy shows in its
// metrics endpoint exactly: report-mode requests with a bad signature as
// would_refuse, verified ones as verified, an enforce refusal under its
// code, and an unknown platform under "unknown" (refused: its mode is the
// tenant's strictest).
func TestMetricsRolloutE2E(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs redis-server")
	}
	up := testenv.StartUpstream(t)
	port, mport := testenv.FreePort(t), testenv.FreePort(t)
	testenv.StartCaddy(t, metricsCaddyfile(r.URL(), port, mport, up.Addr()))
	e := &e2e{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), upstream: up}
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)

	for range 3 { // report mode, bad signature: passes, unverified
		st, _, got := e.do("GET", "/", [][2]string{{"X-Platform", "web"}, {"X-External-Id", "alice"}, {"X-External-Id-Signature", strings.Repeat("0", 64)}})
		if st != 200 || got.Get("X-Identity-Verified") != "false" {
			t.Fatalf("report mode, bad signature: %d, verified %q", st, got.Get("X-Identity-Verified"))
		}
	}
	for range 2 {
		if st, _, _ := e.do("GET", "/", signed("bob", testSecret, [2]string{"X-Platform", "web"})); st != 200 {
			t.Fatalf("verified web request: %d", st)
		}
	}
	if st, _, _ := e.do("GET", "/", signed("carol", testSecret, [2]string{"X-Platform", "ios"})); st != 200 {
		t.Fatalf("verified ios request: %d", st)
	}
	if st, _, _ := e.do("GET", "/", [][2]string{{"X-Platform", "ios"}, {"X-External-Id", "carol"}, {"X-External-Id-Signature", "bad"}}); st != 401 {
		t.Fatalf("enforce, bad signature: %d", st)
	}
	if st, _, _ := e.do("GET", "/", [][2]string{{"X-Platform", "tv"}, {"X-External-Id", "dave"}, {"X-External-Id-Signature", "bad"}}); st != 401 {
		t.Fatalf("unknown platform, bad signature: %d", st)
	}
	if st, _, _ := e.do("GET", "/", nil); st != 200 {
		t.Fatalf("anonymous: %d", st)
	}

	mf := scrape(t, metricsURL)
	req := func(platform, source, outcome string) map[string]string {
		return map[string]string{"tenant": "rollout", "platform": platform, "source": source, "outcome": outcome}
	}
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{req("web", "hmac", "would_refuse"), 3},
		{req("web", "hmac", "verified"), 2},
		{req("web", "hmac", "unverified"), 0},
		{req("ios", "hmac", "verified"), 1},
		{req("ios", "hmac", "invalid_signature"), 1},
		{req("unknown", "hmac", "invalid_signature"), 1},
		{req("unknown", "anonymous", "unverified"), 1},
	} {
		if got := metricValue(mf, "idlink_requests_total", c.labels); got != c.want {
			t.Errorf("idlink_requests_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	total := 0.0
	for _, m := range mf["idlink_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "tenant" && l.GetValue() == "rollout" {
				total += m.GetCounter().GetValue()
			}
		}
	}
	if total != 9 {
		t.Errorf("requests of the tenant counted: %v, want 9", total)
	}
	// bob's second request found his user in the cache.
	if got := metricValue(mf, "idlink_cache_requests_total", map[string]string{"tenant": "rollout", "cache": "users", "result": "hit"}); got < 1 {
		t.Errorf("users cache hits: %v, want at least 1", got)
	}
	if got := metricValue(mf, "idlink_store_duration_seconds", map[string]string{"op": "resolve"}); got < 1 {
		t.Errorf("resolve calls measured: %v, want at least 1", got)
	}
}

// TestRequestCountersAllocateNothing: counting a request, once its series
// is resolved, allocates nothing; an unknown platform, source or outcome
// falls into the bounded fallbacks.
func TestRequestCountersAllocateNothing(t *testing.T) {
	rc := newRequestCounters("alloc-test", []string{"web", "ios"})
	rc.inc("web", SourceHMAC, outcomeWouldRefuse)
	if n := testing.AllocsPerRun(1000, func() { rc.inc("web", SourceHMAC, outcomeWouldRefuse) }); n != 0 {
		t.Fatalf("a warm count allocates %v times", n)
	}
	rc.inc("made-up", "made-up", "made-up")
	if got := testutil.ToFloat64(requestsTotal.WithLabelValues("alloc-test", platformUnknown, SourceAnonymous, outcomeOther)); got != 1 {
		t.Fatalf("fallback series = %v, want 1", got)
	}
	if got := testutil.ToFloat64(requestsTotal.WithLabelValues("alloc-test", "web", SourceHMAC, outcomeWouldRefuse)); got != 1002 {
		t.Fatalf("web/hmac/would_refuse = %v, want 1002", got)
	}
}

// TestRolloutCommand: `caddy idlink rollout` reads a real Caddy's metrics
// after known traffic: the report-mode platform with bad signatures is
// "check clients", the one whose requests all verified "safe to enforce".
func TestRolloutCommand(t *testing.T) {
	r := testenv.StartRedis(t)
	if r == nil {
		t.Skip("needs redis-server")
	}
	up := testenv.StartUpstream(t)
	port, mport := testenv.FreePort(t), testenv.FreePort(t)
	testenv.StartCaddy(t, strings.ReplaceAll(metricsCaddyfile(r.URL(), port, mport, up.Addr()), "rollout", "rollcmd"))
	e := &e2e{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), upstream: up}
	for range 3 {
		e.do("GET", "/", [][2]string{{"X-Platform", "web"}, {"X-External-Id", "alice"}, {"X-External-Id-Signature", "00"}})
	}
	e.do("GET", "/", signed("bob", testSecret, [2]string{"X-Platform", "web"}))
	for range 2 {
		e.do("GET", "/", signed("carol", testSecret, [2]string{"X-Platform", "ios"}))
	}
	out, _, err := runIdlink(t, "", "rollout", "--metrics-url", fmt.Sprintf("http://127.0.0.1:%d/metrics", mport))
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "rollcmd" {
			lines[f[1]] = strings.Join(f[2:], " ")
		}
	}
	if want := "4 0 3 75.00% check clients"; lines["web"] != want {
		t.Errorf("web: %q, want %q\n%s", lines["web"], want, out)
	}
	if want := "2 0 0 0.00% safe to enforce"; lines["ios"] != want {
		t.Errorf("ios: %q, want %q\n%s", lines["ios"], want, out)
	}
	if _, _, err := runIdlink(t, "", "rollout", "--metrics-url", up.URL()); err == nil {
		t.Error("a URL without idlink's metrics gave no error")
	}
}
