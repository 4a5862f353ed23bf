package server_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mflow/internal/access"
	"mflow/internal/link"
	"mflow/internal/openlist"
	"mflow/internal/openlisttest"
	"mflow/internal/server"
	"mflow/internal/task"
	"mflow/internal/testsync"
	"mflow/internal/upstreamtest"
)

// openListChain is a stand-in OpenList whose files are on one drive, and an mflow that is its download
// proxy. The drive's links carry a generation: after expire() a link of an older one is refused (403), as
// a signed drive link past its life.
type openListChain struct {
	ol    *openlisttest.Server
	drive *upstreamtest.Upstream
	p     *proxy
	file  []byte

	gen     atomic.Int64 // the links' generation now
	stale   atomic.Int64 // requests refused for an old generation
	checked atomic.Int64 // requests that carried the headers OpenList gave
	served  sync.Map     // the generations of the links the drive served
}

func newOpenListChain(t *testing.T, size int, opts upstreamtest.Options, tune func(*server.Server)) *openListChain {
	c := &openListChain{file: upstreamtest.RandomFile(size)}
	fault := opts.Fault
	opts.Fault = func(n int64, r *http.Request) upstreamtest.Fault {
		if r.Header.Get("User-Agent") != "DriveUA/2" || r.Header.Get("Cookie") != "session=abc" {
			return upstreamtest.Fault{Status: http.StatusUnauthorized}
		}
		c.checked.Add(1)
		if r.URL.Query().Get("gen") != strconv.FormatInt(c.gen.Load(), 10) {
			c.stale.Add(1)
			return upstreamtest.Fault{Status: http.StatusForbidden}
		}
		c.served.Store(r.URL.Query().Get("gen"), true)
		if fault != nil {
			return fault(n, r)
		}
		return upstreamtest.Fault{}
	}
	c.drive = upstreamtest.New(c.file, opts)
	t.Cleanup(c.drive.Close)
	files := map[string]int64{}
	for _, p := range openListPaths {
		files[p] = int64(size)
	}
	c.ol = openlisttest.New(openlisttest.Options{Token: "t0ken", Files: files, Link: func(p string) (string, http.Header) {
		return c.drive.URL + "/drive/" + url.PathEscape(p) + "?gen=" + strconv.FormatInt(c.gen.Load(), 10),
			http.Header{"User-Agent": {"DriveUA/2"}, "Cookie": {"session=abc"}}
	}})
	t.Cleanup(c.ol.Close)
	client, err := openlist.New(openlist.Config{URL: c.ol.URL, Token: "t0ken"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	c.p = newProxy(t, func(s *server.Server) {
		s.OpenList = client
		if tune != nil {
			tune(s)
		}
	})
	c.ol.SetProxyURL(c.p.URL + "/openlist/") // with the trailing slash users type: the paths' slash doubles
	return c
}

// expire makes every link given so far a dead one.
func (c *openListChain) expire() { c.gen.Add(1) }

// openListPaths are files whose names need every kind of escaping.
var openListPaths = []string{"/films/a film.mkv", "/电影/第1集 #2 ?x=1 100%.mp4", "/plain.bin"}

func TestOpenListsRedirectPlaysThroughMflow(t *testing.T) {
	c := newOpenListChain(t, 1<<20+777, upstreamtest.Options{}, nil)
	for _, p := range openListPaths {
		// A player follows OpenList's 302 to mflow, as Infuse and curl -L do.
		resp, err := c.p.player.Get(c.ol.URL + "/d" + openlisttest.EncodePath(p))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, c.file) {
			t.Fatalf("%s: %d, %d bytes: %.200s", p, resp.StatusCode, len(body), body)
		}
		if !strings.HasPrefix(resp.Request.URL.String(), c.p.URL+"/openlist//") {
			t.Errorf("%s: ended at %s, not at mflow's doubled-slash path", p, resp.Request.URL)
		}
		if _, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); params["filename"] != p[strings.LastIndex(p, "/")+1:] {
			t.Errorf("%s: Content-Disposition %q does not name the file", p, resp.Header.Get("Content-Disposition"))
		}
		link := strings.TrimPrefix(c.ol.ProxyLink(p), c.p.URL)
		resp, body = c.p.get(t, "GET", link, "bytes=1000-200999")
		if resp.StatusCode != 206 || !bytes.Equal(body, c.file[1000:201000]) || resp.Header.Get("Content-Range") != "bytes 1000-200999/"+strconv.Itoa(len(c.file)) {
			t.Errorf("%s, a range: %d %q, %d bytes", p, resp.StatusCode, resp.Header.Get("Content-Range"), len(body))
		}
		resp, body = c.p.get(t, "HEAD", link, "")
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != int64(len(c.file)) || resp.Header.Get("Accept-Ranges") != "bytes" {
			t.Errorf("%s, HEAD: %d, length %d", p, resp.StatusCode, resp.ContentLength)
		}
		if etag := resp.Header.Get("ETag"); etag != "" {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", c.p.URL+link, nil)
			req.Header.Set("If-None-Match", etag)
			if resp, err := c.p.player.Do(req); err != nil || resp.StatusCode != http.StatusNotModified {
				t.Errorf("%s, If-None-Match: %v %v", p, resp.StatusCode, err)
			} else {
				resp.Body.Close()
			}
		}
	}
	if c.checked.Load() == 0 {
		t.Error("the drive never saw the headers OpenList gave")
	}
}

func TestOpenListSignsAreCheckedBeforeOpenListIsAsked(t *testing.T) {
	c := newOpenListChain(t, 1000, upstreamtest.Options{}, nil)
	const p = "/films/a film.mkv"
	path := "/openlist" + openlisttest.EncodePath(p)
	expired := openlist.Sign("t0ken", p, time.Now().Add(-time.Minute).Unix())
	for name, tc := range map[string]struct {
		query  string
		status int
	}{
		"missing":       {"", 400},
		"garbled":       {"?sign=nonsense", 400},
		"not a time":    {"?sign=abc:tomorrow", 400},
		"forged":        {"?sign=" + url.QueryEscape(openlist.Sign("guess", p, 0)), 403},
		"another file":  {"?sign=" + url.QueryEscape(openlist.Sign("t0ken", "/plain.bin", 0)), 403},
		"expired":       {"?sign=" + url.QueryEscape(expired), 403},
		"a dotted path": {"?sign=" + url.QueryEscape(openlist.Sign("t0ken", "/films/../plain.bin", 0)), 403},
	} {
		resp, body := c.p.get(t, "GET", path+tc.query, "")
		if resp.StatusCode != tc.status || strings.Count(string(body), "\n") != 1 || !strings.Contains(string(body), "sign") {
			t.Errorf("%s: %d %q, want %d and one line", name, resp.StatusCode, body, tc.status)
		}
	}
	if resp, body := c.p.get(t, "POST", path, ""); resp.StatusCode != 405 {
		t.Errorf("POST: %d %q", resp.StatusCode, body)
	}
	if n := c.ol.Calls(); n != 0 {
		t.Errorf("OpenList was asked %d times for requests with bad signs", n)
	}
}

func TestOpenListIsAskedOnceForAPlayersManyRanges(t *testing.T) {
	c := newOpenListChain(t, 2<<20, upstreamtest.Options{}, nil)
	link := strings.TrimPrefix(c.ol.ProxyLink(openListPaths[1]), c.p.URL)
	var wg sync.WaitGroup
	for player := range 2 { // two players seeking through the same film, as Infuse does
		wg.Go(func() {
			for i := range 12 {
				start := (player*12 + i) * 80_000
				resp, body := c.p.get(t, "GET", link, "bytes="+strconv.Itoa(start)+"-"+strconv.Itoa(start+9999))
				if resp.StatusCode != 206 || !bytes.Equal(body, c.file[start:start+10000]) {
					t.Errorf("range at %d: %d, %d bytes", start, resp.StatusCode, len(body))
				}
			}
		})
	}
	wg.Wait()
	if n := c.ol.Calls(); n != 1 {
		t.Errorf("%d API calls for 24 ranges of one file, want 1", n)
	}
}

func TestALinkThatExpiresMidPlayIsAskedOfOpenListAgain(t *testing.T) {
	// The drive's link dies after every 1 MiB asked of it: a play of 8 MiB outlives it several times.
	var c *openListChain
	var asked atomic.Int64
	c = newOpenListChain(t, 8<<20, upstreamtest.Options{Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		var from, to int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err == nil {
			if n := asked.Add(to - from + 1); n/(1<<20) != (n-(to-from+1))/(1<<20) {
				c.expire()
			}
		}
		return upstreamtest.Fault{}
	}}, nil)
	link := strings.TrimPrefix(c.ol.ProxyLink(openListPaths[0]), c.p.URL)
	resp, body := c.p.get(t, "GET", link, "")
	if resp.StatusCode != 200 || !bytes.Equal(body, c.file) {
		t.Fatalf("%d, %d bytes: the player did not get the file whole", resp.StatusCode, len(body))
	}
	if c.gen.Load() < 3 || c.stale.Load() < c.gen.Load() {
		t.Fatalf("the link expired %d times and was refused %d times: the test did not test", c.gen.Load(), c.stale.Load())
	}
	links := 0
	c.served.Range(func(any, any) bool { links++; return true })
	if n := c.ol.Calls(); n != int64(links) {
		t.Errorf("%d API calls for %d links played (it expired %d times), want one per link", n, links, c.gen.Load())
	}
	// A new request after the link died asks OpenList again too, rather than failing on the dead link.
	c.expire()
	calls := c.ol.Calls()
	resp, body = c.p.get(t, "GET", link, "bytes=0-99")
	if resp.StatusCode != 206 || !bytes.Equal(body, c.file[:100]) || c.ol.Calls() != calls+1 {
		t.Errorf("a new request after the link died: %d %q, %d more API calls", resp.StatusCode, body, c.ol.Calls()-calls)
	}
}

func TestOpenListsFailuresAreTold(t *testing.T) {
	c := newOpenListChain(t, 1000, upstreamtest.Options{}, nil)
	sign := func(p string) string { return strings.TrimPrefix(c.ol.ProxyLink(p), c.p.URL) }
	c.ol.Fail("/plain.bin", 500, "failed get link: object not found")
	resp, body := c.p.get(t, "GET", sign("/plain.bin"), "")
	if resp.StatusCode != 404 || !strings.Contains(string(body), "object not found") {
		t.Errorf("a file OpenList does not have: %d %q", resp.StatusCode, body)
	}
	c.ol.Fail("/films/a film.mkv", 401, "token is invalidated")
	resp, body = c.p.get(t, "GET", sign("/films/a film.mkv"), "")
	if resp.StatusCode != 502 || !strings.Contains(string(body), "--openlist-token") {
		t.Errorf("a token OpenList refuses: %d %q", resp.StatusCode, body)
	}
	c.ol.Close()
	resp, body = c.p.get(t, "GET", sign(openListPaths[1]), "")
	if resp.StatusCode != 502 || !strings.Contains(string(body), "OpenList unreachable") {
		t.Errorf("OpenList down: %d %q", resp.StatusCode, body)
	}
	off := newProxy(t, nil)
	if resp, body := off.get(t, "GET", "/openlist/f.mkv?sign=x:0", ""); resp.StatusCode != 404 || !strings.Contains(string(body), "--openlist") {
		t.Errorf("without --openlist: %d %q", resp.StatusCode, body)
	}
}

func TestANamedStreamPlaysAsStream(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	var gid string
	p := newProxy(t, func(s *server.Server) {
		s.Tasks = newStore(t, s.Play.Resolver)
		var err error
		gid, err = s.Tasks.Add(task.Addition{URIs: []string{u.URL + "/f"}, GID: "4c885fede4f1d14a", Position: -1, From: access.Loopback})
		if err != nil {
			t.Fatal(err)
		}
	})
	for path, name := range map[string]string{
		"/stream/My%20Film%20(2024).mkv?url=" + url.QueryEscape(u.URL+"/f"): "My Film (2024).mkv",
		"/stream/Show/S01E01.mp4?url=" + url.QueryEscape(u.URL+"/f"):        "S01E01.mp4",
		"/stream/episode.mkv?gid=" + gid:                                    "",
		"/stream/" + gid + "/f":                                             "", // tellStatus's files[0].path
	} {
		resp, body := p.get(t, "GET", path, "bytes=100-")
		if resp.StatusCode != 206 || !bytes.Equal(body, file[100:]) {
			t.Errorf("%s: %d, %d bytes", path, resp.StatusCode, len(body))
		}
		if cd := resp.Header.Get("Content-Disposition"); name != "" && !strings.Contains(cd, name) {
			t.Errorf("%s: Content-Disposition %q, want %q", path, cd, name)
		}
	}
	if resp, body := p.get(t, "GET", "/stream?gid=0000000000000000", ""); resp.StatusCode != 404 || !strings.Contains(string(body), "reserved") {
		t.Errorf("the all-zero GID: %d %q; want 404 saying it is reserved", resp.StatusCode, body)
	}
	if resp, _ := p.get(t, "DELETE", "/stream/f.mkv?url=x", ""); resp.StatusCode != 405 {
		t.Errorf("DELETE /stream/f.mkv: %d", resp.StatusCode)
	}
}

func TestALinkCarriesItsOwnHeadersAndKeepsThemToItself(t *testing.T) {
	file := upstreamtest.RandomFile(200_000)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		if r.Header.Get("Cookie") != "session=s3cr3t; b=2" || r.Header.Get("Referer") != "https://drive.example/" {
			return upstreamtest.Fault{Status: http.StatusForbidden}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	var logs testsync.SyncBuffer
	p := newProxy(t, func(s *server.Server) {
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		s.Logger, s.Play.Logger, s.Play.Engine.Logger = log, log, log
		s.Play.Resolver = resolver(s, link.Config{Logger: log})
	})
	// As a strm file holds it: the headers first, the link last and percent-encoded.
	strm := "/stream/film.mkv?header=" + url.QueryEscape("Cookie: session=s3cr3t; b=2") + "&header=" + url.QueryEscape("Referer: https://drive.example/") +
		"&url=" + url.QueryEscape(u.URL+"/f")
	resp, body := p.get(t, "GET", strm, "")
	if resp.StatusCode != 200 || !bytes.Equal(body, file) {
		t.Fatalf("%d, %d bytes: %.200s", resp.StatusCode, len(body), body)
	}
	for _, bad := range []string{"header=NoColon", "header=" + url.QueryEscape("Bad Name: x"), "header=" + url.QueryEscape("X: a\x01b"), strings.Repeat("header=A:%20b&", 33)} {
		if resp, body := p.get(t, "GET", "/stream?"+bad+"&url="+url.QueryEscape(u.URL+"/f"), ""); resp.StatusCode != 400 || !strings.Contains(string(body), "header") {
			t.Errorf("%.40s: %d %q", bad, resp.StatusCode, body)
		}
	}
	if strings.Contains(logs.String(), "s3cr3t") {
		t.Errorf("the log shows the link's Cookie:\n%s", logs.String())
	}
}
