package verify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/idlink/idlink/testenv"
)

func sign(secret, msg string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

func TestVerifyHMAC(t *testing.T) {
	keys := []*HMACKey{NewHMACKey([]byte("old-secret-0123456789")), NewHMACKey([]byte("new-secret-0123456789"))}
	good := sign("new-secret-0123456789", "alice")
	cases := []struct {
		name string
		msg  string
		sig  string
		want bool
	}{
		{"new secret", "alice", good, true},
		{"old secret (rotation)", "alice", sign("old-secret-0123456789", "alice"), true},
		{"upper-case hex", "alice", strings.ToUpper(good), true},
		{"mixed-case hex", "alice", good[:10] + strings.ToUpper(good[10:]), true},
		{"other message", "bob", good, false},
		{"other secret", "alice", sign("wrong-secret-0123456789", "alice"), false},
		{"truncated", "alice", good[:62], false},
		{"too long", "alice", good + "00", false},
		{"odd length", "alice", good[:63], false},
		{"non-hex digit", "alice", good[:63] + "g", false},
		{"empty", "alice", "", false},
		{"base64 of the mac", "alice", "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJCrze8SNFZ4kA==", false},
		{"spaces", "alice", " " + good[1:], false},
		{"unicode message", "ünïcødé", sign("new-secret-0123456789", "ünïcødé"), true},
	}
	for _, c := range cases {
		if got := HMAC(keys, c.msg, c.sig); got != c.want {
			t.Errorf("%s: verifyHMAC = %v, want %v", c.name, got, c.want)
		}
	}
	if HMAC(nil, "alice", good) {
		t.Error("no keys must never verify")
	}
}

func TestVerifyHMACConcurrent(t *testing.T) {
	keys := []*HMACKey{NewHMACKey([]byte("secret-0123456789abcdef"))}
	done := make(chan bool)
	for g := 0; g < 8; g++ {
		go func(g int) {
			ok := true
			for i := 0; i < 500; i++ {
				msg := strings.Repeat("x", g+i%7)
				ok = ok && HMAC(keys, msg, sign("secret-0123456789abcdef", msg))
			}
			done <- ok
		}(g)
	}
	for g := 0; g < 8; g++ {
		if !<-done {
			t.Fatal("a pooled HMAC state leaked between goroutines")
		}
	}
}

func FuzzDecodeSignature(f *testing.F) {
	f.Add(sign("k", "v"))
	f.Add(strings.ToUpper(sign("k", "v")))
	f.Add("zz")
	f.Add(strings.Repeat("0", 64))
	f.Fuzz(func(t *testing.T, s string) {
		var out [sha256.Size]byte
		ok := DecodeSignature(s, &out)
		ref, err := hex.DecodeString(s)
		want := err == nil && len(ref) == sha256.Size
		if ok != want {
			t.Fatalf("DecodeSignature(%q) = %v, hex.DecodeString says %v", s, ok, want)
		}
		if ok && string(ref) != string(out[:]) {
			t.Fatalf("decoded bytes differ for %q", s)
		}
	})
}

func BenchmarkVerifyHMAC(b *testing.B) {
	keys := []*HMACKey{NewHMACKey([]byte("secret-0123456789abcdef"))}
	sig := sign("secret-0123456789abcdef", "user-12345")
	b.ReportAllocs()
	for b.Loop() {
		if !HMAC(keys, "user-12345", sig) {
			b.Fatal("no")
		}
	}
}

// TestVerifyHMACAllocations: a verification allocates nothing once the
// pool holds a state (the message and the sum live in the state).
func TestVerifyHMACAllocations(t *testing.T) {
	if testenv.RaceEnabled {
		t.Skip("the race detector allocates and empties pools: the count is for normal builds")
	}
	keys := []*HMACKey{NewHMACKey([]byte("old-secret-0123456789")), NewHMACKey([]byte("new-secret-0123456789"))}
	msg := strings.Repeat("m", 300)
	sig := sign("new-secret-0123456789", msg)
	if n := testing.AllocsPerRun(200, func() {
		if !HMAC(keys, msg, sig) {
			t.Fatal("no")
		}
	}); n != 0 {
		t.Errorf("HMAC allocates %.0f times per verification, 0 expected", n)
	}
}
