package access

import (
	"errors"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestPolicy(t *testing.T) {
	p := &Policy{
		Allow: mustPrefixes(t, "192.168.7.0/24, 127.0.0.9"),
		Deny:  mustPrefixes(t, "10.9.0.0/16"),
		Own:   []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:6800")},
	}
	for _, c := range []struct {
		from   Client
		target string
		ok     bool
	}{
		{Internet, "93.184.216.34:443", true},
		{Internet, "127.0.0.1:80", false},
		{Internet, "[::1]:80", false},
		{Internet, "[::ffff:127.0.0.1]:80", false},
		{Internet, "192.168.1.1:80", false},
		{Internet, "10.1.2.3:80", false},
		{Internet, "100.64.0.1:80", false},
		{Internet, "[fd00::1]:80", false},
		{Internet, "192.168.7.5:80", true}, // --allow-target
		{Internet, "127.0.0.9:80", true},   // --allow-target, one address
		{Private, "192.168.1.1:80", true},
		{Private, "127.0.0.1:80", true},
		{Private, "10.9.1.1:80", false}, // --deny-target
		{Loopback, "127.0.0.1:80", true},
		{Loopback, "127.0.0.1:6800", false}, // mflow itself
		{Loopback, "169.254.169.254:80", false},
		{Loopback, "[fe80::1]:80", false},
		{Loopback, "224.0.0.1:80", false},
		{Loopback, "0.0.0.0:80", false},
		{Loopback, "[::]:80", false},
	} {
		err := p.Check(c.from, netip.MustParseAddrPort(c.target))
		var refused *RefusedError
		if (err == nil) != c.ok || (err != nil && !errors.As(err, &refused)) {
			t.Errorf("player %d, target %s: %v, want allowed %v", c.from, c.target, err, c.ok)
		}
	}
}

func mustPrefixes(t *testing.T, s string) []netip.Prefix {
	p, err := ParsePrefixes(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParsePrefixesSaysWhatIsWrong(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "example.com", "1.2.3"} {
		if _, err := ParsePrefixes(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestClientOf(t *testing.T) {
	for addr, want := range map[string]Client{"127.0.0.1:1": Loopback, "[::1]:1": Loopback, "[::ffff:127.0.0.1]:1": Loopback,
		"192.168.0.2:1": Private, "10.0.0.1:1": Private, "[fd12::1]:1": Private, "8.8.8.8:1": Internet, "garbage": Internet} {
		if got := ClientOf(addr); got != want {
			t.Errorf("ClientOf(%s) = %d, want %d", addr, got, want)
		}
	}
}

func TestSameOriginOrExtension(t *testing.T) {
	for h, want := range map[[2]string]bool{
		{"", ""}:                             true,
		{"http://mflow:6800", ""}:            true,
		{"https://mflow:6800", ""}:           true,
		{"http://mflow:6801", ""}:            false,
		{"chrome-extension://x", ""}:         true,
		{"null", ""}:                         false,
		{"", "cross-site"}:                   false,
		{"", "same-site"}:                    false,
		{"", "same-origin"}:                  true,
		{"file://", ""}:                      false,
		{"http://evil.example", "same-site"}: false,
	} {
		r := httptest.NewRequest("POST", "http://mflow:6800/jsonrpc", nil)
		if h[0] != "" {
			r.Header.Set("Origin", h[0])
		}
		if h[1] != "" {
			r.Header.Set("Sec-Fetch-Site", h[1])
		}
		if got := SameOriginOrExtension(r); got != want {
			t.Errorf("Origin %q, Sec-Fetch-Site %q: %v, want %v", h[0], h[1], got, want)
		}
	}
}
