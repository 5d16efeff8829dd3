package events

import (
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
