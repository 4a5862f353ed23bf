package server_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mflow/internal/testsync"

	"go.uber.org/goleak"

	"mflow/internal/access"
	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/link"
	"mflow/internal/play"
	"mflow/internal/rpc"
	"mflow/internal/server"
	"mflow/internal/task"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// proxy is an mflow server on loopback and a player's client for it.
type proxy struct {
	*httptest.Server
	srv    *server.Server
	player *http.Client
}

// newProxy is mflow's server as tune sets it, on loopback; before, when given, changes the test server
// before it starts (its listener).
func newProxy(t *testing.T, tune func(*server.Server), before ...func(*httptest.Server)) *proxy {
	client := upstream.NewClient(upstream.Config{HeaderTimeout: time.Second, MaxRedirects: 3, UserAgent: "mflow-test"})
	quiet := slog.New(slog.DiscardHandler)
	s := &server.Server{
		Play: &play.Service{
			Engine: &engine.Engine{Client: client, ChunkSize: 64 << 10, Connections: 4, Retries: 5, RetryBase: time.Millisecond, Logger: quiet},
			Logger: quiet,
		},
		Version: "test",
		Logger:  quiet,
	}
	s.Play.Resolver = resolver(s, link.Config{})
	if tune != nil {
		tune(s)
	}
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.Config.ConnContext = server.ConnContext
	for _, b := range before {
		b(ts)
	}
	ts.Start()
	player := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(func() {
		ts.Close()
		s.Play.Resolver.Close()
		s.Play.Engine.Close()
		player.CloseIdleConnections()
		client.CloseIdleConnections()
	})
	return &proxy{Server: ts, srv: s, player: player}
}

// resolver is a resolver for the proxy s as cfg changes newProxy's: its engine's client, 5 retries and 4
// tries at once unless cfg says. A tune that replaces the proxy's resolver builds it so.
func resolver(s *server.Server, cfg link.Config) *link.Resolver {
	cfg.Client = cmp.Or(cfg.Client, s.Play.Engine.Client)
	if cfg.Retry == (upstream.Retry{}) {
		cfg.Retry = upstream.Retry{Max: 5, Base: time.Millisecond}
	}
	cfg.Hedge = cmp.Or(cfg.Hedge, 4)
	return link.New(cfg)
}

// get asks the proxy for path with an optional Range and returns the answer with its body read.
func (p *proxy) get(t *testing.T, method, path, rng string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, p.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := p.player.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, body
}

func streamPath(u string) string { return "/stream?url=" + url.QueryEscape(u) }

func TestIndexSaysWhatAndHow(t *testing.T) {
	p := newProxy(t, nil)
	resp, body := p.get(t, "GET", "/", "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), "mflow test") || !strings.Contains(string(body), "/stream?url=") {
		t.Fatalf("GET / = %d %q", resp.StatusCode, body)
	}
}

func TestBadRequestsAreRefusedWithAReason(t *testing.T) {
	p := newProxy(t, nil)
	for path, want := range map[string]int{
		"/stream":                        400,
		"/stream?url=":                   400,
		"/stream?url=ftp%3A%2F%2Fx%2Ff":  400,
		"/stream?url=%2Frelative%2Fpath": 400,
		"/stream?url=http%3A%2F%2F":      400,
		"/stream?url=%25zz":              400,
		"/stream?url=http://[::1%zz]/x":  400,
		"/stream?gid=0123456789abcdef":   404,
		"/stream/0123456789abcdef/f.mkv": 404, // a task's play link, of no task
		"/stream/0123456789abcde/f.mkv":  400, // not a GID: a name, and no url
		"/nowhere":                       404,
	} {
		resp, body := p.get(t, "GET", path, "")
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d %q, want %d", path, resp.StatusCode, body, want)
		}
		if want == 400 && (!strings.HasPrefix(string(body), "mflow: ") || strings.Count(string(body), "\n") != 1) {
			t.Errorf("GET %s: reason %q is not one line", path, body)
		}
	}
	req, _ := http.NewRequestWithContext(t.Context(), "POST", p.URL+"/stream?url=http://x/y", nil)
	resp, err := p.player.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /stream = %d, want 405", resp.StatusCode)
	}
}

func TestRangesAndHeaders(t *testing.T) {
	file := upstreamtest.RandomFile(1_000_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	p := newProxy(t, nil)
	path := streamPath(u.URL + "/films/My%20Film.mp4")
	for _, c := range []struct {
		rng          string
		status       int
		contentRange string
		from, to     int
	}{
		{"", 200, "", 0, 1_000_000},
		{"bytes=0-", 206, "bytes 0-999999/1000000", 0, 1_000_000},
		{"bytes=100-199", 206, "bytes 100-199/1000000", 100, 200},
		{"bytes=999000-5000000", 206, "bytes 999000-999999/1000000", 999_000, 1_000_000},
		{"bytes=-500", 206, "bytes 999500-999999/1000000", 999_500, 1_000_000},
		{"bytes=1000000-", 416, "bytes */1000000", 0, 0},
		{"bytes=junk", 200, "", 0, 1_000_000},
	} {
		resp, body := p.get(t, "GET", path, c.rng)
		h := resp.Header
		if resp.StatusCode != c.status || h.Get("Content-Range") != c.contentRange {
			t.Errorf("Range %q: %d %q, want %d %q", c.rng, resp.StatusCode, h.Get("Content-Range"), c.status, c.contentRange)
			continue
		}
		if h.Get("Accept-Ranges") != "bytes" {
			t.Errorf("Range %q: Accept-Ranges %q", c.rng, h.Get("Accept-Ranges"))
		}
		if c.status == 416 {
			continue
		}
		if !bytes.Equal(body, file[c.from:c.to]) || h.Get("Content-Length") != fmt.Sprint(c.to-c.from) {
			t.Errorf("Range %q: %d bytes (Content-Length %s), want bytes %d-%d", c.rng, len(body), h.Get("Content-Length"), c.from, c.to-1)
		}
		if h.Get("Content-Type") != "video/mp4" || h.Get("ETag") != `"v1"` {
			t.Errorf("Range %q: Content-Type %q, ETag %q", c.rng, h.Get("Content-Type"), h.Get("ETag"))
		}
		if cd := h.Get("Content-Disposition"); cd != `inline; filename="My Film.mp4"` {
			t.Errorf("Range %q: Content-Disposition %q", c.rng, cd)
		}
	}
	resp, body := p.get(t, "HEAD", path, "bytes=10-19")
	if resp.StatusCode != 206 || resp.Header.Get("Content-Length") != "10" || len(body) != 0 {
		t.Errorf("HEAD: %d, Content-Length %q, %d body bytes", resp.StatusCode, resp.Header.Get("Content-Length"), len(body))
	}
}

func TestRandomRangesThroughTheProxy(t *testing.T) {
	file := upstreamtest.RandomFile(3<<20 + 777)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	p := newProxy(t, nil)
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		a := r.IntN(len(file))
		b := a + r.IntN(len(file)-a)
		resp, body := p.get(t, "GET", streamPath(u.URL+"/f.bin"), fmt.Sprintf("bytes=%d-%d", a, b))
		if resp.StatusCode != 206 || !bytes.Equal(body, file[a:b+1]) {
			t.Fatalf("bytes=%d-%d: status %d, %d bytes, equal %v", a, b, resp.StatusCode, len(body), bytes.Equal(body, file[a:b+1]))
		}
	}
}

func TestContentTypeFromTheExtensionWhenUpstreamSendsNone(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil // ServeContent would sniff otherwise
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader([]byte("0123456789")))
	}))
	defer up.Close()
	p := newProxy(t, nil)
	resp, body := p.get(t, "GET", streamPath(up.URL+"/a/film.mkv?token=1"), "")
	if ct := resp.Header.Get("Content-Type"); ct != "video/x-matroska" || string(body) != "0123456789" {
		t.Errorf("Content-Type %q, body %q", ct, body)
	}
}

func TestEmptyFileIsAnEmpty200(t *testing.T) {
	ranged := upstreamtest.New(nil, upstreamtest.Options{})
	defer ranged.Close()
	plain := upstreamtest.New(nil, upstreamtest.Options{NoRange: true}) // as nginx answers for an empty file
	defer plain.Close()
	p := newProxy(t, nil)
	for _, u := range []*upstreamtest.Upstream{ranged, plain} {
		for _, rng := range []string{"", "bytes=0-"} {
			resp, body := p.get(t, "GET", streamPath(u.URL+"/empty"), rng)
			if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Length") != "0" {
				t.Errorf("Range %q: %d, %d bytes, Content-Length %q", rng, resp.StatusCode, len(body), resp.Header.Get("Content-Length"))
			}
		}
	}
}

func TestUpstreamFailuresAreExplained(t *testing.T) {
	notFound := upstreamtest.New(upstreamtest.RandomFile(10), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusNotFound}
	}})
	defer notFound.Close()
	broken := upstreamtest.New(upstreamtest.RandomFile(10), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusInternalServerError}
	}})
	defer broken.Close()
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer silent.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	p := newProxy(t, nil)
	for name, c := range map[string]struct {
		url    string
		status int
		reason string
	}{
		"404":         {notFound.URL + "/f", 404, "upstream answered 404 Not Found"},
		"500":         {broken.URL + "/f", 502, "upstream answered 500"},
		"timeout":     {silent.URL + "/f", 504, "timed out"},
		"unreachable": {closed.URL + "/f", 502, "unreachable"},
	} {
		resp, body := p.get(t, "GET", streamPath(c.url), "")
		if resp.StatusCode != c.status || !strings.Contains(string(body), c.reason) {
			t.Errorf("%s: %d %q, want %d with %q", name, resp.StatusCode, body, c.status, c.reason)
		}
	}
}

// hopLog records the Cookie each redirect hop received.
type hopLog struct {
	mu      sync.Mutex
	cookies []string
}

// redirector answers /hop/N with a redirect to /hop/N-1, and /hop/0 with one to target.
func redirector(target string, log *hopLog) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.mu.Lock()
		log.cookies = append(log.cookies, r.Header.Get("Cookie"))
		log.mu.Unlock()
		var n int
		fmt.Sscanf(r.URL.Path, "/hop/%d", &n)
		if n == 0 {
			http.Redirect(w, r, target, http.StatusFound)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/hop/%d", n-1), http.StatusTemporaryRedirect)
	}))
}

func TestRedirectsAreFollowedUpToTheLimit(t *testing.T) {
	file := upstreamtest.RandomFile(200_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	redir := redirector(u.URL+"/cdn/file.mp4", &hopLog{})
	defer redir.Close()
	p := newProxy(t, nil)

	resp, body := p.get(t, "GET", streamPath(redir.URL+"/hop/2"), "")
	if resp.StatusCode != 200 || !bytes.Equal(body, file) {
		t.Fatalf("3 redirects: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = p.get(t, "GET", streamPath(redir.URL+"/hop/3"), "")
	if resp.StatusCode != 502 || !strings.Contains(string(body), "too many redirects") {
		t.Fatalf("4 redirects: %d %q, want 502 naming the redirects", resp.StatusCode, body)
	}
}

func TestLinkHeadersReachEveryHop(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	var atUpstream atomic.Int64
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		if r.Header.Get("Cookie") != "session=abc" || r.Header.Get("User-Agent") != "DriveUA/1.0" {
			return upstreamtest.Fault{Status: http.StatusForbidden}
		}
		atUpstream.Add(1)
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	hops := &hopLog{}
	redir := redirector(u.URL+"/cdn/file.mp4", hops)
	defer redir.Close()
	var gid string
	p := newProxy(t, func(s *server.Server) {
		s.Tasks = newStore(t, s.Play.Resolver)
		var err error
		gid, err = s.Tasks.Add(task.Addition{URIs: []string{redir.URL + "/hop/1"}, Options: map[string]string{
			"header": "Cookie: session=abc\nUser-Agent: DriveUA/1.0\n", "out": "Film (2024).mp4"}, GID: "4c885fede4f1d14a", Position: -1, From: access.Loopback})
		if err != nil {
			t.Fatal(err)
		}
	})
	resp, body := p.get(t, "GET", "/stream?gid="+gid, "")
	if resp.StatusCode != 200 || !bytes.Equal(body, file) {
		t.Fatalf("%d, %d bytes: %s", resp.StatusCode, len(body), body[:min(len(body), 200)])
	}
	hops.mu.Lock()
	defer hops.mu.Unlock()
	if len(hops.cookies) != 2 {
		t.Errorf("%d redirect hops seen, want 2", len(hops.cookies))
	}
	for i, c := range hops.cookies {
		if c != "session=abc" {
			t.Errorf("redirect hop %d got Cookie %q", i, c)
		}
	}
	if atUpstream.Load() < 2 {
		t.Errorf("the upstream saw %d requests with the link's headers", atUpstream.Load())
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != `inline; filename="Film (2024).mp4"` {
		t.Errorf("Content-Disposition %q, want the task's name", cd)
	}
}

func TestUpstreamWithoutRangeIsRefusedOrRelayed(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	u := upstreamtest.New(file, upstreamtest.Options{NoRange: true})
	defer u.Close()
	resp, body := newProxy(t, nil).get(t, "GET", streamPath(u.URL+"/f"), "")
	if resp.StatusCode != 403 || !strings.Contains(string(body), "Range") {
		t.Fatalf("without --relay-no-range: %d %q, want 403 naming Range", resp.StatusCode, body)
	}
	relay := newProxy(t, func(s *server.Server) { s.Play.RelayNoRange = true })
	resp, body = relay.get(t, "GET", streamPath(u.URL+"/f"), "bytes=1000-1999")
	if resp.StatusCode != 206 || !bytes.Equal(body, file[1000:2000]) {
		t.Fatalf("with --relay-no-range: %d, %d bytes", resp.StatusCode, len(body))
	}
}

func TestAPlayersBurstProbesOnce(t *testing.T) {
	// One chunk: every play needs one request for its bytes, and the first play's probe is that request.
	file := upstreamtest.RandomFile(50_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	p := newProxy(t, nil)
	for _, rng := range []string{"", "bytes=20000-", "bytes=-1000", "bytes=10-20"} {
		p.get(t, "GET", streamPath(u.URL+"/f"), rng)
	}
	if n := u.Requests(); n != 4 {
		t.Errorf("%d requests for four plays of a one-chunk file, want 4: one probe, reused", n)
	}
}

func TestExpiredSignedLinkIsResolvedAgainMidStream(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	var sig atomic.Int64
	sig.Store(1)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, r *http.Request) upstreamtest.Fault {
		if n == 6 {
			sig.Add(1) // the link signed at the probe expires mid-stream
		}
		if r.URL.Query().Get("sig") != fmt.Sprint(sig.Load()) {
			return upstreamtest.Fault{Status: http.StatusForbidden}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	drive := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, fmt.Sprintf("%s/file?sig=%d", u.URL, sig.Load()), http.StatusFound)
	}))
	defer drive.Close()
	p := newProxy(t, nil)
	resp, body := p.get(t, "GET", streamPath(drive.URL+"/download?id=7"), "")
	if resp.StatusCode != 200 || !bytes.Equal(body, file) {
		t.Fatalf("%d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, file))
	}
}

func TestFailureBeforeTheFirstByteGetsAnErrorStatus(t *testing.T) {
	u := upstreamtest.New(upstreamtest.RandomFile(100_000), upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		if n > 1 { // the probe passes, the chunks find the file gone
			return upstreamtest.Fault{Status: http.StatusNotFound}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	// A suffix range probes the first byte alone, so no byte reaches the player before the chunks fail.
	resp, body := newProxy(t, nil).get(t, "GET", streamPath(u.URL+"/f"), "bytes=-50000")
	if resp.StatusCode != 404 || resp.Header.Get("Content-Range") != "" {
		t.Fatalf("%d %q, want 404", resp.StatusCode, body)
	}
}

func TestChangedFileMidStreamCutsTheAnswer(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		if n > 4 {
			return upstreamtest.Fault{ETag: `"v2"`}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	p := newProxy(t, nil)
	resp, err := p.player.Get(p.URL + streamPath(u.URL+"/f"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		// Caught before the first byte: an error status and a reason are as good as a cut.
		if resp.StatusCode != 502 || !strings.Contains(string(body), "changed") {
			t.Fatalf("%d %q, want 502 saying the file changed", resp.StatusCode, body)
		}
		return
	}
	if err == nil {
		t.Fatalf("the player read %d bytes and a clean end from a file that changed", len(body))
	}
	if !bytes.Equal(body, file[:len(body)]) {
		t.Fatal("the bytes before the cut are not the first version's")
	}
}

func TestPlayerCutOffLeavesNoUpstreamRequestOpen(t *testing.T) {
	file := upstreamtest.RandomFile(8 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 1 << 20})
	defer u.Close()
	logs := &testsync.SyncBuffer{}
	p := newProxy(t, func(s *server.Server) { s.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", p.URL+streamPath(u.URL+"/f"), nil)
	resp, err := p.player.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 100_000)); err != nil {
		t.Fatal(err)
	}
	testsync.WaitFor(t, "an upstream request open mid-stream", func() bool { return u.Open() > 0 })
	cancel()
	resp.Body.Close()
	testsync.WaitFor(t, "no upstream request open after the player left", func() bool { return u.Open() == 0 })
	testsync.WaitFor(t, "the stream's end in the log", func() bool { return strings.Contains(logs.String(), "stream end") })
	if l := logs.String(); !strings.Contains(l, "level=INFO msg=\"stream end: player left\"") || strings.Contains(l, "ERROR") {
		t.Errorf("a player leaving is logged as:\n%s", l)
	}
	if errors.Is(ctx.Err(), context.Canceled) && u.Served() >= int64(len(file)) {
		t.Error("the whole file was fetched for a player that left")
	}
}

func TestAStreamLogsOneLineAtStartAndOneAtEnd(t *testing.T) {
	u := upstreamtest.New(upstreamtest.RandomFile(300_000), upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		if n == 2 {
			return upstreamtest.Fault{Status: http.StatusServiceUnavailable}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	logs := &testsync.SyncBuffer{}
	p := newProxy(t, func(s *server.Server) {
		s.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	p.get(t, "GET", streamPath(u.URL+"/f?sig=secret"), "")
	testsync.WaitFor(t, "the stream's end in the log", func() bool { return strings.Contains(logs.String(), "stream end") })
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "stream start") || !strings.Contains(lines[1], "bytes=300000") ||
		!strings.Contains(lines[1], "retries=1") || !strings.Contains(lines[1], "speed=") || strings.Contains(logs.String(), "secret") {
		t.Errorf("log:\n%s", logs.String())
	}
}

// newStore is a task registry in memory that probes with r and reads aria2 options as the RPC does,
// closed when the test ends.
func newStore(t *testing.T, r *link.Resolver) *task.Registry {
	tasks, err := task.New(task.Config{Interpret: rpc.Defaults{Connections: 4}.Interpret, Probe: r.Size}, task.NewMemory())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tasks.Close() })
	return tasks
}

func TestATaskWithMirrorsSpreadsItsChunks(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	a := upstreamtest.New(file, upstreamtest.Options{})
	defer a.Close()
	b := upstreamtest.New(file, upstreamtest.Options{})
	defer b.Close()
	other := upstreamtest.New(upstreamtest.RandomFile(1<<20), upstreamtest.Options{}) // not the same file
	defer other.Close()
	var gid string
	p := newProxy(t, func(s *server.Server) {
		s.Tasks = newStore(t, s.Play.Resolver)
		gid, _ = s.Tasks.Add(task.Addition{URIs: []string{a.URL + "/f.mp4", other.URL + "/f.mp4", b.URL + "/f.mp4"}, Position: -1, From: access.Loopback})
	})
	resp, body := p.get(t, "GET", "/stream?gid="+gid, "")
	if resp.StatusCode != 200 || !bytes.Equal(body, file) {
		t.Fatalf("%d, %d bytes", resp.StatusCode, len(body))
	}
	if a.Requests() < 5 || b.Requests() < 5 {
		t.Errorf("requests: %d to the first URI, %d to its mirror; want the chunks spread over both", a.Requests(), b.Requests())
	}
	if n := other.Requests(); n > 2 {
		t.Errorf("the mirror of another size got %d requests; want only its probes", n)
	}
}

func TestATaskWithAProxyFetchesThroughIt(t *testing.T) {
	file := upstreamtest.RandomFile(500_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	var proxied atomic.Int64
	forward := &http.Transport{}
	defer forward.CloseIdleConnections()
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		proxied.Add(1)
		out := r.Clone(r.Context())
		out.RequestURI = ""
		resp, err := forward.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer proxy.Close()
	var gid string
	p := newProxy(t, func(s *server.Server) {
		s.Tasks = newStore(t, s.Play.Resolver)
		gid, _ = s.Tasks.Add(task.Addition{URIs: []string{u.URL + "/f.mp4"}, Options: map[string]string{"all-proxy": strings.TrimPrefix(proxy.URL, "http://")}, Position: -1, From: access.Loopback})
	})
	resp, body := p.get(t, "GET", "/stream?gid="+gid, "bytes=100-400099")
	if resp.StatusCode != 206 || !bytes.Equal(body, file[100:400100]) {
		t.Fatalf("%d, %d bytes", resp.StatusCode, len(body))
	}
	if proxied.Load() < 2 || proxied.Load() != u.Requests() {
		t.Errorf("%d requests through the proxy, %d at the upstream: want them all proxied", proxied.Load(), u.Requests())
	}
}

func TestAChunkEnteredMidwayIsCompletedForTheCache(t *testing.T) {
	// The seed's defaults: 1 MiB chunks, so the range enters chunk 0 at 1,000,000 and ends in chunk 7.
	file := upstreamtest.RandomFile(9 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 8 << 20})
	defer u.Close()
	cache := chunkcache.NewMemory(64 << 20)
	p := newProxy(t, func(s *server.Server) {
		s.Play.Engine.ChunkSize = 1 << 20
		s.Play.Engine.Cache = cache
	})
	p.get(t, "GET", streamPath(u.URL+"/f.mkv"), "bytes=1000000-7999999")
	// The stream finishes chunks 0 and 7 after the player has its bytes, and keeps them.
	testsync.WaitFor(t, "the entered chunks to be kept", func() bool { return cache.Bytes() >= 8<<20 })
	before := u.Requests()
	resp, body := p.get(t, "GET", streamPath(u.URL+"/f.mkv"), "bytes=1000000-7999999")
	if resp.StatusCode != 206 || !bytes.Equal(body, file[1000000:8000000]) {
		t.Fatalf("replay: %d, %d bytes", resp.StatusCode, len(body))
	}
	if n := u.Requests() - before; n != 0 {
		t.Errorf("the replay sent %d requests upstream, want none: every chunk it needs is in the cache", n)
	}
}

func TestARangePlayedTwiceCostsAtMostOneProbe(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	for _, c := range []struct {
		ttl  time.Duration
		want int64
	}{{0, 0}, {-1, 1}} { // the probe reused, or expired: then one probe revalidates, and no chunk is fetched
		p := newProxy(t, func(s *server.Server) {
			s.Play.Engine.Cache = chunkcache.NewMemory(64 << 20)
			s.Play.Resolver = resolver(s, link.Config{TTL: c.ttl})
		})
		p.get(t, "GET", streamPath(u.URL+"/f.mp4"), "bytes=100000-1500000")
		before := u.Requests()
		resp, body := p.get(t, "GET", streamPath(u.URL+"/f.mp4"), "bytes=100000-1500000")
		if resp.StatusCode != 206 || !bytes.Equal(body, file[100000:1500001]) {
			t.Fatalf("replay: %d, %d bytes", resp.StatusCode, len(body))
		}
		if n := u.Requests() - before; n != c.want {
			t.Errorf("probe reuse %v: the replay sent %d requests upstream, want %d", c.ttl, n, c.want)
		}
	}
}
