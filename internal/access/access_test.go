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
		from   Network
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
		{Internet, "192.168.7.5:80", true},           // --allow-target
		{Internet, "127.0.0.9:80", true},             // --allow-target, one address
		{Internet, "[64:ff9b::7f00:1]:80", false},    // NAT64 of 127.0.0.1
		{Internet, "[2002:7f00:1::]:80", false},      // 6to4 of 127.0.0.1
		{Internet, "[::127.0.0.1]:80", false},        // IPv4-compatible 127.0.0.1
		{Internet, "[64:ff9b::c0a8:101]:80", false},  // NAT64 of 192.168.1.1
		{Internet, "[64:ff9b::5db8:d822]:80", true},  // NAT64 of a public address
		{Loopback, "[64:ff9b::a9fe:a9fe]:80", false}, // NAT64 of the cloud metadata address
		{Private, "192.168.1.1:80", true},
		{Private, "127.0.0.1:80", false}, // a LAN player does not reach this machine's own services
		{Private, "[::1]:80", false},
		{Private, "[2002:7f00:1::]:80", false},
		{Private, "127.0.0.9:80", true}, // unless --allow-target names them
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
	for addr, want := range map[string]Network{"127.0.0.1:1": Loopback, "[::1]:1": Loopback, "[::ffff:127.0.0.1]:1": Loopback,
		"192.168.0.2:1": Private, "10.0.0.1:1": Private, "[fd12::1]:1": Private, "8.8.8.8:1": Internet, "garbage": Internet} {
		if got := NetworkOf(addr); got != want {
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

func TestATrustedProxyIsTakenAtItsWord(t *testing.T) {
	trusted := mustPrefixes(t, "127.0.0.1,10.0.0.0/8")
	unnamed := unnamedClient("127.0.0.1:1234")
	for _, c := range []struct {
		header  string // --real-ip-header; "" is X-Forwarded-For
		peer    string
		headers map[string]string
		want    string
	}{
		{"", "203.0.113.7:1234", map[string]string{"X-Forwarded-For": "127.0.0.1"}, "203.0.113.7:1234"}, // not a proxy: its word counts for nothing
		{"", "127.0.0.1:1234", nil, unnamed}, // the proxy asking for itself is not this machine
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7:0"},
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "127.0.0.1, 203.0.113.7, 10.1.1.1"}, "203.0.113.7:0"}, // the rightmost not trusted
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "10.1.1.1, 10.2.2.2"}, unnamed},                       // all trusted: nobody named
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "127.0.0.1"}, unnamed},                                // a one-element chain of the proxy itself
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "[2001:db8::1]:4711"}, "[2001:db8::1]:4711"},
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "bogus"}, unnamed},
		{"", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "127.0.0.1, bogus, 10.1.1.1"}, unnamed}, // nothing left of an unreadable hop is read
		// A client's own Forwarded and X-Real-IP pass a proxy that appends to X-Forwarded-For untouched.
		{"", "127.0.0.1:1234", map[string]string{"Forwarded": "for=127.0.0.1", "X-Forwarded-For": "127.0.0.1, 203.0.113.7"}, "203.0.113.7:0"},
		{"", "127.0.0.1:1234", map[string]string{"Forwarded": "for=127.0.0.1", "X-Real-IP": "127.0.0.1"}, unnamed},
		// With --real-ip-header, that header alone.
		{"Forwarded", "127.0.0.1:1234", map[string]string{"Forwarded": `for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`, "X-Forwarded-For": "127.0.0.1"}, "[2001:db8::1]:4711"},
		{"Forwarded", "127.0.0.1:1234", map[string]string{"Forwarded": "for=unknown"}, unnamed},
		{"Forwarded", "127.0.0.1:1234", map[string]string{"X-Forwarded-For": "203.0.113.7"}, unnamed},
		{"X-Real-IP", "127.0.0.1:1234", map[string]string{"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.1"}, "203.0.113.7:0"},
		{"X-Real-IP", "127.0.0.1:1234", map[string]string{"X-Real-IP": "127.0.0.1"}, unnamed},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.peer
		for k, v := range c.headers {
			r.Header.Set(k, v)
		}
		if got := (Proxies{Trusted: trusted, Header: c.header}).ClientAddr(r); got != c.want {
			t.Errorf("--real-ip-header %q, from %s with %v: %q, want %q", c.header, c.peer, c.headers, got, c.want)
		}
		if NetworkOf(c.want) == Loopback {
			t.Errorf("%q is judged as this machine", c.want)
		}
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr, r.Header["X-Forwarded-For"] = "127.0.0.1:1", []string{"203.0.113.7"}
	if got := (Proxies{}).ClientAddr(r); got != "127.0.0.1:1" {
		t.Errorf("without --trusted-proxy: %q, want the peer itself", got)
	}
	for _, h := range []string{"x-real-ip", "FORWARDED", "X-Forwarded-For"} {
		if _, err := CheckHeader(h); err != nil {
			t.Errorf("--real-ip-header %s: %v", h, err)
		}
	}
	if _, err := CheckHeader("X-Client-IP"); err == nil {
		t.Error("--real-ip-header X-Client-IP was taken")
	}
}

func TestOnlyThisMachinesNamesAreAnswered(t *testing.T) {
	h := Hosts{"nas", "nas.local", ".example.com"}
	for host, want := range map[string]bool{
		"": true, "127.0.0.1:6800": true, "[::1]:6800": true, "192.168.1.5": true, "localhost:6800": true, "LOCALHOST": true, "app.localhost": true,
		"nas:6800": true, "NAS.local.": true, "media.example.com": true, "example.com": true,
		"rebind.example:6800": false, "nas.evil.com": false, "notexample.com": false, "localhost.evil.com": false,
	} {
		if got := h.Allows(host); got != want {
			t.Errorf("Host %q: allowed %v, want %v", host, got, want)
		}
	}
	if !(Hosts{"*"}).Allows("anything.example") {
		t.Error(`"*" does not allow any name`)
	}
}
