package events

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/idlink/idlink/webhook"
)

// One attempt: the signed request in the webhook's format, and what the
// receiver's answer means.

// Delivery results, the values of the result label.
const (
	resultDelivered = "delivered" // 2xx
	resultRejected  = "rejected"  // another status
	resultError     = "error"     // no answer: connection, TLS, timeout
)

// outcome is what one attempt came to.
type outcome struct {
	result  string
	lastErr string // for a failure: a short description, without the URL (it may hold a token)
	status  int    // the receiver's status; 0: no answer
	// retryAfter is the wait a 429 or 503 answer asked for with Retry-After
	// (0: none).
	retryAfter time.Duration
}

// post sends one attempt and classifies its outcome.
func (o *Outbox) post(ctx context.Context, eventID string, body []byte) outcome {
	w := o.wh
	ctx, cancel := context.WithTimeout(ctx, w.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return outcome{result: resultError, lastErr: "building the request failed"}
	}
	now := o.cfg.Now()
	if err := sign(req.Header, w, eventID, now, body); err != nil {
		return outcome{result: resultError, lastErr: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "idlink-webhook/1")
	resp, err := o.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
			return outcome{result: resultError, lastErr: "no answer within " + w.Timeout.String()}
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return outcome{result: resultError, lastErr: truncate(err.Error(), errorBodyBytes)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBodyBytes))
		return outcome{result: resultDelivered, status: resp.StatusCode}
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyBytes))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBodyBytes))
	msg := "HTTP " + strconv.Itoa(resp.StatusCode)
	if s := printable(string(snippet)); s != "" {
		msg += ": " + s
	}
	out := outcome{result: resultRejected, lastErr: msg, status: resp.StatusCode}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		out.retryAfter = RetryAfter(resp.Header.Get("Retry-After"), now)
	}
	return out
}

// sign sets the event id and signature headers of an attempt at now, in
// the webhook's format.
func sign(h http.Header, w *Webhook, eventID string, now time.Time, body []byte) error {
	if w.Format == FormatIdlink {
		sig, err := webhook.Sign(w.Secrets, now, body)
		if err != nil {
			return err
		}
		h.Set(webhook.EventIDHeader, eventID)
		h.Set(webhook.SignatureHeader, sig)
		return nil
	}
	sig, err := webhook.SignStandard(w.Keys, eventID, now, body)
	if err != nil {
		return err
	}
	h.Set(webhook.IDHeader, eventID)
	h.Set(webhook.TimestampHeader, strconv.FormatInt(now.Unix(), 10))
	h.Set(webhook.StandardSignatureHeader, sig)
	return nil
}

// maxRetryAfter bounds the seconds RetryAfter reads (the caller caps the
// wait at the back-off maximum anyway).
const maxRetryAfter = 1 << 30

// RetryAfter is the wait a Retry-After value asks for at now: decimal
// seconds, or an HTTP date (then the time until it, 0 if past). Anything
// else is 0: no wait asked for.
func RetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if decimal := strings.Trim(v, "0123456789") == ""; decimal {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > maxRetryAfter {
			n = maxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// printable keeps a receiver's text fit for a log line and a JSON field.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
