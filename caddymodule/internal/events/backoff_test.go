package events

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for _, tt := range []struct {
		attempt int
		want    time.Duration
	}{{0, 30 * time.Second}, {1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute}, {8, 64 * time.Minute}, {9, 2 * time.Hour}, {10, 2 * time.Hour}, {1000, 2 * time.Hour}} {
		if got := BackoffDelay(30*time.Second, 2*time.Hour, tt.attempt); got != tt.want {
			t.Errorf("BackoffDelay(%d) = %v, want %v", tt.attempt, got, tt.want)
		}
	}
	for _, r := range []float64{0, 0.5, 0.999} {
		got := Jittered(time.Minute, r)
		if got < 30*time.Second || got >= time.Minute {
			t.Errorf("Jittered(1m, %v) = %v", r, got)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"120", 2 * time.Minute},
		{" 0 ", 0},
		{"", 0},
		{"-5", 0},
		{"+5", 0},
		{"1.5", 0},
		{"soon", 0},
		{"99999999999999999999999", maxRetryAfter * time.Second},
		{now.Add(7 * time.Minute).Format(http.TimeFormat), 7 * time.Minute},
		{"Thu, 03 Dec 2026 12:00:30 GMT", 30 * time.Second},
		{"Thursday, 03-Dec-26 12:01:00 GMT", time.Minute}, // RFC 850, which HTTP dates allow
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	} {
		if got := RetryAfter(tt.v, now); got != tt.want {
			t.Errorf("RetryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}
