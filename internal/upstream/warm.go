package upstream

import (
	"net"
	"net/http"
	"net/url"

	"mflow/internal/source"
)

// Warm opens, in the background, TCP connections to at's host until n are open to it for at's class of
// player, so that the requests that follow skip the handshake: a probe's answer is followed by the
// stream's other requests, and on a long path each new connection costs a round trip before its request
// leaves. Nothing is opened ahead through a proxy (the proxy's own connection is what a request dials).
// Never more than HostConnections.
func (c *Client) Warm(at source.Location, n int) {
	u, err := url.Parse(at.URL)
	if err != nil || at.Proxy != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return
	}
	if proxy, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err != nil || proxy != nil {
		return
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	c.warmers[at.From].Warm(net.JoinHostPort(u.Hostname(), port), min(n, c.cfg.HostConnections))
}
