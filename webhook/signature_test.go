package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	body = []byte(`{"id":"0a-1718000000000-0","type":"user.created","tenant":"acme","occurred_at":"2024-06-10T06:13:20.000Z","data":{"user_id":"u_0a"}}`)
	now  = time.Unix(1718000000, 0)
)

// reference computes the signature independently of the package code.
func reference(secret string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(strconv.FormatInt(ts, 10) + "." + string(body)))
	return hex.EncodeToString(m.Sum(nil))
}

func TestSign(t *testing.T) {
	h, err := Sign([]string{"old-secret", "new-secret"}, now, body)
	if err != nil {
		t.Fatal(err)
	}
	want := "t=1718000000,v1=" + reference("old-secret", now.Unix(), body) + ",v1=" + reference("new-secret", now.Unix(), body)
	if h != want {
		t.Fatalf("Sign = %q\nwant %q", h, want)
	}
	for _, secrets := range [][]string{nil, {}, {"a", ""}} {
		if _, err := Sign(secrets, now, body); !errors.Is(err, ErrNoSecrets) {
			t.Errorf("Sign(%q) err = %v, want ErrNoSecrets", secrets, err)
		}
	}
}

func TestVerify(t *testing.T) {
	good := reference("s1", now.Unix(), body)
	other := reference("zz", now.Unix(), body)
	ts := "t=" + strconv.FormatInt(now.Unix(), 10)
	tests := []struct {
		name    string
		header  string
		body    []byte
		secrets []string
		tol     time.Duration
		now     time.Time
		want    error
	}{
		{"valid", ts + ",v1=" + good, body, []string{"s1"}, time.Minute, now, nil},
		{"valid upper-case hex", ts + ",v1=" + strings.ToUpper(good), body, []string{"s1"}, time.Minute, now, nil},
		{"valid any of several v1", ts + ",v1=" + other + ",v1=" + good, body, []string{"s1"}, time.Minute, now, nil},
		{"valid any of several secrets", ts + ",v1=" + good, body, []string{"new", "s1"}, time.Minute, now, nil},
		{"valid items reordered, spaces", " v1=" + good + " , " + ts + " ", body, []string{"s1"}, time.Minute, now, nil},
		{"unknown scheme ignored", ts + ",v0=abc,v1=" + good + ",v2=zz", body, []string{"s1"}, time.Minute, now, nil},
		{"edge of tolerance, late", ts + ",v1=" + good, body, []string{"s1"}, time.Minute, now.Add(time.Minute), nil},
		{"edge of tolerance, early", ts + ",v1=" + good, body, []string{"s1"}, time.Minute, now.Add(-time.Minute), nil},
		{"default tolerance", ts + ",v1=" + good, body, []string{"s1"}, 0, now.Add(4 * time.Minute), nil},

		{"too old", ts + ",v1=" + good, body, []string{"s1"}, time.Minute, now.Add(time.Minute + time.Second), ErrOutOfRange},
		{"from the future", ts + ",v1=" + good, body, []string{"s1"}, time.Minute, now.Add(-time.Minute - time.Second), ErrOutOfRange},
		{"default tolerance exceeded", ts + ",v1=" + good, body, []string{"s1"}, -1, now.Add(6 * time.Minute), ErrOutOfRange},
		{"wrong secret", ts + ",v1=" + good, body, []string{"s2"}, time.Minute, now, ErrNoMatch},
		{"body changed", ts + ",v1=" + good, append([]byte(nil), append(body, ' ')...), []string{"s1"}, time.Minute, now, ErrNoMatch},
		{"timestamp changed", "t=" + strconv.FormatInt(now.Unix()+1, 10) + ",v1=" + good, body, []string{"s1"}, time.Minute, now, ErrNoMatch},
		{"signature of empty secret prefix", ts + ",v1=" + reference("", now.Unix(), body), body, []string{"s1"}, time.Minute, now, ErrNoMatch},

		{"no secrets", ts + ",v1=" + good, body, nil, time.Minute, now, ErrNoSecrets},
		{"empty secret", ts + ",v1=" + good, body, []string{"s1", ""}, time.Minute, now, ErrNoSecrets},
		{"empty header", "", body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"no t", "v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"no v1", ts, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"only other schemes", ts + ",v0=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"two t", ts + "," + ts + ",v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"negative t", "t=-1,v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"t with sign", "t=+1718000000,v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"t overflow", "t=99999999999999999999999,v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"t not a number", "t=abc,v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"empty t", "t=,v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"short v1", ts + ",v1=" + good[:63], body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"long v1", ts + ",v1=" + good + "0", body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"non-hex v1", ts + ",v1=" + good[:63] + "g", body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"item without =", ts + ",v1=" + good + ",junk", body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"semicolons", ts + ";v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"too many items", ts + strings.Repeat(",v1="+other, maxSignatures) + ",v1=" + good, body, []string{"s1"}, time.Minute, now, ErrMalformed},
		{"over-long header", ts + ",v1=" + good + ",x=" + strings.Repeat("a", maxHeaderLen), body, []string{"s1"}, time.Minute, now, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.header, tt.body, tt.secrets, tt.tol, tt.now)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	h, err := Sign([]string{"old", "new"}, now, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, secrets := range [][]string{{"old"}, {"new"}, {"x", "new"}} {
		if err := Verify(h, body, secrets, time.Minute, now); err != nil {
			t.Errorf("Verify with %q: %v", secrets, err)
		}
	}
	if err := Verify(h, body, []string{"x"}, time.Minute, now); !errors.Is(err, ErrNoMatch) {
		t.Errorf("Verify with a foreign secret: %v", err)
	}
}

// FuzzVerify feeds arbitrary headers and bodies: Verify must never panic,
// and must accept only what Sign made with the secret.
func FuzzVerify(f *testing.F) {
	h, _ := Sign([]string{"s1"}, now, body)
	f.Add(h, body)
	f.Add("t=1718000000,v1="+strings.Repeat("0", 64), body)
	f.Add("t=,v1=", []byte{})
	f.Add(",,,=,=", []byte("x"))
	f.Add("t=1,t=2", []byte("x"))
	f.Add("v1="+strings.Repeat("G", 64)+",t=1", []byte("x"))
	f.Fuzz(func(t *testing.T, header string, b []byte) {
		err := Verify(header, b, []string{"s1"}, time.Hour, now)
		if err == nil {
			signed, _ := Sign([]string{"s1"}, now, b)
			ts, _, _ := strings.Cut(signed, ",")
			if !strings.Contains(header, ts[2:]) {
				t.Fatalf("accepted %q for a body it was not signed for", header)
			}
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNoMatch) && !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
