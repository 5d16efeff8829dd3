package identity

import "testing"

// TestClientSubject: an IPv4 client is its address; an IPv6 client is its
// /64 (an attacker gets a whole /64 from any ISP), mapped IPv4 is IPv4,
// zones do not make new subjects, and what is not an address is none.
func TestClientSubject(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "ip:192.0.2.1",
		"::ffff:192.0.2.1":     "ip:192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "ip:2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "ip:2001:db8:1:2::/64",
		"fe80::1%eth0":         "ip:fe80::/64",
		"2001:db8:1:3::1":      "ip:2001:db8:1:3::/64",
		"":                     "",
		"not-an-ip":            "",
		"192.0.2.1:443":        "",
	} {
		if got := ClientSubject(in); got != want {
			t.Errorf("ClientSubject(%q) = %q, want %q", in, got, want)
		}
	}
}
