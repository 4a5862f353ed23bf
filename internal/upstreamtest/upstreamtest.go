// Package upstreamtest provides upstream servers for tests: they serve a file with Range, throttle each
// connection, and fail on demand (reset, stall, wrong status, wrong range, another version).
package upstreamtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// Fault is how to answer one request, other than faithfully. The zero Fault answers faithfully.
type Fault struct {
	Status     int    // answer this status with an empty body
	RetryAfter string // the Retry-After header for Status
	Whole      bool   // answer 200 with the whole file, as if Range were unknown
	Shift      int64  // answer the asked range moved by Shift bytes, with a Content-Range that says so
	ETag       string // answer with this ETag (another version of the file)
	// ResetAfter, when positive, cuts the connection after that many body bytes.
	ResetAfter int64
	// StallAfter, when positive, stops sending after that many body bytes until the request ends.
	StallAfter int64
	// Rate, when positive, caps this answer's speed in bytes per second (on top of PerConn).
	Rate float64
}

// Options shape an upstream's answers.
type Options struct {
	// PerConn caps each connection's speed in bytes per second, as drives do; 0 is no cap.
	PerConn float64
	// NoRange makes every answer a 200 with the whole file, as a server without Range support.
	NoRange bool
	// Fault, when set, picks the fault for the nth request (counting from 1).
	Fault func(n int64, r *http.Request) Fault
}

// Upstream serves Content at any path.
type Upstream struct {
	URL     string  // base URL; the tests ask for URL + "/file"
	Content []byte  // the file
	ETag    string  // sent with every answer unless a Fault says otherwise
	opts    Options // how to answer

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

// New starts an upstream on loopback.
func New(content []byte, opts Options) *Upstream {
	u := &Upstream{Content: content, ETag: `"v1"`, opts: opts}
	ts := httptest.NewUnstartedServer(u)
	u.configure(ts.Config)
	ts.Start()
	u.URL, u.closer = ts.URL, ts.Close
	return u
}

// NewTLS starts an upstream on loopback over TLS, speaking HTTP/2 when h2 is set.
func NewTLS(content []byte, h2 bool, opts Options) *Upstream {
	u := &Upstream{Content: content, ETag: `"v1"`, opts: opts}
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
	u := &Upstream{Content: content, ETag: `"v1"`, URL: "http://upstream.test", opts: opts}
	l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	u.srv = &http.Server{Handler: u}
	u.configure(u.srv)
	go u.srv.Serve(l)
	u.dial = l.dial
	u.closer = func() { u.srv.Close() }
	return u
}

func (u *Upstream) configure(s *http.Server) {
	s.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		u.conns.Add(1)
		limit := rate.Inf
		if u.opts.PerConn > 0 {
			limit = rate.Limit(u.opts.PerConn)
		}
		return context.WithValue(ctx, limiterKey{}, rate.NewLimiter(limit, chunk))
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
	defer u.open.Add(-1)
	for old := u.maxOpen.Load(); open > old && !u.maxOpen.CompareAndSwap(old, open); old = u.maxOpen.Load() {
	}
	var f Fault
	if u.opts.Fault != nil {
		f = u.opts.Fault(n, r)
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
	size := int64(len(u.Content))
	start, end, partial := int64(0), size-1, false
	if rng := r.Header.Get("Range"); rng != "" && !u.opts.NoRange && !f.Whole {
		var a, b int64
		if _, err := fmt.Sscanf(rng, "bytes=%d-%d", &a, &b); err != nil || a > b {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		if a >= size {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, end, partial = a+f.Shift, min(b, size-1)+f.Shift, true
		start, end = max(start, 0), min(end, size-1)
	}
	h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		h.Set("Accept-Ranges", "none")
		w.WriteHeader(http.StatusOK)
	}
	limiter, _ := r.Context().Value(limiterKey{}).(*rate.Limiter)
	var own *rate.Limiter
	if f.Rate > 0 {
		own = rate.NewLimiter(rate.Limit(f.Rate), chunk)
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
		for _, l := range []*rate.Limiter{limiter, own} {
			if l != nil && l.Limit() != rate.Inf {
				if err := l.WaitN(r.Context(), int(step)); err != nil {
					return
				}
			}
		}
		if _, err := w.Write(u.Content[pos : pos+step]); err != nil {
			return
		}
		_ = rc.Flush()
		pos += step
		sent += step
		u.served.Add(step)
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
