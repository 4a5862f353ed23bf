package link_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/httprange"
	"mflow/internal/link"
	"mflow/internal/source"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// resolver is a Resolver for cfg, with a client of its own when cfg has none, closed with the test.
func resolver(t *testing.T, cfg link.Config) *link.Resolver {
	if cfg.Client == nil {
		cfg.Client = upstream.NewClient(upstream.Config{MaxRedirects: 3})
		t.Cleanup(cfg.Client.CloseIdleConnections)
	}
	r := link.New(cfg)
	t.Cleanup(r.Close)
	return r
}

func TestProbeLearnsSizeVersionAndRangeSupport(t *testing.T) {
	u := upstreamtest.New(make([]byte, 12345), upstreamtest.Options{})
	defer u.Close()
	m, err := resolver(t, link.Config{}).Resolve(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Ranges || m.Version != (source.Version{Size: 12345, ETag: `"v1"`}) || m.ContentType != "video/mp4" || m.URL != u.URL+"/f" {
		t.Errorf("probe = %+v", m)
	}

	norange := upstreamtest.New(make([]byte, 500), upstreamtest.Options{NoRange: true})
	defer norange.Close()
	m, err = resolver(t, link.Config{}).Resolve(t.Context(), source.Link{Location: source.Location{URL: norange.URL + "/f"}})
	if err != nil || m.Ranges || m.Version.Size != 500 {
		t.Errorf("upstream without Range: %+v, %v", m, err)
	}

	empty := upstreamtest.New(nil, upstreamtest.Options{})
	defer empty.Close()
	m, err = resolver(t, link.Config{}).Resolve(t.Context(), source.Link{Location: source.Location{URL: empty.URL + "/f"}})
	if err != nil || !m.Ranges || m.Version.Size != 0 {
		t.Errorf("empty file: %+v, %v", m, err)
	}
}

func TestProbeRejectsALyingContentRange(t *testing.T) {
	u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Shift: 10}
	}})
	defer u.Close()
	if _, err := resolver(t, link.Config{}).Resolve(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}}); !errors.Is(err, upstream.ErrBadAnswer) {
		t.Fatalf("err = %v, want ErrBadAnswer", err)
	}
}

func TestConcurrentResolvesShareOneProbe(t *testing.T) {
	var probes atomic.Int64
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		<-release
		w.Header().Set("Content-Range", "bytes 0-0/10")
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte("x"))
	}))
	defer up.Close()
	r := resolver(t, link.Config{})
	l := source.Link{Location: source.Location{URL: up.URL + "/f"}}

	// The caller that starts the probe leaves while it runs: the others still get its answer.
	leaving, leave := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	errs := make([]error, 4)
	left := make(chan struct{})
	go func() { _, errs[0] = r.Resolve(leaving, l); close(left) }()
	for deadline := time.Now().Add(30 * time.Second); probes.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the probe never reached the upstream in 30 s")
		}
	}
	for i := 1; i < len(errs); i++ {
		wg.Go(func() { _, errs[i] = r.Resolve(t.Context(), l) })
	}
	leave()
	<-left // before the answer comes: a caller that gets it as it leaves may take either
	close(release)
	wg.Wait()
	if !errors.Is(errs[0], context.Canceled) {
		t.Errorf("the caller that left got %v", errs[0])
	}
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("caller %d: %v", i+1, err)
		}
	}
	if n := probes.Load(); n != 1 {
		t.Errorf("%d probes, want 1", n)
	}
	if _, err := r.Refresh(t.Context(), l); err != nil || probes.Load() != 2 {
		t.Errorf("Refresh did not probe again: %v, %d probes", err, probes.Load())
	}
}

func TestAProbeIsRetriedThenGivesUp(t *testing.T) {
	u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusServiceUnavailable}
	}})
	defer u.Close()
	r := resolver(t, link.Config{Retry: upstream.Retry{Max: 2, Base: time.Millisecond}})
	_, err := r.Resolve(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}})
	var status *upstream.StatusError
	if !errors.As(err, &status) || status.Code != 503 || u.Requests() != 3 {
		t.Fatalf("err = %v after %d requests, want the 503 after the first try and 2 retries", err, u.Requests())
	}
	notFound := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusNotFound}
	}})
	defer notFound.Close()
	if _, err := r.Resolve(t.Context(), source.Link{Location: source.Location{URL: notFound.URL + "/f"}}); notFound.Requests() != 1 || err == nil {
		t.Errorf("a 404 was tried %d times (%v); a refusal is final", notFound.Requests(), err)
	}
}

func TestAStalledProbeCostsAboutTheStallTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := upstreamtest.NewInMemory(make([]byte, 1000), upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
			if n == 1 {
				return upstreamtest.Fault{Latency: time.Hour} // no answer at all
			}
			return upstreamtest.Fault{}
		}})
		defer u.Close()
		c := upstream.NewClient(upstream.Config{Dial: u.Dial(), MaxRedirects: 3})
		defer c.CloseIdleConnections()
		r := resolver(t, link.Config{Client: c, Retry: upstream.Retry{Max: 3, Base: time.Millisecond}})
		began := time.Now()
		m, err := r.Resolve(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}})
		took := time.Since(began)
		if err != nil || m.Version.Size != 1000 {
			t.Fatalf("%+v, %v", m, err)
		}
		if took < 10*time.Second || took > 11*time.Second || u.Requests() != 2 {
			t.Errorf("took %v over %d requests, want the 10 s stall rule and one retry", took, u.Requests())
		}
	})
}

func TestAnEncodedProbeAnswerIsRefused(t *testing.T) {
	u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Gzip: true}
	}})
	defer u.Close()
	if _, err := resolver(t, link.Config{}).Resolve(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}}); !errors.Is(err, upstream.ErrBadAnswer) {
		t.Fatalf("err = %v, want ErrBadAnswer", err)
	}
}

func TestAProbeForTheFirstPieceHandsItsAnswerOver(t *testing.T) {
	file := upstreamtest.RandomFile(5000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	r := resolver(t, link.Config{})
	m, resp, err := r.Open(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}}, httprange.Span{Start: 1000, End: 3999})
	if err != nil || resp == nil {
		t.Fatalf("%v, %v", resp, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(body, file[1000:4000]) || m.Version.Size != 5000 {
		t.Fatalf("%d bytes, %v, size %d", len(body), err, m.Version.Size)
	}
	// Reused: no answer to hand over, and no request.
	if _, resp, err := r.Open(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}}, httprange.Span{Start: 0, End: 999}); resp != nil || err != nil || u.Requests() != 1 {
		t.Errorf("a reused probe: %v, %v, %d requests", resp, err, u.Requests())
	}
	// Past the end: the size is learnt from the 416.
	past := upstreamtest.New(file, upstreamtest.Options{})
	defer past.Close()
	if m, resp, err := r.Open(t.Context(), source.Link{Location: source.Location{URL: past.URL + "/f"}}, httprange.Span{Start: 9000, End: 9999}); err != nil || resp != nil || m.Version.Size != 5000 || !m.Ranges {
		t.Errorf("past the end: %+v, %v, %v", m, resp, err)
	}
}

func TestAProxiedLinkIsProbedThroughItsProxyAndApart(t *testing.T) {
	u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{})
	defer u.Close()
	var proxied atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1) // a plain HTTP proxy: the request names the whole URL
		if r.URL.Host == "" {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		maps.Copy(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer proxy.Close()
	defer http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	proxyURL, _ := url.Parse(proxy.URL)

	r := resolver(t, link.Config{})
	plain := source.Link{Location: source.Location{URL: u.URL + "/f"}}
	through := plain
	through.Proxy = proxyURL
	for _, l := range []source.Link{plain, through, plain, through} {
		if _, err := r.Resolve(t.Context(), l); err != nil {
			t.Fatal(err)
		}
	}
	if n := proxied.Load(); n != 1 {
		t.Errorf("the proxy saw %d probes, want 1: the proxied link's, once", n)
	}
	if n := u.Requests(); n != 2 {
		t.Errorf("the upstream saw %d probes, want 2: one per way of asking, each reused", n)
	}
}

func TestA200ToTheProbesRangeIsAFaultFromAnUpstreamThatTakesRanges(t *testing.T) {
	file := make([]byte, 1000)
	linkOf := func(u *upstreamtest.Upstream) source.Link {
		return source.Link{Location: source.Location{URL: u.URL + "/f"}}
	}
	r := resolver(t, link.Config{Retry: upstream.Retry{Max: 3, Base: time.Millisecond}})

	// A CDN's cache miss now and then: the 200 says Accept-Ranges: bytes, the next answer takes the range.
	once := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Whole: n == 1}
	}})
	defer once.Close()
	if m, err := r.Resolve(t.Context(), linkOf(once)); err != nil || !m.Ranges || once.Requests() != 2 {
		t.Errorf("one 200 saying Accept-Ranges: bytes: %+v, %v after %d requests; want ranges after a retry", m, err, once.Requests())
	}
	// An upstream that keeps ignoring Range, whatever it says, has no Range support.
	always := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Whole: true}
	}})
	defer always.Close()
	if m, err := r.Resolve(t.Context(), linkOf(always)); err != nil || m.Ranges || m.Version.Size != 1000 || always.Requests() != 4 {
		t.Errorf("200 after 200: %+v, %v after %d requests; want no ranges after the retries", m, err, always.Requests())
	}
	// A server that says nothing of ranges and answers 200 has none: no retry.
	plain := upstreamtest.New(file, upstreamtest.Options{NoRange: true})
	defer plain.Close()
	if m, err := r.Resolve(t.Context(), linkOf(plain)); err != nil || m.Ranges || plain.Requests() != 1 {
		t.Errorf("a plain 200: %+v, %v after %d requests; want no ranges at once", m, err, plain.Requests())
	}
	// A link that took ranges before: its 200 is a fault even without Accept-Ranges.
	var answers atomic.Int64
	flips := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if answers.Add(1) == 2 {
			w.Write(file) // a plain 200
			return
		}
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(file))
	}))
	defer flips.Close()
	r = resolver(t, link.Config{Retry: upstream.Retry{Max: 3, Base: time.Millisecond}, TTL: -1}) // every Resolve probes
	l := source.Link{Location: source.Location{URL: flips.URL + "/f"}}
	for range 2 {
		if m, err := r.Resolve(t.Context(), l); err != nil || !m.Ranges {
			t.Errorf("a link that took ranges: %+v, %v after %d requests", m, err, answers.Load())
		}
	}
	if n := answers.Load(); n != 3 {
		t.Errorf("%d requests: want the 200 between two ranged answers tried again", n)
	}
}

func TestAFailedProbeIsTriedAgainOnSeveralConnectionsAtOnce(t *testing.T) {
	u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Latency: 20 * time.Millisecond, Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		if n <= 3 {
			return upstreamtest.Fault{Shift: -1} // a wrong answer: try again, on several connections
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	r := resolver(t, link.Config{Retry: upstream.Retry{Max: 2, Base: time.Millisecond}, Hedge: 3})
	m, head, err := r.Open(t.Context(), source.Link{Location: source.Location{URL: u.URL + "/f"}}, httprange.Span{Start: 0, End: 99})
	if err != nil || !m.Ranges {
		t.Fatalf("%+v, %v", m, err)
	}
	got, err := io.ReadAll(head.Body)
	head.Body.Close()
	if err != nil || len(got) != 100 {
		t.Errorf("the winning try's body: %d bytes, %v", len(got), err)
	}
	if n := u.Requests(); n < 4 || n > 7 {
		t.Errorf("%d requests: want the first try, then rounds of 3 until one answers", n)
	}
	if u.MaxOpen() < 2 {
		t.Errorf("at most %d probes open at once: the retries did not go out together", u.MaxOpen())
	}
	// After a 503 the upstream asked to be left alone: one try at a time.
	busy := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		if n <= 2 {
			return upstreamtest.Fault{Status: http.StatusServiceUnavailable}
		}
		return upstreamtest.Fault{}
	}})
	defer busy.Close()
	if _, err := r.Resolve(t.Context(), source.Link{Location: source.Location{URL: busy.URL + "/f"}}); err != nil || busy.Requests() != 3 {
		t.Errorf("%v after %d requests to a 503ing upstream, want one try at a time", err, busy.Requests())
	}
}
