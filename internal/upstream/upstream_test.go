package upstream

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/access"
	"mflow/internal/httprange"
	"mflow/internal/source"
	"mflow/internal/testsync"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHostConnectionsCapHoldsAcrossCallers(t *testing.T) {
	u := upstreamtest.New(make([]byte, 256<<10), upstreamtest.Options{PerConn: 1 << 20})
	defer u.Close()
	c := NewClient(Config{HostConnections: 3})
	defer c.CloseIdleConnections()
	var wg sync.WaitGroup
	for range 10 { // ten streams' worth of requests at once
		wg.Go(func() {
			resp, _, err := c.Get(t.Context(), source.Location{URL: u.URL + "/f", From: access.Loopback}, "bytes=0-65535")
			if err != nil {
				t.Error(err)
				return
			}
			buf := make([]byte, 32<<10)
			for {
				if _, err := resp.Body.Read(buf); err != nil {
					break
				}
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	if got := u.MaxOpen(); got != 3 {
		t.Errorf("up to %d requests at once to one host, want the cap of 3", got)
	}
	if got := u.Conns(); got > 3 {
		t.Errorf("%d connections opened to one host, want at most 3 (slots keep theirs alive)", got)
	}
}

func answer(status int, h map[string]string) *http.Response {
	resp := &http.Response{StatusCode: status, Status: http.StatusText(status), Header: http.Header{}}
	for k, v := range h {
		resp.Header.Set(k, v)
	}
	return resp
}

func TestCheckPartial(t *testing.T) {
	v := source.Version{Size: 1000, ETag: `"a"`, LastModified: "Mon, 02 Jan 2006 15:04:05 GMT"}
	span := httprange.Span{Start: 100, End: 199}
	good := map[string]string{"Content-Range": "bytes 100-199/1000", "ETag": `"a"`, "Last-Modified": v.LastModified}
	with := func(k, val string) map[string]string {
		h := map[string]string{}
		for a, b := range good {
			h[a] = b
		}
		h[k] = val
		return h
	}
	for name, c := range map[string]struct {
		resp *http.Response
		want error
	}{
		"exact":           {answer(206, good), nil},
		"200":             {answer(200, good), ErrBadAnswer},
		"shifted":         {answer(206, with("Content-Range", "bytes 101-200/1000")), ErrBadAnswer},
		"shorter":         {answer(206, with("Content-Range", "bytes 100-150/1000")), ErrBadAnswer},
		"no range":        {answer(206, with("Content-Range", "")), ErrBadAnswer},
		"other size":      {answer(206, with("Content-Range", "bytes 100-199/1001")), ErrChanged},
		"other etag":      {answer(206, with("ETag", `"b"`)), ErrChanged},
		"etag dropped":    {answer(206, with("ETag", "")), ErrChanged},
		"other modified":  {answer(206, with("Last-Modified", "Tue, 03 Jan 2006 15:04:05 GMT")), ErrChanged},
		"unknown size ok": {answer(206, with("Content-Range", "bytes 100-199/*")), nil},
		"gzip":            {answer(206, with("Content-Encoding", "gzip")), ErrBadAnswer},
		"br, listed":      {answer(206, with("Content-Encoding", "identity, br")), ErrBadAnswer},
		"identity":        {answer(206, with("Content-Encoding", "identity")), nil},
	} {
		err := CheckPartial(c.resp, "http://x/f", span, v)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	var status *StatusError
	err := CheckPartial(answer(503, map[string]string{"Retry-After": "7"}), "http://x/f?sig=secret", span, v)
	if !errors.As(err, &status) || !status.Temporary() || status.RetryAfter != 7*time.Second || status.URL != "http://x/f?…" {
		t.Errorf("503: %#v", err)
	}
}

func TestRetryAfter(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "5": 5 * time.Second, "-3": 0, "99999": time.Minute, "soon": 0} {
		if got := retryAfter(in); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", in, got, want)
		}
	}
	if got := retryAfter(time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)); got < 8*time.Second || got > 10*time.Second {
		t.Errorf("retryAfter(date 10 s ahead) = %v", got)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:pw@cdn.example/a/b.mp4?sig=xyz#t": "https://cdn.example/a/b.mp4?…",
		"http://h/f": "http://h/f",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRetryPolicy(t *testing.T) {
	r := Retry{Max: 5, Base: 100 * time.Millisecond}
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 3: 400 * time.Millisecond, 20: MaxBackoff} {
		if got := r.Wait(n, errors.New("x")); got < want/2 || got > want {
			t.Errorf("Wait(%d) = %v, want %v with jitter down to half", n, got, want)
		}
	}
	if got := r.Wait(1, &StatusError{Code: 503, RetryAfter: 3 * time.Second}); got != 3*time.Second {
		t.Errorf("Wait after Retry-After: 3 = %v", got)
	}
	for err, want := range map[error]bool{
		&StatusError{Code: 503}: true,
		&StatusError{Code: 429}: true,
		&StatusError{Code: 404}: false,
		&StatusError{Code: 403}: false,
		&NetError{Err: io.EOF}:  true,
		ErrBadAnswer:            true,
		ErrStalled:              true,
		ErrShortBody:            true,
		ErrChanged:              false,
		ErrTooBig:               false,
		ErrTooManyRedirects:     false,
		errors.New("bad URL"):   false,
	} {
		if Retryable(err) != want {
			t.Errorf("Retryable(%v) = %v, want %v", err, !want, want)
		}
	}
}

func TestCredentialsStayBehindOnADowngrade(t *testing.T) {
	seen := make(chan http.Header, 2)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.WriteHeader(http.StatusOK)
	}))
	defer plain.Close()
	secure := upstreamtest.NewTLS(nil, false, upstreamtest.Options{})
	defer secure.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		http.Redirect(w, r, plain.URL+"/f", http.StatusFound) // same scheme, another host
	}))
	defer other.Close()
	header := http.Header{"Cookie": {"session=abc"}, "Authorization": {"Bearer x"}, "Referer": {"https://drive.example/"}}

	c := NewClient(Config{TLS: secure.TLS(), MaxRedirects: 3})
	defer c.CloseIdleConnections()
	resp, _, err := c.Get(t.Context(), source.Location{URL: other.URL + "/start", Header: header, From: access.Loopback}, "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, h := range []http.Header{<-seen, <-seen} {
		if h.Get("Cookie") != "session=abc" || h.Get("Referer") == "" {
			t.Errorf("a same-scheme redirect to another host lost the drive's headers: %v", h)
		}
	}

	// https → http: the Cookie and Authorization would cross the network in clear.
	down := httptest.NewUnstartedServer(http.RedirectHandler(plain.URL+"/f", http.StatusFound))
	down.StartTLS()
	defer down.Close()
	c2 := NewClient(Config{Insecure: true, MaxRedirects: 3})
	defer c2.CloseIdleConnections()
	resp, _, err = c2.Get(t.Context(), source.Location{URL: down.URL + "/start", Header: header, From: access.Loopback}, "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := <-seen; h.Get("Cookie") != "" || h.Get("Authorization") != "" || h.Get("Referer") == "" {
		t.Errorf("after https → http: %v; want no Cookie or Authorization, the rest kept", h)
	}
}

func TestTheHostTableForgetsIdleHosts(t *testing.T) {
	var urls []string
	for range 3 {
		u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{})
		defer u.Close()
		urls = append(urls, u.URL, strings.Replace(u.URL, "127.0.0.1", "localhost", 1))
	}
	c := NewClient(Config{})
	defer c.CloseIdleConnections()
	for _, u := range urls { // six hosts, one after another
		resp, _, err := c.Get(t.Context(), source.Location{URL: u + "/f", From: access.Loopback}, "")
		if err != nil {
			t.Fatal(err)
		}
		if c.Hosts() != 1 {
			t.Errorf("%d hosts while one request is open", c.Hosts())
		}
		resp.Body.Close()
	}
	if n := c.Hosts(); n != 0 {
		t.Errorf("%d hosts kept with no request open, want 0", n)
	}
}
func TestALinksHeaderCarriesNoHopByHopHeaders(t *testing.T) {
	h := CleanHeader(http.Header{
		"cookie":     {"a=b"},
		"Connection": {"keep-alive, X-Secret"},
		"X-Secret":   {"1"},
		"Range":      {"bytes=0-"},
		"Host":       {"evil"},
		"Keep-Alive": {"300"},
		"Referer":    {"https://drive.example/"},
	})
	want := http.Header{"Cookie": {"a=b"}, "Referer": {"https://drive.example/"}}
	if len(h) != len(want) || h.Get("Cookie") != "a=b" || h.Get("Referer") != "https://drive.example/" {
		t.Errorf("CleanHeader = %v, want %v", h, want)
	}
}

func TestACutRequestHoldsItsSlotUntilTheServerCanKnow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 40 ms to the first byte: the news of a cut takes about 20 ms to reach the server.
		u := upstreamtest.NewInMemory(make([]byte, 4<<20), upstreamtest.Options{PerConn: 1 << 20, Latency: 40 * time.Millisecond})
		defer u.Close()
		c := NewClient(Config{HostConnections: 1, Dial: u.Dial()})
		defer c.CloseIdleConnections()
		get := func(rng string) io.ReadCloser {
			resp, _, err := c.Get(t.Context(), source.Location{URL: u.URL + "/f"}, rng)
			if err != nil {
				t.Fatal(err)
			}
			return resp.Body
		}
		body := get("bytes=0-1048575")
		io.ReadFull(body, make([]byte, 64<<10))
		began := time.Now()
		body.Close() // cut
		if held := time.Since(began); held < 15*time.Millisecond || held > 100*time.Millisecond {
			t.Errorf("a cut request held its slot %v, want about half its wait for an answer (20 ms)", held)
		}
		synctest.Wait() // the server has noticed the cut
		if u.Open() != 0 {
			t.Errorf("%d requests open at the server once the slot was free", u.Open())
		}
		body = get("bytes=0-65535")
		io.Copy(io.Discard, body)
		began = time.Now()
		body.Close()
		if held := time.Since(began); held != 0 {
			t.Errorf("a request read to its end held its slot %v after Close", held)
		}
	})
}

func TestWarmOpensConnectionsToTheHostButNotThroughAProxy(t *testing.T) {
	u := upstreamtest.New(make([]byte, 64<<10), upstreamtest.Options{})
	defer u.Close()
	c := NewClient(Config{HostConnections: 2})
	defer c.CloseIdleConnections()
	at := source.Location{URL: u.URL + "/f", From: access.Loopback}
	proxied := at
	proxied.Proxy = &url.URL{Scheme: "http", Host: "127.0.0.1:9"}
	c.Warm(proxied, 3) // a proxy's connection is what a request dials: nothing ahead
	c.Warm(at, 3)      // never more than HostConnections
	testsync.WaitFor(t, "the upstream counting the two connections opened ahead", func() bool { return u.Conns() == 2 })
	c.Warm(at, 3) // already open: no more
	resp, _, err := c.Get(t.Context(), at, "bytes=0-999")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n := u.Conns(); n > 2 {
		t.Errorf("%d connections after two were opened ahead and one request, want 2", n)
	}
}

func TestAProxyIsTrustedOnlyWithWhatThePlayerMayFetch(t *testing.T) {
	var asked atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		io.WriteString(w, "proxied")
	}))
	defer proxy.Close()
	proxyURL, _ := url.Parse(proxy.URL)
	// The proxy on 127.0.0.1 is allowed for every player: only the targets asked through it are judged.
	c := NewClient(Config{Policy: &access.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		from    access.Network
		target  string
		refused bool
	}{
		{access.Internet, "http://2130706433:81/f", true}, // 127.0.0.1 to many resolvers, the proxy's among them
		{access.Private, "http://2130706433:81/f", true},
		{access.Internet, "http://no-such-name.invalid/f", true},
		{access.Internet, "http://127.0.0.2:81/f", true},
		{access.Internet, "http://[::ffff:127.0.0.2]:81/f", true},
		{access.Internet, "http://192.168.1.1/f", true},
		{access.Internet, "http://169.254.169.254/latest/meta-data", true},
		{access.Private, "http://192.168.1.1/f", false},
		{access.Internet, "http://203.0.113.5/f", false},
		{access.Loopback, "http://2130706433:81/f", false}, // a player on this machine may ask the proxy itself
		{access.Loopback, "http://169.254.169.254/f", true},
	} {
		before := asked.Load()
		resp, err := c.Do(mustRequest(t, tc.target), source.Location{URL: tc.target, Proxy: proxyURL, From: tc.from})
		if resp != nil {
			resp.Body.Close()
		}
		var refused *access.RefusedError
		switch {
		case tc.refused && (!errors.As(err, &refused) || asked.Load() != before):
			t.Errorf("a player of class %d, %s through a proxy: %v, the proxy asked %d times; want refused before the proxy is asked", tc.from, tc.target, err, asked.Load()-before)
		case !tc.refused && (err != nil || asked.Load() != before+1):
			t.Errorf("a player of class %d, %s through a proxy: %v, want it proxied", tc.from, tc.target, err)
		}
	}
}

func mustRequest(t *testing.T, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
