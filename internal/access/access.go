// Package access decides who may use mflow and where mflow may fetch: the JSON-RPC answers this machine
// unless told otherwise, a browser page of another origin gets nothing, and a player cannot make mflow
// fetch from a network it could not reach itself.
package access

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
)

// Network is where a request to mflow comes from.
type Network int

const (
	Internet Network = iota // a public address
	Private                 // a private network: the LAN, a VPN (RFC 1918, fc00::/7, CGNAT 100.64/10)
	Loopback                // this machine
)

// NetworkOf classifies the address a request came from (http.Request.RemoteAddr).
func NetworkOf(remoteAddr string) Network {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return Internet
	}
	return classify(ap.Addr().Unmap())
}

func classify(a netip.Addr) Network {
	switch {
	case a.IsLoopback():
		return Loopback
	case a.IsPrivate() || cgnat.Contains(a):
		return Private
	}
	return Internet
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// SameOriginOrExtension reports whether a browser request may act: one without an Origin (curl, a player,
// an extension's background page), a page mflow itself serves, or a browser extension. Any other page
// could otherwise drive the JSON-RPC and read a drive's cookies from it.
//
// A page's <img> or <script> sends no Origin: Sec-Fetch-Site, which every current browser sends, tells
// those apart from a program's request.
func SameOriginOrExtension(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		site := r.Header.Get("Sec-Fetch-Site")
		return site != "cross-site" && site != "same-site"
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "chrome-extension", "moz-extension", "safari-web-extension":
		return true
	}
	return (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, r.Host)
}

// Policy says which addresses mflow may fetch from. The zero Policy allows only public addresses.
type Policy struct {
	// Allow and Deny adjust the rule: an address in Deny is always refused, one in Allow (and not in Deny)
	// always allowed, except link-local, multicast and unspecified ones, which nothing allows.
	Allow, Deny []netip.Prefix
	// Own are mflow's own listening addresses, never fetched from (no loops).
	Own []netip.AddrPort
}

// RefusedError is a target the policy refuses, before any connection is tried.
type RefusedError struct {
	Addr   netip.AddrPort // the resolved address; zero for a name refused unresolved
	Name   string         // the name, when Addr is zero
	Reason string         // why, in a few words
}

func (e *RefusedError) Error() string {
	target := e.Name
	if e.Addr.IsValid() {
		target = e.Addr.String()
	}
	return fmt.Sprintf("target refused by policy: %s is %s", target, e.Reason)
}

// CheckName decides whether a player of class client may make mflow ask a proxy for host:port, which the
// proxy will resolve and connect to itself: every address the name resolves to here must pass Check, and
// a name that does not resolve here is refused for a player that may not reach this machine's or the
// LAN's addresses (the proxy may resolve it to exactly those: 2130706433 is 127.0.0.1 to many resolvers).
func (p *Policy) CheckName(ctx context.Context, client Network, host string, port uint16) error {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return p.Check(client, netip.AddrPortFrom(a, port))
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		if client == Loopback {
			return nil // a player on this machine may ask the proxy itself
		}
		return &RefusedError{Name: host, Reason: "a name that does not resolve here, asked through a proxy that may resolve it to this machine or the LAN"}
	}
	for _, a := range addrs {
		if err := p.Check(client, netip.AddrPortFrom(a, port)); err != nil {
			return err
		}
	}
	return nil
}

// Check decides whether a player of class client may make mflow connect to addr. Loopback targets are for
// players on this machine, private ones for players on this machine or a private network: a player from the
// LAN cannot reach this machine's own services (a Docker API, a NAS's admin page), nor one from the
// internet your LAN. An IPv6 address that carries an IPv4 one (NAT64, 6to4, IPv4-compatible) is judged by the
// IPv4 address inside it.
func (p *Policy) Check(client Network, addr netip.AddrPort) error {
	raw := addr.Addr().Unmap()
	a := embeddedIPv4(raw)
	refuse := func(reason string) error { return &RefusedError{Addr: addr, Reason: reason} }
	switch {
	case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
		return refuse("link-local (cloud metadata lives there)")
	case a.IsMulticast() || a.IsInterfaceLocalMulticast():
		return refuse("multicast")
	case a.IsUnspecified():
		return refuse("unspecified")
	}
	for _, own := range p.Own {
		if own.Port() == addr.Port() && (own.Addr().Unmap() == a || own.Addr().IsUnspecified()) {
			return refuse("mflow's own address")
		}
	}
	in := func(prefixes []netip.Prefix) bool {
		return slices.ContainsFunc(prefixes, func(pr netip.Prefix) bool { return pr.Contains(a) || pr.Contains(raw) })
	}
	if in(p.Deny) {
		return refuse("in --deny-target")
	}
	if in(p.Allow) {
		return nil
	}
	switch target := classify(a); {
	case target == Loopback && client != Loopback:
		return refuse("this machine's own, and the player is not on this machine (--allow-target lets it)")
	case target == Private && client == Internet:
		return refuse("on a private network, and the player is on the internet")
	}
	return nil
}

var (
	nat64   = netip.MustParsePrefix("64:ff9b::/96") // RFC 6052: the IPv4 address in the last 32 bits
	sixTo4  = netip.MustParsePrefix("2002::/16")    // RFC 3056: the IPv4 address in bits 16-47
	v4Compt = netip.MustParsePrefix("::/96")        // RFC 4291's deprecated IPv4-compatible form, ::a.b.c.d
)

// embeddedIPv4 is the IPv4 address an IPv6 address carries (NAT64, 6to4, IPv4-compatible), else a.
func embeddedIPv4(a netip.Addr) netip.Addr {
	if !a.Is6() {
		return a
	}
	b := a.As16()
	switch {
	case nat64.Contains(a), v4Compt.Contains(a) && !a.IsLoopback() && !a.IsUnspecified():
		return netip.AddrFrom4([4]byte(b[12:16]))
	case sixTo4.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6]))
	}
	return a
}

// ParsePrefixes reads a comma-separated list of CIDRs or single addresses, as --allow-target takes them.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "/") {
			a, err := netip.ParseAddr(part)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or a CIDR such as 192.168.1.0/24", part)
			}
			part = netip.PrefixFrom(a, a.BitLen()).String()
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 192.168.1.0/24 or fd00::/8", part)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// DialAddr reads the address a dialer is about to connect to.
func DialAddr(address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.ParseAddrPort(net.JoinHostPort(host, port))
}

// Proxies are the reverse proxies whose word mflow takes for who their client is (--trusted-proxy), as
// nginx's set_real_ip_from with real_ip_header: a request from one of them is judged by the client named in
// Header. Without any, no header is read: any client could write them.
type Proxies struct {
	// Trusted are the proxies' addresses.
	Trusted []netip.Prefix
	// Header is the one header read (--real-ip-header): X-Forwarded-For (the default, "" means it),
	// X-Real-IP or Forwarded. A proxy passes the other ones on as its client wrote them, so they are
	// never read.
	Header string
}

// RealIPHeaders are the headers --real-ip-header may name.
var RealIPHeaders = []string{"X-Forwarded-For", "X-Real-IP", "Forwarded"}

// CheckHeader says whether name is one of RealIPHeaders, in any case, and returns it as written there.
func CheckHeader(name string) (string, error) {
	for _, h := range RealIPHeaders {
		if strings.EqualFold(h, name) {
			return h, nil
		}
	}
	return "", fmt.Errorf("%q is not a header mflow reads the client from: want one of %s", name, strings.Join(RealIPHeaders, ", "))
}

// trusts reports whether a is one of the proxies.
func (p Proxies) trusts(a netip.Addr) bool {
	return slices.ContainsFunc(p.Trusted, func(pr netip.Prefix) bool { return pr.Contains(a.Unmap()) })
}

// Any reports whether some proxy is trusted.
func (p Proxies) Any() bool { return len(p.Trusted) > 0 }

// ClientAddr is the address of the client behind r, as r.RemoteAddr is written: r's own peer, or, when the
// peer is a trusted proxy, the rightmost address of its Header chain that is not a trusted proxy itself;
// what stands left of it was written by the client and is never read. A chain of trusted proxies only, an
// empty one, or one whose first untrusted entry cannot be read ("unknown", an obfuscated name) names no
// client: the request is then the proxy's own, judged as a client on the internet, never as this machine
// (a proxy on this machine would otherwise lend its address to whoever it forwards).
func (p Proxies) ClientAddr(r *http.Request) string {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if !p.Any() || err != nil || !p.trusts(peer.Addr()) {
		return r.RemoteAddr
	}
	var chain []string
	switch p.Header {
	case "Forwarded":
		chain = forwardedFor(r.Header.Values("Forwarded"))
	case "X-Real-IP":
		if v := strings.TrimSpace(r.Header.Get("X-Real-IP")); v != "" {
			chain = []string{v}
		}
	default:
		for _, v := range r.Header.Values("X-Forwarded-For") {
			for hop := range strings.SplitSeq(v, ",") {
				chain = append(chain, strings.TrimSpace(hop))
			}
		}
	}
	for i := len(chain) - 1; i >= 0; i-- {
		a, ok := parseHop(chain[i])
		if !ok {
			break
		}
		if !p.trusts(a.Addr()) {
			return a.String()
		}
	}
	return unnamedClient(r.RemoteAddr)
}

// unnamedClient is how a request from a trusted proxy that names no client is written as its RemoteAddr:
// not an address, so NetworkOf judges it a client on the internet, and the log still shows which proxy.
func unnamedClient(proxy string) string { return "unnamed client of proxy " + proxy }

// forwardedFor reads the for= of each element of Forwarded headers (RFC 7239), in order.
func forwardedFor(values []string) []string {
	var out []string
	for _, v := range values {
		for element := range strings.SplitSeq(v, ",") {
			for pair := range strings.SplitSeq(element, ";") {
				key, value, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(strings.TrimSpace(key), "for") {
					out = append(out, strings.Trim(strings.TrimSpace(value), `"`))
				}
			}
		}
	}
	return out
}

// parseHop reads one address of a forwarding chain: 192.0.2.1, 192.0.2.1:4711, 2001:db8::1 or
// [2001:db8::1]:4711. A missing port is 0.
func parseHop(s string) (netip.AddrPort, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, true
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), 0), true
}

// Hosts are the names a request's Host may carry besides IP literals and localhost: this machine's own and
// those given with --allow-host; a name starting with a dot covers its subdomains, and "*" any name. A web
// page's requests carry its own host name, so a page of another site whose name was made to resolve to
// this machine (DNS rebinding) is told apart from one of this machine.
type Hosts []string

// Allows reports whether a request for host (as http.Request.Host carries it, with or without a port) is
// for this mflow.
func (h Hosts) Allows(host string) bool {
	if host == "" {
		return true // HTTP/1.0: no browser sends a request without Host
	}
	name := host
	if n, _, err := net.SplitHostPort(host); err == nil {
		name = n
	}
	name = strings.TrimSuffix(strings.ToLower(strings.Trim(name, "[]")), ".")
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return true
	}
	for _, allowed := range h {
		allowed = strings.TrimSuffix(strings.ToLower(allowed), ".")
		switch {
		case allowed == "*", allowed == name:
			return true
		case strings.HasPrefix(allowed, ".") && (strings.HasSuffix(name, allowed) || name == allowed[1:]):
			return true
		}
	}
	return false
}

// MachineNames are this machine's own names for Hosts: its host name, and that name in the local domains
// home routers and mDNS give it (.local, .lan, .home.arpa, .localdomain).
func MachineNames() Hosts {
	name, err := os.Hostname()
	if err != nil || name == "" {
		return nil
	}
	short, _, _ := strings.Cut(name, ".")
	names := Hosts{name, short}
	for _, domain := range []string{".local", ".lan", ".home.arpa", ".localdomain"} {
		names = append(names, short+domain)
	}
	return names
}
