package events

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestGauges: the gauges report what the upkeep last measured; the age of
// the oldest pending event only for an outbox with a webhook.
func TestGauges(t *testing.T) {
	now := time.Now()
	withHook := New(Config{Webhook: &Webhook{}, Now: time.Now})
	withHook.oldest.Store(now.Add(-time.Minute).UnixMilli())
	withHook.deadLetters.Store(3)
	withHook.length.Store(7)
	withHook.gone.Store(true)
	plain := New(Config{Now: time.Now})
	plain.length.Store(2)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Gauges(func() map[string]*Outbox { return map[string]*Outbox{"a": withHook, "b": plain} }, func() time.Time { return now }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"idlink_webhook_oldest_pending_seconds/a": 60,
		"idlink_webhook_dead_letters/a":           3, "idlink_events_outbox_entries/a": 7,
		"idlink_webhook_dead_letters/b": 0, "idlink_events_outbox_entries/b": 2,
		"idlink_webhook_disabled/a": 1,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g < v-1 || g > v+1 {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	for _, g := range []string{"idlink_webhook_oldest_pending_seconds/b", "idlink_webhook_disabled/b"} {
		if _, ok := got[g]; ok {
			t.Errorf("an outbox without a webhook reports %s", g)
		}
	}
}
