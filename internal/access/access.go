// Package access decides who may use mflow and where mflow may fetch: the JSON-RPC answers this machine
// unless told otherwise, a browser page of another origin gets nothing, and a player cannot make mflow
// fetch from a network it could not reach itself.
package access

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// Client is where a request to mflow comes from.
type Client int

const (
	Internet Client = iota // a public address
	Private                // a private network: the LAN, a VPN (RFC 1918, fc00::/7, CGNAT 100.64/10)
	Loopback               // this machine
)

// ClientOf classifies the address a request came from (http.Request.RemoteAddr).
func ClientOf(remoteAddr string) Client {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return Internet
	}
	return classify(ap.Addr().Unmap())
}

func classify(a netip.Addr) Client {
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
	Addr   netip.AddrPort // the resolved address
	Reason string         // why, in a few words
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("target refused by policy: %s is %s", e.Addr, e.Reason)
}

// Check decides whether a player of class client may make mflow connect to addr. Loopback and private
// targets are for players that are themselves on this machine or a private network: a player from the
// internet cannot reach your LAN or your machine through mflow.
func (p *Policy) Check(client Client, addr netip.AddrPort) error {
	a := addr.Addr().Unmap()
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
	for _, d := range p.Deny {
		if d.Contains(a) {
			return refuse("in --deny-target")
		}
	}
	for _, al := range p.Allow {
		if al.Contains(a) {
			return nil
		}
	}
	switch target := classify(a); {
	case target == Loopback && client != Loopback && client != Private:
		return refuse("loopback, and the player is not on this machine or a private network")
	case target == Private && client == Internet:
		return refuse("on a private network, and the player is on the internet")
	}
	return nil
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
