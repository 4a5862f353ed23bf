// Package upstream sends mflow's requests to the servers that hold the files and checks every answer
// before a byte of it is used.
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mflow/internal/access"
	"mflow/internal/source"
	"mflow/internal/upstream/predial"
	"mflow/internal/upstream/slots"
)

// Config tunes a Client. Zero fields take the defaults noted.
type Config struct {
	// HostConnections caps the requests open at once to one upstream host, across all streams: drives
	// refuse or throttle clients that open more. Default 16.
	HostConnections int
	// Insecure skips TLS certificate verification.
	Insecure bool
	// TLS, when set, is the TLS configuration to use (tests trust their own certificates with it).
	TLS *tls.Config
	// ConnectTimeout bounds the TCP connect and the TLS handshake. Default 10 s.
	ConnectTimeout time.Duration
	// HeaderTimeout bounds the wait for an answer's headers once the request is sent. Default 20 s.
	HeaderTimeout time.Duration
	// Dial, when set, replaces the network dialer (tests connect to in-memory upstreams with it); the
	// target policy is not applied to it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxRedirects bounds the redirects one request follows. 0 follows none.
	MaxRedirects int
	// UserAgent is sent with requests whose headers carry none. Default "mflow".
	UserAgent string
	// Shared, when set, is the connection budget per host that several mflow instances share (each also
	// keeps its own HostConnections): drives count connections per account, not per instance.
	Shared slots.Shared
	// Policy says where requests may connect, checked on the resolved address before each connection,
	// redirects and proxies included. Nil allows every address (tests, the benchmark).
	Policy *access.Policy
}

// Client sends requests upstream. Each host has HostConnections slots, and each slot has a transport of its
// own that carries one request at a time: a stream with N requests open really holds N connections, even
// to an HTTP/2 server (one shared transport would multiplex them onto one connection), and a slot's
// keep-alive connection serves its next request. Each class of player, and each proxy, has its own
// transports, so a connection the policy let one class open is never reused for another, and a request
// never goes through another task's proxy.
type Client struct {
	cfg    Config
	tls    *tls.Config  // the base of every transport's TLS configuration
	direct transportSet // requests through the environment's proxy, if any
	// warmers dial for the direct transports of each class of player, and keep the connections Warm
	// opened ahead.
	warmers [3]*predial.Dialer
	slots   *slots.Hosts // which transport of its host a request uses, and whether it may start

	mu      sync.Mutex           // protects the following field, and each proxySet's users
	proxied map[string]*proxySet // by proxy URL; at most maxProxies
}

// transportSet is one transport per slot, for each class of player.
type transportSet [3][]*http.Transport

// proxySet is the transports of requests through one proxy.
type proxySet struct {
	transports transportSet // through this proxy
	users      int          // requests using it now; protected by Client.mu
}

// maxProxies bounds the proxies the client keeps connections to: tasks each name their own, and a client
// of the JSON-RPC must not make mflow hold transports without end. Unused ones make room for a new one.
const maxProxies = 64

// ErrTooManyProxies refuses a request through one more proxy while maxProxies others are in use.
var ErrTooManyProxies = fmt.Errorf("more than %d proxies in use at once", maxProxies)

// NewClient returns a Client for cfg.
func NewClient(cfg Config) *Client {
	if cfg.HostConnections <= 0 {
		cfg.HostConnections = 16
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 20 * time.Second
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "mflow"
	}
	tlsConfig := cfg.TLS
	if tlsConfig == nil {
		tlsConfig = &tls.Config{}
	}
	if cfg.Insecure {
		tlsConfig = tlsConfig.Clone()
		tlsConfig.InsecureSkipVerify = true
	}
	c := &Client{cfg: cfg, tls: tlsConfig, slots: slots.New(cfg.HostConnections, cfg.Shared), proxied: map[string]*proxySet{}}
	for class := range c.warmers {
		c.warmers[class] = predial.New(c.dialer(access.Network(class)), cfg.ConnectTimeout)
		c.direct[class] = c.newTransports(http.ProxyFromEnvironment, c.warmers[class].DialContext)
	}
	return c
}

// newTransportSet makes the slots' transports for every class of player, through proxy.
func (c *Client) newTransportSet(proxy func(*http.Request) (*url.URL, error)) transportSet {
	var set transportSet
	for class := range set {
		set[class] = c.newTransports(proxy, c.dialer(access.Network(class)))
	}
	return set
}

// dialer is the network's dialer for requests from players of class: the target policy checks each
// address it connects to.
func (c *Client) dialer(class access.Network) predial.DialFunc {
	cfg := c.cfg
	dial := cfg.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
		if policy := cfg.Policy; policy != nil {
			// On the resolved address, before the connection is tried: no name can be made to point
			// inside after it was checked.
			d.Control = func(_, address string, _ syscall.RawConn) error {
				addr, err := access.DialAddr(address)
				if err != nil {
					return err
				}
				return policy.Check(class, addr)
			}
		}
		dial = d.DialContext
	}
	return dial
}

// newTransports makes the slots' transports, through proxy, connecting with dial.
func (c *Client) newTransports(proxy func(*http.Request) (*url.URL, error), dial predial.DialFunc) []*http.Transport {
	cfg := c.cfg
	var transports []*http.Transport
	for range cfg.HostConnections {
		transports = append(transports, &http.Transport{
			Proxy:                 proxy,
			DialContext:           dial,
			TLSClientConfig:       c.tls.Clone(), // HTTP/2 setup edits it: one each
			TLSHandshakeTimeout:   cfg.ConnectTimeout,
			ResponseHeaderTimeout: cfg.HeaderTimeout,
			ForceAttemptHTTP2:     true,
			// The bytes must arrive as the server stores them: a transparently gunzipped body has
			// other offsets than the Range asked.
			DisableCompression:  true,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     60 * time.Second,
		})
	}
	return transports
}

// transportsFor returns the transports of requests through proxy (nil: the environment's), counting one
// more user of a proxy's; the function it returns counts it out.
func (c *Client) transportsFor(proxy *url.URL) (*transportSet, func(), error) {
	if proxy == nil {
		return &c.direct, func() {}, nil
	}
	key := proxy.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	set := c.proxied[key]
	if set == nil {
		if len(c.proxied) >= maxProxies {
			for k, unused := range c.proxied {
				if unused.users == 0 {
					unused.transports.closeIdle()
					delete(c.proxied, k)
				}
			}
		}
		if len(c.proxied) >= maxProxies {
			return nil, nil, ErrTooManyProxies
		}
		set = &proxySet{transports: c.newTransportSet(http.ProxyURL(proxy))}
		c.proxied[key] = set
	}
	set.users++
	return &set.transports, sync.OnceFunc(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		set.users--
	}), nil
}

// closeIdle closes the set's keep-alive connections no request is using.
func (set *transportSet) closeIdle() {
	for _, class := range set {
		for _, t := range class {
			t.CloseIdleConnections()
		}
	}
}

// CloseIdleConnections closes the keep-alive connections no request is using.
func (c *Client) CloseIdleConnections() {
	for _, w := range c.warmers {
		w.CloseReady()
	}
	c.direct.closeIdle()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, set := range c.proxied {
		set.transports.closeIdle()
	}
}

// Hosts is the number of hosts the client keeps slots for now: those some request uses.
func (c *Client) Hosts() int { return c.slots.Count() }

// InUse is how many requests hold a connection slot now: in all, and to the busiest host.
func (c *Client) InUse() (total, busiest int) { return c.slots.InUse() }

// HostConnections is the requests one host may have open at once (Config.HostConnections).
func (c *Client) HostConnections() int { return c.cfg.HostConnections }

// Do sends req once, through at's proxy for a player of at's class (req carries the URL and headers),
// following no redirect, after waiting for a free slot of its host. The slot is held until the answer's
// body is closed.
func (c *Client) Do(req *http.Request, at source.Location) (*http.Response, error) {
	if err := c.checkProxied(req, at); err != nil {
		return nil, err
	}
	set, leaveProxy, err := c.transportsFor(at.Proxy)
	if err != nil {
		return nil, err
	}
	slot, releaseSlot, err := c.slots.Acquire(req.Context(), req.URL.Host)
	if err != nil {
		leaveProxy()
		return nil, err
	}
	release := sync.OnceFunc(func() {
		releaseSlot()
		leaveProxy()
	})
	sent := time.Now()
	resp, err := set[at.From][slot].RoundTrip(req)
	if err != nil {
		release()
		return nil, err
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, release: release, grace: cutGrace(time.Since(sent))}
	return resp, nil
}

// checkProxied applies the target policy to a request a proxy (the task's, or the environment's
// HTTP_PROXY) will connect for: the dialer sees only the proxy's address, so the target is checked here,
// by the addresses its name has on this machine. A proxy is trusted only with what the player could fetch
// directly.
func (c *Client) checkProxied(req *http.Request, at source.Location) error {
	policy := c.cfg.Policy
	if policy == nil || c.cfg.Dial != nil {
		return nil
	}
	if at.Proxy == nil {
		if envProxy, err := http.ProxyFromEnvironment(req); err != nil || envProxy == nil {
			return err
		}
	}
	port := req.URL.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[req.URL.Scheme]
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("port %q of %s: %w", port, Redact(req.URL.String()), err)
	}
	return policy.CheckName(req.Context(), at.From, req.URL.Hostname(), uint16(n))
}

// releasingBody frees its request's slot when closed. Closed before its end, its connection is gone, but
// the server learns of it only a moment later and counts the request open until then: Close holds the slot,
// and its caller, that long, so that the server never sees more than HostConnections requests, nor a stream
// more than its connections.
type releasingBody struct {
	io.ReadCloser
	release func()
	grace   time.Duration // how long the news of a cut takes to reach the server
	atEOF   atomic.Bool   // the body was read to its end; a cancelled request's body is closed while read
}

func (b *releasingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.atEOF.Store(true)
	}
	return n, err
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.atEOF.Load() {
		time.Sleep(b.grace)
	}
	b.release()
	return err
}

// cutGrace is how long the news of a request cut short takes to reach its server: about half the wait for
// its answer, a one-way trip.
func cutGrace(answerWait time.Duration) time.Duration {
	return min(max(answerWait/2, 5*time.Millisecond), 100*time.Millisecond)
}

// Get sends a GET as at says (and Range, when rng is not empty), following up to Config.MaxRedirects
// redirects itself so that every hop carries the same headers: drives want
// their Cookie and Referer on the CDN host too. After a redirect from https to http, the credentials
// (Cookie, Authorization) stay behind: they would cross the network in clear. It returns the answer and the
// URL that gave it.
func (c *Client) Get(ctx context.Context, at source.Location, rng string) (*http.Response, string, error) {
	rawURL := at.URL
	header := CleanHeader(at.Header)
	downgraded := false
	for hop := 0; ; hop++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return nil, "", fmt.Errorf("bad upstream URL %s: %w", Redact(rawURL), withoutURL(err))
		}
		req.Header.Set("User-Agent", c.cfg.UserAgent)
		for name, values := range header {
			if downgraded && credentials[name] {
				continue
			}
			req.Header[name] = values
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		// The bytes must be the file's own: a compressed answer has other offsets than the Range asked.
		req.Header.Set("Accept-Encoding", "identity")
		// Another mflow asked this way refuses the request (508) rather than multiply it (RFC 9110 §7.6.3).
		req.Header.Set("Via", "1.1 "+ViaToken)
		resp, err := c.Do(req, at)
		if err != nil {
			return nil, "", &NetError{URL: Redact(rawURL), Err: err}
		}
		if !isRedirect(resp.StatusCode) {
			return resp, rawURL, nil
		}
		location := resp.Header.Get("Location")
		drain(resp)
		if location == "" {
			return nil, "", &StatusError{Code: resp.StatusCode, Status: resp.Status + " without a Location", URL: Redact(rawURL)}
		}
		if hop >= c.cfg.MaxRedirects {
			return nil, "", fmt.Errorf("%w: more than %d from %s", ErrTooManyRedirects, c.cfg.MaxRedirects, Redact(rawURL))
		}
		next, err := req.URL.Parse(location)
		if err != nil {
			return nil, "", fmt.Errorf("bad redirect from %s: its Location is not a URL: %w", Redact(rawURL), withoutURL(err))
		}
		if next.Scheme != "http" && next.Scheme != "https" {
			return nil, "", fmt.Errorf("bad redirect from %s to a %s: URL", Redact(rawURL), next.Scheme)
		}
		downgraded = downgraded || (req.URL.Scheme == "https" && next.Scheme == "http")
		rawURL = next.String()
	}
}

// hopHeaders are the hop-by-hop headers (RFC 9110, 7.6.1) and the ones mflow sets itself per request: a
// link's headers never carry them upstream.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Range", "Content-Length", "Accept-Encoding", "Via",
}

// ViaToken is how mflow names itself in the Via header of its upstream requests.
const ViaToken = "mflow"

// CleanHeader is a link's header as it may go upstream: names canonical, without hopHeaders and the
// headers a Connection header names.
func CleanHeader(h http.Header) http.Header {
	out := http.Header{}
	for name, values := range h {
		out[textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))] = values
	}
	for _, c := range out.Values("Connection") {
		for name := range strings.SplitSeq(c, ",") {
			out.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range hopHeaders {
		out.Del(name)
	}
	return out
}

// credentials are the headers that stay behind after a redirect from https to http. Other headers, and
// these on same-scheme redirects to other hosts, follow: drives send their CDN's link with the session's
// cookie expected there, as aria2 does.
var credentials = map[string]bool{"Cookie": true, "Authorization": true}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// drain reads what is left of a small body so its connection can be reused, then closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// Redact is u without its query and credentials, for logs and messages: signed links carry secrets there.
func Redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	p.User = nil
	if p.RawQuery != "" {
		p.RawQuery = "…"
	}
	p.Fragment = ""
	return p.String()
}

// withoutURL is err without the URL a *url.Error quotes: a signed link's query must stay out of messages.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// ErrTooManyRedirects is returned when a link redirects more often than allowed.
var ErrTooManyRedirects = errors.New("too many redirects")
