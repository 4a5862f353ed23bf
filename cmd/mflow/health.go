package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// checkHealth is "mflow health [flags]", a container's health check where no curl is: it asks the mflow
// the same settings describe for its front page, and exits 0 when it answers, 1 with a line when not.
func checkHealth(ctx context.Context, o options, stderr io.Writer) int {
	host := o.listen
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if a.Is6() {
			host = "::1"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(o.Port)) + "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return 0
			}
			err = errors.New(resp.Status)
		}
	}
	fmt.Fprintf(stderr, "mflow: %s does not answer: %v\n", url, err)
	return 1
}

// reach says in a sentence who can reach mflow at addr, and what each may do.
func reach(o options, addr net.Addr) string {
	players := "Players on this machine, the LAN and the internet can play through http://" + addr.String() + "/stream"
	if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		switch a := ap.Addr().Unmap(); {
		case a.IsLoopback():
			players = "Only players on this machine can reach mflow, at http://" + addr.String() + "/stream (--listen " + a.String() + ")"
		case !a.IsUnspecified():
			players = "Players that reach " + a.String() + " can play through http://" + addr.String() + "/stream"
		}
	}
	rpc := "the JSON-RPC answers this machine only (--rpc-secret lets others in)"
	switch {
	case o.RPCSecret != "":
		rpc = "the JSON-RPC answers any client that sends the secret"
	case o.RPCListenAll:
		rpc = "the JSON-RPC answers any client, without a secret (--rpc-listen-all)"
	}
	pages := ", and no web page of another site"
	if o.RPCAllowOriginAll {
		pages = ", web pages of any site included (--rpc-allow-origin-all)"
	}
	return players + ", reaching the LAN's addresses only from the LAN and this machine's own only from this machine; " + rpc + pages + "."
}

// ownAddresses are the addresses mflow answers on, which it must never fetch from: the listening address,
// or every address of this machine when it listens on all of them.
func ownAddresses(addr net.Addr) []netip.AddrPort {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return nil
	}
	if !ap.Addr().IsUnspecified() {
		return []netip.AddrPort{ap}
	}
	own := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()), netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port())}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				own = append(own, netip.AddrPortFrom(p.Addr(), ap.Port()))
			}
		}
	}
	return own
}
