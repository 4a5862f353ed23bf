package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mflow/internal/access"
	"mflow/internal/link"
	"mflow/internal/server"
	"mflow/internal/task"
	"mflow/internal/testsync"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func always(f upstreamtest.Fault) func(int64, *http.Request) upstreamtest.Fault {
	return func(int64, *http.Request) upstreamtest.Fault { return f }
}

// askAs asks the proxy's handler for path as a player at remote would.
func askAs(p *proxy, method, remote, path string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	req.RemoteAddr, req.Host = remote, "localhost:6800"
	w := httptest.NewRecorder()
	defer func() {
		if v := recover(); v != nil && v != http.ErrAbortHandler { // a cut: a recorder cannot be reset
			panic(v)
		}
	}()
	p.srv.Handler().ServeHTTP(w, req)
	return w
}

func TestAFailedTaskFailsAsItsLinkDoes(t *testing.T) {
	notFound := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: always(upstreamtest.Fault{Status: http.StatusNotFound})})
	defer notFound.Close()
	unavailable := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: always(upstreamtest.Fault{Status: http.StatusServiceUnavailable})})
	defer unavailable.Close()
	picky := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		if r.Header.Get("X-Drive") != "" {
			return upstreamtest.Fault{Status: http.StatusBadRequest}
		}
		return upstreamtest.Fault{}
	}})
	defer picky.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	logs := &testsync.SyncBuffer{}
	p := newProxy(t, func(s *server.Server) {
		s.Logger = slog.New(slog.NewTextHandler(logs, nil))
		s.Tasks = newStore(t, s.Play.Resolver)
	})
	for name, c := range map[string]struct {
		uri, header string
		status      int    // what the link's own play answers over ?url=, or, with a header, what it must
		reason      string // in the one-line body
	}{
		"404":                {uri: notFound.URL + "/film.mp4", status: 404, reason: "upstream answered 404"},
		"503":                {uri: unavailable.URL + "/film.mp4", status: 502, reason: "upstream answered 503"},
		"refused connection": {uri: closed.URL + "/film.mp4", status: 502, reason: "unreachable"},
		"a header refused":   {uri: picky.URL + "/film.mp4", header: "X-Drive: 1\n", status: 400, reason: "upstream answered 400"},
	} {
		t.Run(name, func(t *testing.T) {
			if c.header == "" {
				resp, body := p.get(t, "GET", streamPath(c.uri), "")
				if resp.StatusCode != c.status || !strings.Contains(string(body), c.reason) {
					t.Fatalf("over ?url=: %d %q, want %d with %q", resp.StatusCode, body, c.status, c.reason)
				}
			}
			gid, err := p.srv.Tasks.Add(task.Addition{URIs: []string{c.uri}, Options: map[string]string{"header": c.header}, Position: -1, From: access.Loopback})
			if err != nil {
				t.Fatal(err)
			}
			for _, when := range []string{"right after the add", "once the task failed", "again"} {
				if when != "right after the add" {
					testsync.WaitFor(t, "the task to fail", func() bool { v, err := p.srv.Tasks.Get(gid); return err == nil && v.State == task.Failed })
				}
				for _, method := range []string{"GET", "HEAD"} {
					warned := strings.Count(logs.String(), "level=WARN")
					resp, body := p.get(t, method, "/stream?gid="+gid, "")
					if resp.StatusCode != c.status {
						t.Errorf("%s, %s: %d %q, want %d as over ?url=", when, method, resp.StatusCode, body, c.status)
					}
					if method == "GET" && (!strings.HasPrefix(string(body), "mflow: ") || strings.Count(string(body), "\n") != 1 || !strings.Contains(string(body), c.reason)) {
						t.Errorf("%s, GET: body %q, want one line with %q", when, body, c.reason)
					}
					if n := strings.Count(logs.String(), "level=WARN") - warned; n != 1 {
						t.Errorf("%s, %s: %d WARN lines, want one", when, method, n)
					}
				}
			}
		})
	}
}

func TestATargetRefusedToOnePlayerFailsThatPlayOnly(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	p := guarded(t, &access.Policy{})
	p.srv.Tasks = newStore(t, p.srv.Play.Resolver)
	events, unsubscribe := p.srv.Tasks.Subscribe()
	defer unsubscribe()
	gid, err := p.srv.Tasks.Add(task.Addition{URIs: []string{u.URL + "/film.mp4"}, Position: -1, From: access.Loopback})
	if err != nil {
		t.Fatal(err)
	}
	testsync.WaitFor(t, "the background probe", func() bool { v, _ := p.srv.Tasks.Get(gid); return v.Size == int64(len(file)) })
	if w := askAs(p, "GET", internetPlayer, "/stream?gid="+gid); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "refused by policy") {
		t.Fatalf("an internet player: %d %q, want 403 refused by policy", w.Code, w.Body)
	}
	if v, _ := p.srv.Tasks.Get(gid); v.State != task.Waiting {
		t.Errorf("the task is %v after one player was refused, want it waiting for the others", v.State)
	}
	if w := askAs(p, "GET", localPlayer, "/stream?gid="+gid); w.Code != 200 || !bytes.Equal(w.Body.Bytes(), file) {
		t.Errorf("a player on this machine then: %d, %d bytes", w.Code, w.Body.Len())
	}
	for len(events) > 0 {
		if ev := <-events; ev.Kind == task.EventFailed {
			t.Errorf("the task's clients heard it failed: %+v", ev)
		}
	}
}

// versioned serves a file as net/http's ServeContent does, with an ETag and a Last-Modified: the
// reference for conditional and multi-range answers, and an upstream for mflow to proxy.
func versioned(file []byte, modified time.Time) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v7"`)
		w.Header().Set("Content-Type", "video/mp4")
		http.ServeContent(w, r, "film.mp4", modified, bytes.NewReader(file))
	}))
}

func TestConditionalRequestsAnswerAsServeContent(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	modified := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	ref := versioned(file, modified)
	defer ref.Close()
	p := newProxy(t, nil)
	date := func(d time.Duration) string { return modified.Add(d).Format(http.TimeFormat) }
	conditions := []map[string]string{
		{"If-None-Match": `"v7"`}, {"If-None-Match": `W/"v7"`}, {"If-None-Match": `"v6"`}, {"If-None-Match": `*`}, {"If-None-Match": `"v6", "v7"`},
		{"If-Modified-Since": date(0)}, {"If-Modified-Since": date(time.Hour)}, {"If-Modified-Since": date(-time.Hour)}, {"If-Modified-Since": "junk"},
		{"If-Match": `"v7"`}, {"If-Match": `"v6"`}, {"If-Match": `*`}, {"If-Match": `W/"v7"`}, {"If-Match": `"v6", "v7"`},
		{"If-Unmodified-Since": date(0)}, {"If-Unmodified-Since": date(-time.Hour)}, {"If-Unmodified-Since": date(time.Hour)},
		{"If-Range": `"v7"`}, {"If-Range": `"v6"`}, {"If-Range": `W/"v7"`}, {"If-Range": date(0)}, {"If-Range": date(-time.Hour)},
		{"If-Match": `"v6"`, "If-None-Match": `"v7"`},           // 412 comes first
		{"If-None-Match": `"v6"`, "If-Modified-Since": date(0)}, // an If-None-Match makes If-Modified-Since moot
		{"If-Match": `"v7"`, "If-Unmodified-Since": date(-time.Hour)},
		{"If-None-Match": `"v7"`, "If-Range": `"v6"`},
	}
	compared := []string{"ETag", "Last-Modified", "Content-Range", "Content-Length", "Content-Type", "Accept-Ranges"}
	for _, cond := range conditions {
		for _, rng := range []string{"", "bytes=100-199"} {
			for _, method := range []string{"GET", "HEAD"} {
				ask := func(u string) (*http.Response, []byte) {
					req, _ := http.NewRequestWithContext(t.Context(), method, u, nil)
					for k, v := range cond {
						req.Header.Set(k, v)
					}
					if rng != "" {
						req.Header.Set("Range", rng)
					}
					resp, err := p.player.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					body, _ := io.ReadAll(resp.Body)
					return resp, body
				}
				want, wantBody := ask(ref.URL + "/film.mp4")
				got, gotBody := ask(p.URL + streamPath(ref.URL+"/film.mp4"))
				what := fmt.Sprintf("%s %v Range %q", method, cond, rng)
				if got.StatusCode != want.StatusCode {
					t.Errorf("%s: %d, ServeContent answers %d", what, got.StatusCode, want.StatusCode)
					continue
				}
				if got.StatusCode == http.StatusPreconditionFailed {
					continue // mflow says why in a line; ServeContent sends nothing
				}
				for _, name := range compared {
					if g, w := got.Header.Get(name), want.Header.Get(name); g != w {
						t.Errorf("%s: %s %q, ServeContent sends %q", what, name, g, w)
					}
				}
				if !bytes.Equal(gotBody, wantBody) {
					t.Errorf("%s: %d body bytes, not ServeContent's %d", what, len(gotBody), len(wantBody))
				}
			}
		}
	}
}

// parts reads a multipart/byteranges answer: each part's Content-Range and bytes.
func parts(t *testing.T, resp *http.Response, body []byte) (ranges []string, data [][]byte) {
	t.Helper()
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/byteranges" {
		t.Fatalf("Content-Type %q, want multipart/byteranges", resp.Header.Get("Content-Type"))
	}
	r := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		part, err := r.NextPart()
		if err == io.EOF {
			return ranges, data
		}
		if err != nil {
			t.Fatalf("reading the parts: %v", err)
		}
		b, err := io.ReadAll(part)
		if err != nil {
			t.Fatal(err)
		}
		ranges, data = append(ranges, part.Header.Get("Content-Range")), append(data, b)
	}
}

func TestSeveralRangesAnswerMultipartAsServeContent(t *testing.T) {
	file := upstreamtest.RandomFile(6_000_000)
	ref := versioned(file, time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC))
	defer ref.Close()
	var mu sync.Mutex
	var asked []string
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, r.Header.Get("Range"))
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	p := newProxy(t, nil)
	for _, rng := range []string{"bytes=0-99,5000000-5000099", "bytes=5000000-5000099,0-99,70000-", "bytes=10-19,15-24,-100"} {
		mu.Lock()
		asked = nil
		mu.Unlock()
		wantResp, wantBytes := getFrom(t, p.player, ref.URL+"/film.mp4", rng)
		got, gotBytes := p.get(t, "GET", streamPath(u.URL+"/film.mp4"), rng)
		if got.StatusCode != 206 || wantResp.StatusCode != 206 {
			t.Fatalf("%s: %d (ServeContent %d), want 206", rng, got.StatusCode, wantResp.StatusCode)
		}
		if got.Header.Get("Content-Length") != fmt.Sprint(len(gotBytes)) {
			t.Errorf("%s: Content-Length %s for %d bytes", rng, got.Header.Get("Content-Length"), len(gotBytes))
		}
		gotRanges, gotData := parts(t, got, gotBytes)
		wantRanges, wantData := parts(t, wantResp, wantBytes)
		if !slices.Equal(gotRanges, wantRanges) || !slices.EqualFunc(gotData, wantData, bytes.Equal) {
			t.Errorf("%s: parts %q, ServeContent's %q (bytes equal: %v)", rng, gotRanges, wantRanges, slices.EqualFunc(gotData, wantData, bytes.Equal))
		}
		head, headBody := p.get(t, "HEAD", streamPath(u.URL+"/film.mp4"), rng)
		if head.StatusCode != 206 || head.Header.Get("Content-Length") != got.Header.Get("Content-Length") || len(headBody) != 0 {
			t.Errorf("%s: HEAD %d, Content-Length %s, want 206 and GET's %s", rng, head.StatusCode, head.Header.Get("Content-Length"), got.Header.Get("Content-Length"))
		}
	}
	mu.Lock()
	asked = nil
	mu.Unlock()
	p.get(t, "GET", streamPath(u.URL+"/other.mp4"), "bytes=0-99,5000000-5000099")
	mu.Lock()
	if !slices.Equal(asked, []string{"bytes=0-99", "bytes=5000000-5000099"}) {
		t.Errorf("upstream requests %q, want the probe for the first part and one for the second", asked)
	}
	mu.Unlock()
	// More ranges than mflow takes, or more bytes than the file: the whole file, as nginx and ServeContent.
	many := "bytes=0-0" + strings.Repeat(",1-1", 16)
	for _, rng := range []string{many, "bytes=0-,0-"} {
		if resp, body := p.get(t, "GET", streamPath(u.URL+"/film.mp4"), rng); resp.StatusCode != 200 || !bytes.Equal(body, file) {
			t.Errorf("%.30s…: %d, %d bytes, want the whole file", rng, resp.StatusCode, len(body))
		}
	}
}

func getFrom(t *testing.T, c *http.Client, u, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", u, nil)
	req.Header.Set("Range", rng)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// slowPlayer is a player on a raw TCP connection with a 64 KiB receive buffer, reading 400 KB/s.
type slowPlayer struct {
	conn net.Conn
	mu   sync.Mutex
	log  []received // what arrived when
	end  error      // how the connection ended
	done chan struct{}
}

type received struct {
	at time.Time
	n  int
}

func playSlowly(t *testing.T, addr, path string) *slowPlayer {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
		return err
	}}
	conn, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path)
	pl := &slowPlayer{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(pl.done)
		buf := make([]byte, 40_000)
		tick := time.NewTicker(100 * time.Millisecond) // 40 KB a tenth of a second
		defer tick.Stop()
		for range tick.C {
			n, err := io.ReadFull(conn, buf)
			pl.mu.Lock()
			pl.log = append(pl.log, received{time.Now(), n})
			if err != nil {
				pl.end = err
			}
			pl.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return pl
}

// after is how many bytes the player got after t.
func (pl *slowPlayer) after(at time.Time) int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	n := 0
	for _, r := range pl.log {
		if r.at.After(at) {
			n += r.n
		}
	}
	return n
}

func (pl *slowPlayer) got() int { return pl.after(time.Time{}) }

// closeTimes is a listener that notes when each connection it accepted was closed by the server.
type closeTimes struct {
	net.Listener
	mu     sync.Mutex
	closed []time.Time
}

func (l *closeTimes) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &timedConn{TCPConn: c.(*net.TCPConn), l: l}, nil
}

// first is when the first connection was closed; zero before.
func (l *closeTimes) first() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.closed) == 0 {
		return time.Time{}
	}
	return l.closed[0]
}

// timedConn is a connection whose Close is noted; SetLinger and the rest are the TCP connection's.
type timedConn struct {
	*net.TCPConn
	l *closeTimes
}

func (c *timedConn) Close() error {
	c.l.mu.Lock()
	c.l.closed = append(c.l.closed, time.Now())
	c.l.mu.Unlock()
	return c.TCPConn.Close()
}

func TestEveryCutResetsThePlayersConnection(t *testing.T) {
	file := upstreamtest.RandomFile(64 << 20)
	for _, cut := range []string{"pause", "remove", "a failure mid-stream"} {
		t.Run(cut, func(t *testing.T) {
			var mu sync.Mutex
			gone := false
			opts := upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
				mu.Lock()
				defer mu.Unlock()
				if gone {
					return upstreamtest.Fault{Status: http.StatusNotFound}
				}
				return upstreamtest.Fault{}
			}}
			if cut == "a failure mid-stream" {
				opts.PerConn = 100_000 // requests stay open while the player reads: the next ones meet the 404
			}
			u := upstreamtest.New(file, opts)
			defer u.Close()
			closes := &closeTimes{}
			p := newProxy(t, func(s *server.Server) { s.Tasks = newStore(t, s.Play.Resolver) }, func(ts *httptest.Server) {
				closes.Listener = ts.Listener
				ts.Listener = closes
			})
			gid, _ := p.srv.Tasks.Add(task.Addition{URIs: []string{u.URL + "/film.mp4"}, Position: -1, From: access.Loopback})
			pl := playSlowly(t, p.Listener.Addr().String(), "/stream?gid="+gid)
			testsync.WaitFor(t, "the player to get its first bytes", func() bool { return pl.got() > 0 })
			var err error
			switch cut {
			case "pause", "remove":
				// The sockets' buffers fill: the upstream goes quiet once mflow's write to the player blocks.
				testsync.WaitFor(t, "the stream to block on the player", testsync.Stable(u.Served))
				if cut == "pause" {
					_, err = p.srv.Tasks.Pause(gid)
				} else {
					_, err = p.srv.Tasks.Remove(gid)
				}
			default: // the file is gone: the next chunk's 404 fails the stream after its first byte
				mu.Lock()
				gone = true
				mu.Unlock()
			}
			if err != nil {
				t.Fatal(err)
			}
			at := time.Now()
			select {
			case <-pl.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("the player still reads %v after the cut, %d bytes in all", time.Since(at), pl.got())
			}
			// What mflow's side still held for the player when it reset the connection is dropped, not
			// delivered: after the reset the player reads at most what its own receive buffer held (64 KiB,
			// which the kernel doubles). Counted from the reset itself, however late a busy machine makes it.
			reset := closes.first()
			if reset.IsZero() {
				t.Fatalf("the player's connection ended without mflow closing it")
			}
			if n := pl.after(reset); n > 128<<10 && cut != "a failure mid-stream" {
				t.Errorf("the player got %d bytes after mflow reset its connection (%v after the %s), more than its receive buffer", n, reset.Sub(at), cut)
			}
			if !errors.Is(pl.end, syscall.ECONNRESET) {
				t.Errorf("the connection ended with %v after %d bytes, want a reset", pl.end, pl.got())
			}
		})
	}
}

func TestAnEmptyFileKeepsItsValidatorsAndType(t *testing.T) {
	u := upstreamtest.New(nil, upstreamtest.Options{})
	defer u.Close()
	resp, _ := newProxy(t, nil).get(t, "GET", streamPath(u.URL+"/empty.mp4"), "")
	if resp.StatusCode != 200 || resp.Header.Get("ETag") != u.ETag || resp.Header.Get("Content-Type") != "video/mp4" {
		t.Errorf("%d, ETag %q, Content-Type %q", resp.StatusCode, resp.Header.Get("ETag"), resp.Header.Get("Content-Type"))
	}
}

func TestAnUpstreamThatCannotBeReachedFailsAtOnce(t *testing.T) {
	for name, dialErr := range map[string]error{
		"no such host":           &net.DNSError{Err: "no such host", Name: "drive.invalid", IsNotFound: true},
		"network is unreachable": &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ENETUNREACH)},
	} {
		t.Run(name, func(t *testing.T) {
			var dials int
			var mu sync.Mutex
			p := newProxy(t, func(s *server.Server) {
				c := upstream.NewClient(upstream.Config{MaxRedirects: 3, Dial: func(context.Context, string, string) (net.Conn, error) {
					mu.Lock()
					defer mu.Unlock()
					dials++
					return nil, dialErr
				}})
				s.Play.Engine.Client = c
				s.Play.Resolver = resolver(s, link.Config{})
			})
			resp, body := p.get(t, "GET", streamPath("http://drive.invalid/film.mp4"), "")
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), name) {
				t.Errorf("%d %q, want 502 saying %q", resp.StatusCode, body, name)
			}
			if dials != 1 {
				t.Errorf("%d tries, want one: asking again finds the same", dials)
			}
		})
	}
}

func TestNoLogLineCarriesALinksQuery(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, r *http.Request) upstreamtest.Fault {
		switch {
		case strings.Contains(r.URL.Path, "gone"):
			return upstreamtest.Fault{Status: http.StatusNotFound}
		case strings.Contains(r.URL.Path, "changing") && n%2 == 0:
			return upstreamtest.Fault{ETag: fmt.Sprintf(`"v%d"`, n)}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	redirects := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bad":
			w.Header().Set("Location", "http://[::1%zz]/x?sign=s3cr3t")
			w.WriteHeader(http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop?sign=s3cr3t&n="+r.URL.Query().Get("n")+"1", http.StatusFound)
		default:
			http.Redirect(w, r, u.URL+"/gone?sign=s3cr3t", http.StatusFound)
		}
	}))
	defer redirects.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	logs := &testsync.SyncBuffer{}
	p := guarded(t, &access.Policy{})
	p.srv.Logger = slog.New(slog.NewTextHandler(logs, nil))
	p.srv.Tasks = newStore(t, p.srv.Play.Resolver)
	gid, _ := p.srv.Tasks.Add(task.Addition{URIs: []string{u.URL + "/gone.mp4?sign=s3cr3t"}, Position: -1, From: access.Loopback})
	for _, path := range []string{
		streamPath(u.URL + "/gone.mp4?sign=s3cr3t"),
		streamPath(u.URL + "/changing.mp4?sign=s3cr3t"),
		streamPath(redirects.URL + "/bad?sign=s3cr3t"),
		streamPath(redirects.URL + "/loop?sign=s3cr3t"),
		streamPath(redirects.URL + "/hop?sign=s3cr3t"),
		streamPath(closed.URL + "/f?sign=s3cr3t"),
		"/stream?url=" + u.URL + "/gone.mp4?a=1&sign=s3cr3t",
		"/stream?gid=" + gid,
	} {
		for _, player := range []string{localPlayer, internetPlayer} {
			askAs(p, "GET", player, path)
		}
	}
	if strings.Contains(logs.String(), "s3cr3t") {
		t.Errorf("a query reached the log:\n%s", logs.String())
	}
	if strings.Count(logs.String(), "level=WARN") < 8 {
		t.Errorf("fewer failed plays logged than made:\n%s", logs.String())
	}
}

func TestMflowSaysWhoAskedAndRefusesALoop(t *testing.T) {
	var mu sync.Mutex
	var via []string
	u := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		mu.Lock()
		defer mu.Unlock()
		via = append(via, r.Header.Get("Via"))
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	p := newProxy(t, nil)
	if resp, _ := p.get(t, "GET", streamPath(u.URL+"/f"), ""); resp.StatusCode != 200 {
		t.Fatalf("%d", resp.StatusCode)
	}
	mu.Lock()
	if len(via) == 0 || slices.ContainsFunc(via, func(v string) bool { return v != "1.1 mflow" }) {
		t.Errorf("Via headers upstream: %q, want 1.1 mflow on every request", via)
	}
	mu.Unlock()
	for header, want := range map[string]int{"1.1 mflow": http.StatusLoopDetected, "1.0 nginx, 1.1 mflow": http.StatusLoopDetected, "1.1 nginx": 200, "1.1 mflowish": 200} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", p.URL+streamPath(u.URL+"/f"), nil)
		req.Header.Set("Via", header)
		resp, err := p.player.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (want != 200 && !strings.HasPrefix(string(body), "mflow: ")) {
			t.Errorf("Via %q: %d %q, want %d", header, resp.StatusCode, body, want)
		}
	}
}
