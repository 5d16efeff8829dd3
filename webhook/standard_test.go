package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The reference test vector of the Standard Webhooks libraries.
const (
	vectorSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTS     = 1614265330
	vectorBody   = `{"test": 2432232314}`
	vectorSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

// Secrets of the tests: 32 random-looking bytes each.
var (
	stdOld = SecretPrefix + base64.StdEncoding.EncodeToString([]byte("old-standard-secret-0123456789ab"))
	stdNew = SecretPrefix + base64.StdEncoding.EncodeToString([]byte("new-standard-secret-0123456789ab"))
)

const eventID = "0a-1718000000000-0"

func mustKey(t testing.TB, s string) []byte {
	t.Helper()
	k, err := DecodeSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// stdReference computes one v1 signature independently of the package code.
func stdReference(secret, id string, ts int64, body []byte) string {
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s.%d.%s", id, ts, body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func stdHeader(id, ts, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set(IDHeader, id)
	}
	if ts != "" {
		h.Set(TimestampHeader, ts)
	}
	if sig != "" {
		h.Set(StandardSignatureHeader, sig)
	}
	return h
}

func TestStandardVector(t *testing.T) {
	sig, err := SignStandard([][]byte{mustKey(t, vectorSecret)}, vectorID, time.Unix(vectorTS, 0), []byte(vectorBody))
	if err != nil || sig != vectorSig {
		t.Fatalf("SignStandard = %q, %v; want %q", sig, err, vectorSig)
	}
	h := stdHeader(vectorID, strconv.Itoa(vectorTS), vectorSig)
	if err := VerifyStandard(h, []byte(vectorBody), []string{vectorSecret}, time.Minute, time.Unix(vectorTS+30, 0)); err != nil {
		t.Fatalf("VerifyStandard of the vector: %v", err)
	}
}

func TestSignStandard(t *testing.T) {
	sig, err := SignStandard([][]byte{mustKey(t, stdOld), mustKey(t, stdNew)}, eventID, now, body)
	if err != nil {
		t.Fatal(err)
	}
	want := stdReference(stdOld, eventID, now.Unix(), body) + " " + stdReference(stdNew, eventID, now.Unix(), body)
	if sig != want {
		t.Fatalf("SignStandard = %q\nwant %q", sig, want)
	}
	for _, keys := range [][][]byte{nil, {}, {[]byte("k"), {}}} {
		if _, err := SignStandard(keys, eventID, now, body); !errors.Is(err, ErrNoSecrets) {
			t.Errorf("SignStandard(%q) err = %v, want ErrNoSecrets", keys, err)
		}
	}
	for _, id := range []string{"", "a.b", "a b", "a\nb", strings.Repeat("a", maxIDLen+1)} {
		if _, err := SignStandard([][]byte{[]byte("k")}, id, now, body); !errors.Is(err, ErrMalformed) {
			t.Errorf("SignStandard(id %q) err = %v, want ErrMalformed", id, err)
		}
	}
}

func TestDecodeSecret(t *testing.T) {
	if k, err := DecodeSecret(vectorSecret); err != nil || len(k) != 24 {
		t.Errorf("DecodeSecret(vector) = %d bytes, %v", len(k), err)
	}
	for _, s := range []string{"", "whsec_", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"} {
		if _, err := DecodeSecret(s); !errors.Is(err, ErrBadSecret) {
			t.Errorf("DecodeSecret(%q) err = %v, want ErrBadSecret", s, err)
		}
	}
}

func TestVerifyStandard(t *testing.T) {
	good := stdReference(stdNew, eventID, now.Unix(), body)
	other := stdReference(stdOld, eventID, now.Unix(), body)
	ts := strconv.FormatInt(now.Unix(), 10)
	secrets := []string{stdNew}
	tests := []struct {
		name    string
		h       http.Header
		body    []byte
		secrets []string
		tol     time.Duration
		now     time.Time
		want    error
	}{
		{"valid", stdHeader(eventID, ts, good), body, secrets, time.Minute, now, nil},
		{"valid any of several signatures", stdHeader(eventID, ts, other+" "+good), body, secrets, time.Minute, now, nil},
		{"valid any of several secrets", stdHeader(eventID, ts, good), body, []string{stdOld, stdNew}, time.Minute, now, nil},
		{"valid extra spaces", stdHeader(eventID, ts, "  "+other+"   "+good+" "), body, secrets, time.Minute, now, nil},
		{"valid over two header lines", http.Header{"Webhook-Id": {eventID}, "Webhook-Timestamp": {ts}, "Webhook-Signature": {other, good}}, body, secrets, time.Minute, now, nil},
		{"other versions ignored", stdHeader(eventID, ts, "v1a,c2lnbmF0dXJl v2,eHg= "+good), body, secrets, time.Minute, now, nil},
		{"edge of tolerance, late", stdHeader(eventID, ts, good), body, secrets, time.Minute, now.Add(time.Minute), nil},
		{"edge of tolerance, early", stdHeader(eventID, ts, good), body, secrets, time.Minute, now.Add(-time.Minute), nil},
		{"default tolerance", stdHeader(eventID, ts, good), body, secrets, 0, now.Add(4 * time.Minute), nil},

		{"too old", stdHeader(eventID, ts, good), body, secrets, time.Minute, now.Add(time.Minute + time.Second), ErrOutOfRange},
		{"from the future", stdHeader(eventID, ts, good), body, secrets, time.Minute, now.Add(-time.Minute - time.Second), ErrOutOfRange},
		{"default tolerance exceeded", stdHeader(eventID, ts, good), body, secrets, -1, now.Add(6 * time.Minute), ErrOutOfRange},
		{"wrong secret", stdHeader(eventID, ts, good), body, []string{stdOld}, time.Minute, now, ErrNoMatch},
		{"body changed", stdHeader(eventID, ts, good), append([]byte(nil), append(body, ' ')...), secrets, time.Minute, now, ErrNoMatch},
		{"id changed", stdHeader("0a-1718000000000-1", ts, good), body, secrets, time.Minute, now, ErrNoMatch},
		{"timestamp changed", stdHeader(eventID, strconv.FormatInt(now.Unix()+1, 10), good), body, secrets, time.Minute, now, ErrNoMatch},
		{"idlink format signature", stdHeader(eventID, ts, "v1,"+base64.StdEncoding.EncodeToString(mustDecodeHex(reference(stdNew, now.Unix(), body)))), body, secrets, time.Minute, now, ErrNoMatch},

		{"no secrets", stdHeader(eventID, ts, good), body, nil, time.Minute, now, ErrNoSecrets},
		{"empty secret", stdHeader(eventID, ts, good), body, []string{stdNew, ""}, time.Minute, now, ErrNoSecrets},
		{"secret not whsec", stdHeader(eventID, ts, good), body, []string{"plain-secret-0123456789"}, time.Minute, now, ErrBadSecret},
		{"no id", stdHeader("", ts, good), body, secrets, time.Minute, now, ErrMalformed},
		{"id with a dot", stdHeader("0a.1718000000", ts, good), body, secrets, time.Minute, now, ErrMalformed},
		{"no timestamp", stdHeader(eventID, "", good), body, secrets, time.Minute, now, ErrMalformed},
		{"timestamp not decimal", stdHeader(eventID, "1718000000.5", good), body, secrets, time.Minute, now, ErrMalformed},
		{"negative timestamp", stdHeader(eventID, "-1", good), body, secrets, time.Minute, now, ErrMalformed},
		{"timestamp overflow", stdHeader(eventID, "99999999999999999999", good), body, secrets, time.Minute, now, ErrMalformed},
		{"no signature", stdHeader(eventID, ts, ""), body, secrets, time.Minute, now, ErrMalformed},
		{"only other versions", stdHeader(eventID, ts, "v1a,"+good[3:]), body, secrets, time.Minute, now, ErrMalformed},
		{"item without comma", stdHeader(eventID, ts, good+" v1"), body, secrets, time.Minute, now, ErrMalformed},
		{"v1 not base64", stdHeader(eventID, ts, "v1,!!!! "+good), body, secrets, time.Minute, now, ErrMalformed},
		{"v1 short", stdHeader(eventID, ts, "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 31))+" "+good), body, secrets, time.Minute, now, ErrMalformed},
		{"v1 as hex", stdHeader(eventID, ts, "v1="+reference(stdNew, now.Unix(), body)), body, secrets, time.Minute, now, ErrMalformed},
		{"too many items", stdHeader(eventID, ts, strings.Repeat(other+" ", maxSignatures)+good), body, secrets, time.Minute, now, ErrMalformed},
		{"over-long header", stdHeader(eventID, ts, good+" x,"+strings.Repeat("a", maxHeaderLen)), body, secrets, time.Minute, now, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyStandard(tt.h, tt.body, tt.secrets, tt.tol, tt.now)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("VerifyStandard = %v, want %v", err, tt.want)
			}
		})
	}
}

func mustDecodeHex(s string) []byte {
	b := make([]byte, len(s)/2)
	for i := range b {
		v, _ := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		b[i] = byte(v)
	}
	return b
}

// The reference Go library of Standard Webhooks verifies what SignStandard
// makes, for every secret of a rotation, and SignStandard makes what it
// makes.
func TestStandardAgainstReferenceLibrary(t *testing.T) {
	keys := [][]byte{mustKey(t, stdOld), mustKey(t, stdNew)}
	ts := time.Now()
	for _, b := range [][]byte{body, {}, []byte("{\"name\":\"Zoë 🚀\"}\n"), []byte(strings.Repeat("x", 70000))} {
		sig, err := SignStandard(keys, eventID, ts, b)
		if err != nil {
			t.Fatal(err)
		}
		h := stdHeader(eventID, strconv.FormatInt(ts.Unix(), 10), sig)
		for _, secret := range []string{stdOld, stdNew} {
			ref, err := standardwebhooks.NewWebhook(secret)
			if err != nil {
				t.Fatal(err)
			}
			if err := ref.Verify(b, h); err != nil {
				t.Errorf("reference library rejects our signature (secret %d, body %.20q): %v", len(secret), b, err)
			}
			refSig, _ := ref.Sign(eventID, ts, b)
			if err := VerifyStandard(stdHeader(eventID, strconv.FormatInt(ts.Unix(), 10), refSig), b, []string{secret}, time.Minute, ts); err != nil {
				t.Errorf("VerifyStandard rejects the reference library's signature: %v", err)
			}
			if !strings.Contains(sig, refSig) {
				t.Errorf("signature %q does not hold the reference one %q", sig, refSig)
			}
		}
		ref, _ := standardwebhooks.NewWebhook(SecretPrefix + base64.StdEncoding.EncodeToString([]byte("some-other-secret-0123456789abcd")))
		if err := ref.Verify(b, h); err == nil {
			t.Error("the reference library accepts our signature under a foreign secret: the check proves nothing")
		}
	}
}

// FuzzVerifyStandard feeds arbitrary headers and bodies: VerifyStandard
// must never panic, and must accept only what SignStandard made with the
// secret for that id, timestamp and body.
func FuzzVerifyStandard(f *testing.F) {
	key := []byte("fuzz-standard-secret-0123456789a")
	secret := SecretPrefix + base64.StdEncoding.EncodeToString(key)
	sig, _ := SignStandard([][]byte{key}, eventID, now, body)
	f.Add(eventID, "1718000000", sig, body)
	f.Add(eventID, "1718000000", "v1,"+strings.Repeat("A", 43)+"=", body)
	f.Add("", "", "", []byte{})
	f.Add("a.b", "1", "v1, v1,, ,", []byte("x"))
	f.Add("x", "0001718000000", "v1a,x v2,y", []byte("x"))
	f.Fuzz(func(t *testing.T, id, ts, sigs string, b []byte) {
		h := http.Header{}
		h.Set(IDHeader, id)
		h.Set(TimestampHeader, ts)
		h.Set(StandardSignatureHeader, sigs)
		err := VerifyStandard(h, b, []string{secret}, time.Hour, now)
		if err == nil {
			n, _ := strconv.ParseInt(ts, 10, 64)
			want, _ := SignStandard([][]byte{key}, id, time.Unix(n, 0), b)
			if !strings.Contains(h.Get(StandardSignatureHeader), want) {
				t.Fatalf("accepted %q for id %q ts %q and a body it was not signed for", sigs, id, ts)
			}
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNoMatch) && !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}

// The cost of signing one delivery with two secrets (a rotation), in each
// format, for a typical event body.
func BenchmarkSignIdlink(b *testing.B) {
	secrets := []string{"old-webhook-secret-0123456789", "new-webhook-secret-0123456789"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Sign(secrets, now, body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignStandard(b *testing.B) {
	keys := [][]byte{mustKey(b, stdOld), mustKey(b, stdNew)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := SignStandard(keys, eventID, now, body); err != nil {
			b.Fatal(err)
		}
	}
}
