// Package upstreamtest provides upstream servers for tests and the benchmark. They model a cloud drive,
// not an ideal server: each answer can wait before its first byte, each connection and each request has a
// speed cap, a request can land on a slow route, and faults are injected on demand (reset, stall, wrong
// status, wrong range, another version, a compressed body, a lying size).
package upstreamtest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Fault is how to answer one request, other than faithfully. The zero Fault answers faithfully.
type Fault struct {
	Status     int    // answer this status with an empty body
	RetryAfter string // the Retry-After header for Status
	Whole      bool   // answer 200 with the whole file and Accept-Ranges: bytes, as a CDN's cache miss now and then
	Shift      int64  // answer the asked range moved by Shift bytes, with a Content-Range that says so
	ETag       string // answer with this ETag (another version of the file)
	// ResetAfter, when positive, cuts the connection after that many body bytes.
	ResetAfter int64
	// StallAfter, when positive, stops sending after that many body bytes until the request ends.
	StallAfter int64
	// Rate, when positive, caps this answer's speed in bytes per second (on top of PerConn).
	Rate float64
	// Gzip answers with the asked bytes gzip-compressed and Content-Encoding: gzip.
	Gzip bool
	// ClaimSize, when positive, is the file size the Content-Range claims instead of the real one.
	ClaimSize int64
	// Latency, when positive, replaces Options.Latency for this answer.
	Latency time.Duration
}

// Options shape an upstream's answers.
type Options struct {
	// PerConn caps each connection's speed in bytes per second, as drives do; 0 is no cap.
	PerConn float64
	// NoRange makes every answer a 200 with the whole file and no Accept-Ranges, as a server without Range
	// support.
	NoRange bool
	// Fault, when set, picks the fault for the nth request (counting from 1).
	Fault func(n int64, r *http.Request) Fault
	// Latency is how long every answer waits before its status line: a distant drive's first byte.
	Latency time.Duration
	// PerRequest caps each answer's speed in bytes per second, as drives that throttle per request do.
	PerRequest float64
	// SlowChance is the chance that a request lands on a slow route, served at SlowRate bytes per second
	// whatever the other caps: one congested path among good ones.
	SlowChance float64
	SlowRate   float64
	// Seed makes the slow routes' draws repeatable.
	Seed uint64
	// Limit, when set, makes the upstream a drive that allows the file only so many requests at once.
	Limit *DriveLimit
	// Bursts, when positive, paces PerConn as nginx's limit_rate does, per request: a period's allowance at
	// once when the request starts, then another at each tick of a clock of that period shared by all
	// requests, and nothing in between. Over a period the speed is PerConn; over a shorter window it is a
	// burst or nothing, and a request that just started bursts while the others are silent.
	Bursts time.Duration
}

// DriveLimit is a drive's limit on one file, as 115 and PikPak keep it: at most PerFile requests served at
// once, one more refused at once (with Refuse, or a reset), and after BanAfter refusals every request
// refused for BanFor (risk control).
type DriveLimit struct {
	PerFile    int
	Refuse     int           // the status one more gets: 403, 429, 503; 0 resets its connection
	RetryAfter string        // sent with a 429 or 503
	BanAfter   int           // refusals before risk control refuses everything; 0 never
	BanFor     time.Duration // how long risk control lasts

	mu          sync.Mutex // protects the following fields
	serving     int        // requests admitted and not yet answered in full
	refused     int        // requests refused
	maxServing  int        // most requests served at once
	bannedUntil time.Time  // risk control refuses every request until then
}

// Refused is how many requests the drive refused.
func (d *DriveLimit) Refused() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refused
}

// MaxServing is the most requests it served at once.
func (d *DriveLimit) MaxServing() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxServing
}

// admit counts a request in, or says it is refused.
func (d *DriveLimit) admit() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if now.Before(d.bannedUntil) || d.serving >= d.PerFile {
		d.refused++
		if d.BanAfter > 0 && d.refused >= d.BanAfter && !now.Before(d.bannedUntil) {
			d.bannedUntil = now.Add(d.BanFor)
		}
		return false
	}
	d.serving++
	d.maxServing = max(d.maxServing, d.serving)
	return true
}

func (d *DriveLimit) leave() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.serving--
}

// refuse answers a request the drive refuses.
func (d *DriveLimit) refuse(w http.ResponseWriter) {
	if d.Refuse == 0 {
		panic(http.ErrAbortHandler) // the connection reset, no answer
	}
	if d.RetryAfter != "" {
		w.Header().Set("Retry-After", d.RetryAfter)
	}
	w.WriteHeader(d.Refuse)
}

// DriveModels are the upstreams the benchmark measures on, and what tests of speed use: an ideal one, a
// distant one, and one with uneven routes, each capping every connection at PerConn.
func DriveModels(perConn float64) []struct {
	Name string
	Opts Options
} {
	return []struct {
		Name string
		Opts Options
	}{
		{"ideal", Options{PerConn: perConn}},
		{"150 ms", Options{PerConn: perConn, Latency: 150 * time.Millisecond}},
		{"uneven routes", Options{PerConn: perConn, Latency: 50 * time.Millisecond, SlowChance: 0.2, SlowRate: 200 << 10, Seed: 1}},
	}
}

// Upstream serves Content at any path.
type Upstream struct {
	URL     string  // base URL; the tests ask for URL + "/file"
	Content []byte  // the file; nil for a virtual file (NewVirtual)
	ETag    string  // sent with every answer unless a Fault says otherwise
	opts    Options // how to answer
	size    int64   // bytes in the file

	routeMu sync.Mutex // guards routes
	routes  *rand.Rand // draws slow routes

	requests atomic.Int64 // requests received
	open     atomic.Int64 // requests being answered
	maxOpen  atomic.Int64 // most requests answered at once
	conns    atomic.Int64 // connections accepted
	served   atomic.Int64 // body bytes sent

	srv    *http.Server
	closer func()
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	tls    *tls.Config
}

type limiterKey struct{}

// waiter paces writes: a rate.Limiter, or a burster.
type waiter interface {
	WaitN(ctx context.Context, n int) error
}

// burster gives a request its allowance in bursts: one when it starts, then one at each tick of a clock
// of the period.
type burster struct {
	allowance int           // bytes per period
	period    time.Duration // between bursts

	mu   sync.Mutex // protects the following fields
	left int        // bytes still allowed until the next tick
	next time.Time  // the next tick; zero before the first take
}

func (b *burster) WaitN(ctx context.Context, n int) error {
	for {
		wait := b.take(n)
		if wait == 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// take takes n bytes of the allowance, or says how long to wait for the next period.
func (b *burster) take(n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if !now.Before(b.next) { // the start, or a tick: a period's allowance, none carried over
		b.left = b.allowance
		b.next = now.Truncate(b.period).Add(b.period)
	}
	if b.left >= n || n > b.allowance {
		b.left -= n
		return 0
	}
	return b.next.Sub(now)
}

func newUpstream(content []byte, opts Options) *Upstream {
	return &Upstream{Content: content, ETag: `"v1"`, opts: opts, size: int64(len(content)), routes: rand.New(rand.NewPCG(opts.Seed, 11))}
}

// New starts an upstream on loopback.
func New(content []byte, opts Options) *Upstream {
	u := newUpstream(content, opts)
	ts := httptest.NewUnstartedServer(u)
	u.configure(ts.Config)
	ts.Start()
	u.URL, u.closer = ts.URL, ts.Close
	return u
}

// NewOn starts an upstream on ln: a listener in a network namespace, for a real path to it.
func NewOn(ln net.Listener, content []byte, opts Options) *Upstream {
	u := newUpstream(content, opts)
	ts := &httptest.Server{Listener: ln, Config: &http.Server{Handler: u}}
	u.configure(ts.Config)
	ts.Start()
	u.URL, u.closer = ts.URL, ts.Close
	return u
}

// NewTLS starts an upstream on loopback over TLS, speaking HTTP/2 when h2 is set.
func NewTLS(content []byte, h2 bool, opts Options) *Upstream {
	u := newUpstream(content, opts)
	ts := httptest.NewUnstartedServer(u)
	ts.EnableHTTP2 = h2
	u.configure(ts.Config)
	ts.StartTLS()
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	u.URL, u.closer, u.tls = ts.URL, ts.Close, &tls.Config{RootCAs: pool}
	return u
}

// NewInMemory starts an upstream whose connections are in-memory pipes: inside a synctest bubble its
// throttling and stalls run on the bubble's clock. Connect with Dial.
func NewInMemory(content []byte, opts Options) *Upstream {
	u := newUpstream(content, opts)
	u.URL = "http://upstream.test"
	return u.serveInMemory()
}

// NewVirtual starts an in-memory upstream of a file of size bytes that is never held: byte i is VirtualByte(i).
// It serves files of any size up to 2^63-1, for the arithmetic at the edges.
func NewVirtual(size int64, opts Options) *Upstream {
	u := newUpstream(nil, opts)
	u.URL, u.size = "http://virtual.test", size
	return u.serveInMemory()
}

// VirtualByte is byte i of a virtual file.
func VirtualByte(i int64) byte {
	x := uint64(i) * 0x9E3779B97F4A7C15
	return byte(x>>56 ^ x>>29 ^ x)
}

// Size is the size of the file served.
func (u *Upstream) Size() int64 { return u.size }

// Bytes returns the file's bytes [from, to).
func (u *Upstream) Bytes(from, to int64) []byte {
	if u.Content != nil {
		return u.Content[from:to]
	}
	b := make([]byte, to-from)
	for i := range b {
		b[i] = VirtualByte(from + int64(i))
	}
	return b
}

func (u *Upstream) serveInMemory() *Upstream {
	l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	u.srv = &http.Server{Handler: u}
	u.configure(u.srv)
	go u.srv.Serve(l)
	u.dial = l.dial
	u.closer = func() { u.srv.Close() }
	return u
}

// slowRoute draws whether a request lands on a slow route.
func (u *Upstream) slowRoute() bool {
	if u.opts.SlowChance <= 0 {
		return false
	}
	u.routeMu.Lock()
	defer u.routeMu.Unlock()
	return u.routes.Float64() < u.opts.SlowChance
}

func (u *Upstream) configure(s *http.Server) {
	s.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		u.conns.Add(1)
		var pace waiter
		if u.opts.PerConn > 0 && u.opts.Bursts == 0 {
			pace = rate.NewLimiter(rate.Limit(u.opts.PerConn), chunk)
		}
		return context.WithValue(ctx, limiterKey{}, pace)
	}
}

// Dial connects to an in-memory upstream; nil for one on loopback.
func (u *Upstream) Dial() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return u.dial
}

// TLS is the client configuration that trusts a TLS upstream; nil otherwise.
func (u *Upstream) TLS() *tls.Config { return u.tls }

// Close stops the upstream and cuts its connections.
func (u *Upstream) Close() { u.closer() }

// Requests is the number of requests received so far.
func (u *Upstream) Requests() int64 { return u.requests.Load() }

// Open is the number of requests being answered now.
func (u *Upstream) Open() int64 { return u.open.Load() }

// MaxOpen is the most requests answered at once so far.
func (u *Upstream) MaxOpen() int64 { return u.maxOpen.Load() }

// Conns is the number of connections accepted so far.
func (u *Upstream) Conns() int64 { return u.conns.Load() }

// Served is the number of body bytes sent so far.
func (u *Upstream) Served() int64 { return u.served.Load() }

// chunk is how many bytes the upstream writes at a time.
const chunk = 16 << 10

func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := u.requests.Add(1)
	open := u.open.Add(1)
	// A request is open until its answer's last byte is written (or it ends early): what the server does
	// after that is no longer the client's.
	answered := sync.OnceFunc(func() { u.open.Add(-1) })
	defer answered()
	for old := u.maxOpen.Load(); open > old && !u.maxOpen.CompareAndSwap(old, open); old = u.maxOpen.Load() {
	}
	if d := u.opts.Limit; d != nil {
		if !d.admit() {
			d.refuse(w)
			return
		}
		defer d.leave()
	}
	var f Fault
	if u.opts.Fault != nil {
		f = u.opts.Fault(n, r)
	}
	latency := u.opts.Latency
	if f.Latency > 0 {
		latency = f.Latency
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	h := w.Header()
	h.Set("ETag", u.ETag)
	if f.ETag != "" {
		h.Set("ETag", f.ETag)
	}
	h.Set("Content-Type", "video/mp4")
	if f.Status != 0 {
		if f.RetryAfter != "" {
			h.Set("Retry-After", f.RetryAfter)
		}
		w.WriteHeader(f.Status)
		return
	}
	size := u.size
	claimed := size
	if f.ClaimSize > 0 {
		claimed = f.ClaimSize
	}
	start, end, partial := int64(0), size-1, false
	if rng := r.Header.Get("Range"); rng != "" && !u.opts.NoRange && !f.Whole {
		a, b := int64(0), size-1 // bytes=A-B, or bytes=A- as players ask
		if _, err := fmt.Sscanf(rng, "bytes=%d-%d", &a, &b); err != nil && !strings.HasSuffix(rng, "-") || a > b {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		if a >= size {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", claimed))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, end, partial = a+f.Shift, min(b, size-1)+f.Shift, true
		start, end = max(start, 0), min(end, size-1)
	}
	body := func(from, to int64) []byte { return u.Bytes(from, to) }
	length := end - start + 1
	if f.Gzip {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(u.Bytes(start, end+1))
		zw.Close()
		packed := z.Bytes()
		h.Set("Content-Encoding", "gzip")
		body = func(from, to int64) []byte { return packed[from-start : to-start] }
		end = start + int64(len(packed)) - 1
	}
	h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, claimed))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		if f.Whole {
			h.Set("Accept-Ranges", "bytes")
		}
		w.WriteHeader(http.StatusOK)
	}
	limiters := []waiter{}
	if l, _ := r.Context().Value(limiterKey{}).(waiter); l != nil {
		limiters = append(limiters, l)
	}
	if u.opts.PerConn > 0 && u.opts.Bursts > 0 {
		limiters = append(limiters, &burster{allowance: int(u.opts.PerConn * u.opts.Bursts.Seconds()), period: u.opts.Bursts})
	}
	for _, limit := range []float64{f.Rate, u.opts.PerRequest} {
		if limit > 0 {
			limiters = append(limiters, rate.NewLimiter(rate.Limit(limit), chunk))
		}
	}
	if u.slowRoute() {
		limiters = append(limiters, rate.NewLimiter(rate.Limit(u.opts.SlowRate), chunk))
	}
	rc := http.NewResponseController(w)
	var sent int64
	for pos := start; pos <= end; {
		step := min(int64(chunk), end-pos+1)
		if f.ResetAfter > 0 {
			step = min(step, max(f.ResetAfter-sent, 0))
		}
		if f.StallAfter > 0 {
			step = min(step, max(f.StallAfter-sent, 0))
		}
		if step == 0 {
			_ = rc.Flush()
			if f.ResetAfter > 0 && sent >= f.ResetAfter {
				panic(http.ErrAbortHandler)
			}
			<-r.Context().Done() // stalled
			return
		}
		for _, l := range limiters {
			if err := l.WaitN(r.Context(), int(step)); err != nil {
				return
			}
		}
		if _, err := w.Write(body(pos, pos+step)); err != nil {
			return
		}
		_ = rc.Flush()
		pos += step
		sent += step
		u.served.Add(step)
		if pos > end {
			answered()
		}
	}
}

// pipeListener accepts in-memory connections.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "upstream.test:80" }
