package link_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/link"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func resolver(t *testing.T) *link.Resolver {
	c := upstream.NewClient(upstream.Config{})
	t.Cleanup(c.CloseIdleConnections)
	return &link.Resolver{Client: c, MaxRedirects: 3}
}

func TestProbeLearnsSizeVersionAndRangeSupport(t *testing.T) {
	u := upstreamtest.New(make([]byte, 12345), upstreamtest.Options{})
	defer u.Close()
	m, err := resolver(t).Resolve(t.Context(), link.Link{URL: u.URL + "/f"})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Ranges || m.Version != (upstream.Version{Size: 12345, ETag: `"v1"`}) || m.ContentType != "video/mp4" || m.URL != u.URL+"/f" {
		t.Errorf("probe = %+v", m)
	}

	norange := upstreamtest.New(make([]byte, 500), upstreamtest.Options{NoRange: true})
	defer norange.Close()
	m, err = resolver(t).Resolve(t.Context(), link.Link{URL: norange.URL + "/f"})
	if err != nil || m.Ranges || m.Version.Size != 500 {
		t.Errorf("upstream without Range: %+v, %v", m, err)
	}

	empty := upstreamtest.New(nil, upstreamtest.Options{})
	defer empty.Close()
	m, err = resolver(t).Resolve(t.Context(), link.Link{URL: empty.URL + "/f"})
	if err != nil || !m.Ranges || m.Version.Size != 0 {
		t.Errorf("empty file: %+v, %v", m, err)
	}
}

func TestProbeRejectsALyingContentRange(t *testing.T) {
	u := upstreamtest.New(make([]byte, 1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Shift: 10}
	}})
	defer u.Close()
	if _, err := resolver(t).Resolve(t.Context(), link.Link{URL: u.URL + "/f"}); !errors.Is(err, upstream.ErrBadAnswer) {
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
	r := resolver(t)
	l := link.Link{URL: up.URL + "/f"}

	// The caller that starts the probe leaves while it runs: the others still get its answer.
	leaving, leave := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	errs := make([]error, 4)
	wg.Go(func() { _, errs[0] = r.Resolve(leaving, l) })
	for deadline := time.Now().Add(5 * time.Second); probes.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the probe never reached the upstream")
		}
	}
	for i := 1; i < len(errs); i++ {
		wg.Go(func() { _, errs[i] = r.Resolve(t.Context(), l) })
	}
	leave()
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

func TestCleanHeaderDropsHopByHopAndRange(t *testing.T) {
	h := link.CleanHeader(http.Header{
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
