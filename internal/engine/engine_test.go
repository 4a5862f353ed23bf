package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"mflow/internal/testsync"

	"go.uber.org/goleak"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/source"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// newEngine returns an engine on u with fast retries, and closes its connections when the test ends.
func newEngine(t *testing.T, u *upstreamtest.Upstream, chunk int64, conns int) *engine.Engine {
	c := upstream.NewClient(upstream.Config{Dial: u.Dial(), TLS: u.TLS(), MaxRedirects: 3})
	e := &engine.Engine{Client: c, ChunkSize: chunk, Connections: conns, Retries: 5, RetryBase: time.Millisecond, Logger: quiet}
	t.Cleanup(func() {
		e.Close()
		c.CloseIdleConnections()
	})
	return e
}

func target(u *upstreamtest.Upstream) source.Target {
	return source.Target{Location: source.Location{URL: u.URL + "/file"}, Version: source.Version{Size: int64(len(u.Content)), ETag: u.ETag}}
}

// stream runs a stream of span and returns what the player got.
func stream(t *testing.T, e *engine.Engine, req engine.Job) ([]byte, engine.Stats, error) {
	t.Helper()
	var out bytes.Buffer
	stats, err := e.Stream(t.Context(), &out, req)
	if int64(out.Len()) != stats.Bytes {
		t.Errorf("stats say %d bytes, the player got %d", stats.Bytes, out.Len())
	}
	return out.Bytes(), stats, err
}

// streamOK runs a stream that must succeed and checks that the player got exactly its span of file.
func streamOK(t *testing.T, e *engine.Engine, req engine.Job, file []byte) engine.Stats {
	t.Helper()
	got, stats, err := stream(t, e, req)
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, got, file, req.Span)
	return stats
}

func checkBytes(t *testing.T, got, file []byte, span httprange.Span) {
	t.Helper()
	want := file[span.Start : span.End+1]
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("span %d-%d: got %d bytes, want %d; first difference at offset %d", span.Start, span.End, len(got), len(want), span.Start+int64(i))
	}
}

func TestStreamRandomRangesMatchTheFile(t *testing.T) {
	file := upstreamtest.RandomFile(1<<20 + 12345)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	size := int64(len(file))
	r := rand.New(rand.NewPCG(1, 2))
	for _, chunk := range []int64{16 << 10, 64<<10 + 1000, 256 << 10, 1 << 20} {
		for _, conns := range []int{1, 2, 3, 4, 8} {
			e := newEngine(t, u, chunk, conns)
			spans := []httprange.Span{{Start: 0, End: size - 1}, {Start: size - 1, End: size - 1}, {Start: chunk, End: min(2*chunk, size) - 1}, {Start: chunk - 1, End: chunk}}
			for range 4 {
				a := r.Int64N(size)
				spans = append(spans, httprange.Span{Start: a, End: a + r.Int64N(size-a)})
			}
			for _, span := range spans {
				got, _, err := stream(t, e, engine.Job{Target: target(u), Span: span})
				if err != nil {
					t.Fatalf("chunk %d, %d connections, span %+v: %v", chunk, conns, span, err)
				}
				checkBytes(t, got, file, span)
			}
		}
	}
}

func TestStreamSurvivesFaults(t *testing.T) {
	file := upstreamtest.RandomFile(700_000)
	for name, fault := range map[string]upstreamtest.Fault{
		"503":               {Status: http.StatusServiceUnavailable},
		"429 Retry-After 0": {Status: http.StatusTooManyRequests, RetryAfter: "0"},
		"500":               {Status: http.StatusInternalServerError},
		"reset mid-body":    {ResetAfter: 10_000},
		"200 for 206":       {Whole: true},
		"wrong range":       {Shift: 100},
	} {
		t.Run(name, func(t *testing.T) {
			u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
				if n%3 == 1 {
					return fault
				}
				return upstreamtest.Fault{}
			}})
			defer u.Close()
			e := newEngine(t, u, 64<<10, 4)
			span := httprange.Span{Start: 1000, End: int64(len(file)) - 1}
			stats := streamOK(t, e, engine.Job{Target: target(u), Span: span}, file)
			if stats.Retries == 0 {
				t.Error("no retry counted, yet every third request failed")
			}
		})
	}
}

func TestStreamNeverSplicesAnotherVersion(t *testing.T) {
	file := upstreamtest.RandomFile(1 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
		if n >= 4 {
			return upstreamtest.Fault{ETag: `"v2"`}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	e := newEngine(t, u, 64<<10, 2)
	got, _, err := stream(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}})
	if !errors.Is(err, upstream.ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
	if len(got) >= len(file) || !bytes.Equal(got, file[:len(got)]) {
		t.Fatalf("the player got %d bytes that are not a strict prefix of the first version", len(got))
	}
}

func TestStreamSizeChangeIsAnotherVersion(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	e := newEngine(t, u, 64<<10, 2)
	tgt := target(u)
	tgt.Version.Size++ // the file the probe saw was one byte longer
	_, _, err := stream(t, e, engine.Job{Target: tgt, Span: httprange.Span{Start: 0, End: 1000}})
	if !errors.Is(err, upstream.ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
}

func TestStreamResolvesAnExpiredLinkAgain(t *testing.T) {
	file := upstreamtest.RandomFile(600_000)
	var current atomic.Int64
	current.Store(1)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, r *http.Request) upstreamtest.Fault {
		if n == 3 {
			current.Store(2) // the signature the stream started with expires now
		}
		if r.URL.Query().Get("sig") != fmt.Sprint(current.Load()) {
			return upstreamtest.Fault{Status: http.StatusForbidden}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	e := newEngine(t, u, 32<<10, 3)
	tgt, refresh, refreshes := signedLink(u, &current)
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	streamOK(t, e, engine.Job{Target: tgt, Span: span, Refresh: refresh}, file)
	if n := refreshes.Load(); n != 1 {
		t.Errorf("resolved the link %d times, want once for all connections", n)
	}
}

// signedLink is u's file behind a signature, sig=1, and the Refresh that resolves it again with the
// signature current holds then, counting how often it is called.
func signedLink(u *upstreamtest.Upstream, current *atomic.Int64) (source.Target, func(context.Context) (source.Target, error), *atomic.Int64) {
	tgt := target(u)
	tgt.URL += "?sig=1"
	refreshes := new(atomic.Int64)
	return tgt, func(context.Context) (source.Target, error) {
		refreshes.Add(1)
		t := target(u)
		t.URL += "?sig=" + fmt.Sprint(current.Load())
		return t, nil
	}, refreshes
}

func TestStreamExpiredLinkWithoutRefreshFails(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault { return upstreamtest.Fault{Status: http.StatusGone} }})
	defer u.Close()
	_, _, err := stream(t, newEngine(t, u, 32<<10, 2), engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: 99}})
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("err = %v, want an expired-link error", err)
	}
}

func TestStreamGivesUpAfterRetries(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusBadGateway}
	}})
	defer u.Close()
	e := newEngine(t, u, 32<<10, 1)
	e.Retries = 3
	_, _, err := stream(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: 99_999}})
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 retries") {
		t.Fatalf("err = %v, want giving up after 3 retries", err)
	}
	if got := u.Requests(); got != 4 {
		t.Errorf("upstream saw %d requests, want 1 + 3 retries", got)
	}
}

func TestStreamFailsAtOnceOnNotFound(t *testing.T) {
	u := upstreamtest.New(upstreamtest.RandomFile(100_000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault { return upstreamtest.Fault{Status: http.StatusNotFound} }})
	defer u.Close()
	_, _, err := stream(t, newEngine(t, u, 32<<10, 1), engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: 99}})
	var status *upstream.StatusError
	if !errors.As(err, &status) || status.Code != http.StatusNotFound {
		t.Fatalf("err = %v, want the upstream's 404", err)
	}
	if got := u.Requests(); got != 1 {
		t.Errorf("upstream saw %d requests; a 404 is not retried", got)
	}
}

// failingWriter takes limit bytes, then fails as a player that closed its connection.
type failingWriter struct {
	limit int
	n     int
}

func (w *failingWriter) Write(b []byte) (int, error) {
	if w.n+len(b) > w.limit {
		return 0, errors.New("connection reset by player")
	}
	w.n += len(b)
	return len(b), nil
}

func TestPlayerLeavingCancelsEveryUpstreamRequest(t *testing.T) {
	file := upstreamtest.RandomFile(4 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 512 << 10})
	defer u.Close()
	e := newEngine(t, u, 256<<10, 4)
	_, err := e.Stream(t.Context(), &failingWriter{limit: 100_000}, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}})
	if !errors.Is(err, engine.ErrPlayerGone) {
		t.Fatalf("err = %v, want ErrPlayerGone", err)
	}
	testsync.WaitFor(t, "no upstream request open", func() bool { return u.Open() == 0 })
}

// blockingWriter takes writes until it holds after bytes, then holds every later one until release is
// closed.
type blockingWriter struct {
	after   int
	mu      sync.Mutex
	buf     bytes.Buffer
	release chan struct{}
}

func (w *blockingWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	n := w.buf.Len()
	w.mu.Unlock()
	if n >= w.after {
		<-w.release
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

func (w *blockingWriter) taken() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return int64(w.buf.Len())
}

func TestSlowPlayerBoundsTheReadAhead(t *testing.T) {
	const chunk, conns, readAhead = 64 << 10, 4, 16 * 64 << 10
	for _, c := range []struct {
		name        string
		after       int   // what the player takes before it stops reading
		least, most int64 // the read-ahead beyond it, once the connections are idle
	}{
		{"a seek's worth", 1, 2 * chunk, 3 * chunk},                      // the first window: a chunk per connection but one
		{"a player that read on", 2 << 20, readAhead - chunk, readAhead}, // grown to the bound
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				file := upstreamtest.RandomFile(8 << 20)
				u := upstreamtest.NewInMemory(file, upstreamtest.Options{})
				defer u.Close()
				e := newEngine(t, u, chunk, conns)
				e.ReadAhead = readAhead
				w := &blockingWriter{after: c.after, release: make(chan struct{})}
				done := make(chan error, 1)
				span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
				go func() {
					_, err := e.Stream(t.Context(), w, engine.Job{Target: target(u), Span: span})
					done <- err
				}()
				time.Sleep(time.Second) // the bubble's clock: the stream settles once its first window is read
				synctest.Wait()         // the player holds a write, the connections are idle
				if u.Open() != 0 {
					t.Errorf("%d requests open while the player holds its write", u.Open())
				}
				if ahead := u.Served() - w.taken(); ahead < c.least || ahead > c.most {
					t.Errorf("fetched %d bytes beyond the %d the stalled player took, want %d to %d", ahead, w.taken(), c.least, c.most)
				}
				close(w.release)
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				checkBytes(t, w.buf.Bytes(), file, span)
			})
		})
	}
}

// firstWriteWriter reports its first write.
type firstWriteWriter struct {
	first chan int
	once  sync.Once
}

func (w *firstWriteWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { w.first <- len(b) })
	return len(b), nil
}

func TestHeadStreamsBeforeItsChunkIsWhole(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault { return upstreamtest.Fault{StallAfter: 50_000} }})
	defer u.Close()
	e := newEngine(t, u, 1<<20, 1)
	e.StallTimeout = time.Hour
	ctx, cancel := context.WithCancel(t.Context())
	w := &firstWriteWriter{first: make(chan int, 1)}
	done := make(chan error, 1)
	go func() {
		_, err := e.Stream(ctx, w, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}})
		done <- err
	}()
	select {
	case n := <-w.first:
		if n > 50_000 {
			t.Errorf("first write of %d bytes, more than the upstream sent", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the player got nothing while the head chunk was partly in")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestHTTP2UpstreamGetsOneConnectionPerLane(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	var h2 atomic.Bool
	u := upstreamtest.NewTLS(file, true, upstreamtest.Options{PerConn: 4 << 20, Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		h2.Store(r.ProtoMajor == 2)
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	e := newEngine(t, u, 128<<10, 4)
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	streamOK(t, e, engine.Job{Target: target(u), Span: span}, file)
	if !h2.Load() {
		t.Fatal("the upstream was not spoken to over HTTP/2")
	}
	// One per lane, and at most one more per lane while a request ends and the next begins.
	if n := u.Conns(); n < 4 || n > 8 {
		t.Errorf("%d connections, want 4 to 8: one per lane, not all multiplexed on one", n)
	}
}

func TestRelayServesAnUpstreamWithoutRange(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	u := upstreamtest.New(file, upstreamtest.Options{NoRange: true})
	defer u.Close()
	e := newEngine(t, u, 64<<10, 4)
	var out bytes.Buffer
	span := httprange.Span{Start: 5000, End: 250_000}
	if _, err := e.Relay(t.Context(), &out, target(u), span); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, out.Bytes(), file, span)
	if u.Requests() != 1 {
		t.Errorf("relay made %d requests, want one", u.Requests())
	}
}

func TestStreamOfTheLastByteOnly(t *testing.T) {
	file := upstreamtest.RandomFile(10)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	got, _, err := stream(t, newEngine(t, u, 16<<10, 4), engine.Job{Target: target(u), Span: httprange.Span{Start: 9, End: 9}})
	if err != nil || !bytes.Equal(got, file[9:]) {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestMirrorsShareTheChunksAndAFailingOneIsSetAside(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	a := upstreamtest.New(file, upstreamtest.Options{})
	defer a.Close()
	b := upstreamtest.New(file, upstreamtest.Options{})
	defer b.Close()
	broken := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusInternalServerError}
	}})
	defer broken.Close()
	e := newEngine(t, a, 64<<10, 4)
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	stats := streamOK(t, e, engine.Job{Target: target(a), Mirrors: []source.Target{target(b), target(broken)}, Span: span}, file)
	if a.Requests() < 5 || b.Requests() < 5 {
		t.Errorf("requests: %d to the target, %d to the good mirror; want the chunks spread over both", a.Requests(), b.Requests())
	}
	// Attempts already under way on other connections may reach it before the first failure sets it aside:
	// at most one per connection. Without setting aside, a third of the 32 chunk requests would go there.
	if n := broken.Requests(); n > 4 || int64(stats.Retries) != n {
		t.Errorf("the failing mirror got %d requests (%d retries); want at most one per connection, then none", n, stats.Retries)
	}
}

func TestPlayersOfOneFileShareChunkDownloads(t *testing.T) {
	// On the bubble's clock: a busy machine makes no request look slow enough to race.
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(4 << 20)
		u := upstreamtest.NewInMemory(file, upstreamtest.Options{PerConn: 4 << 20})
		defer u.Close()
		e := newEngine(t, u, 256<<10, 4)
		span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
		req := engine.Job{Target: target(u), Span: span, FileKey: "film"}
		var wg sync.WaitGroup
		outs := make([][]byte, 2)
		for i := range outs {
			wg.Go(func() {
				got, _, err := stream(t, e, req)
				if err != nil {
					t.Error(err)
				}
				outs[i] = got
			})
		}
		wg.Wait()
		for _, got := range outs {
			checkBytes(t, got, file, span)
		}
		if served := u.Served(); served > int64(len(file))*5/4 {
			t.Errorf("upstream sent %d bytes for two players of a %d-byte file; want each chunk about once", served, len(file))
		}
	})
}

func TestAPlayerLeavingDoesNotCostTheOtherItsBytes(t *testing.T) {
	file := upstreamtest.RandomFile(4 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 2 << 20})
	defer u.Close()
	e := newEngine(t, u, 512<<10, 4)
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	req := engine.Job{Target: target(u), Span: span, FileKey: "film"}
	leaver := make(chan error, 1)
	go func() {
		_, err := e.Stream(t.Context(), &failingWriter{limit: 600 << 10}, req) // leaves inside the second chunk
		leaver <- err
	}()
	got, _, err := stream(t, e, req)
	if err != nil {
		t.Fatal(err)
	}
	checkBytes(t, got, file, span)
	if err := <-leaver; !errors.Is(err, engine.ErrPlayerGone) {
		t.Fatalf("the leaving player: %v", err)
	}
	if served := u.Served(); served > int64(len(file))*5/4 {
		t.Errorf("upstream sent %d bytes for a %d-byte file; the pieces the leaver's connections had filled were fetched again", served, len(file))
	}
}

func TestAnAttemptThatBroughtBytesIsProgressNotASpentRetry(t *testing.T) {
	file := upstreamtest.RandomFile(1 << 20)
	// Every request is cut after 50 000 bytes: twenty-one tries bring the piece in, each one some of it.
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{ResetAfter: 50_000}
	}})
	defer u.Close()
	e := newEngine(t, u, 1<<20, 1)
	e.Retries = 1
	stats := streamOK(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}}, file)
	if stats.Retries < 20 {
		t.Errorf("%d retries, want one per reset", stats.Retries)
	}
	// Tries that bring nothing end the stream after -r of them in a row, saying why.
	dead := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusInternalServerError}
	}})
	defer dead.Close()
	e = newEngine(t, dead, 1<<20, 1)
	e.Retries = 3
	_, _, err := stream(t, e, engine.Job{Target: target(dead), Span: httprange.Span{Start: 0, End: 999}})
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 retries in a row brought no byte") || !strings.Contains(err.Error(), "500") || dead.Requests() != 4 {
		t.Errorf("%v after %d requests, want the 500 after 4 tries", err, dead.Requests())
	}
}
