package engine_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"mflow/internal/testsync"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/source"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

// panickyCache panics on the Get or Put of its first call, then works as a memory cache.
type panickyCache struct {
	onGet, onPut bool
	once         sync.Once
	mu           sync.Mutex
	m            map[string][]byte
}

func (c *panickyCache) trip(armed bool) {
	if armed {
		c.once.Do(func() { panic("cache exploded on purpose") })
	}
}

func (c *panickyCache) Get(key string) ([]byte, bool) {
	c.trip(c.onGet)
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[key]
	return b, ok
}

func (c *panickyCache) Put(key string, data []byte) bool {
	c.trip(c.onPut)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = bytes.Clone(data)
	return false
}

func TestAPanicEndsOneStreamAndTheEngineStreamsOn(t *testing.T) {
	file := upstreamtest.RandomFile(600_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	for _, where := range []string{"Get", "Put"} {
		t.Run(where, func(t *testing.T) {
			cache := &panickyCache{onGet: where == "Get", onPut: where == "Put", m: map[string][]byte{}}
			e := newEngine(t, u, 64<<10, 4)
			e.Cache = cache
			req := engine.Job{Target: target(u), Span: span, FileKey: "film"}
			_, _, err := stream(t, e, req)
			var pe *engine.PanicError
			if !errors.As(err, &pe) || !strings.Contains(string(pe.Stack), "panickyCache") {
				t.Fatalf("err = %v, want the panic as a *PanicError with its stack", err)
			}
			// No lock is left held and nothing of the failed stream is in the way: the same file streams.
			done := make(chan struct{})
			go func() {
				defer close(done)
				streamOK(t, e, req, file)
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the engine hangs after a stream panicked")
			}
		})
	}
}

func TestAnEncodedAnswerIsNeverTakenForTheBytes(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	some := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, r *http.Request) upstreamtest.Fault {
		if r.Header.Get("Accept-Encoding") != "identity" {
			t.Errorf("request without Accept-Encoding: identity: %q", r.Header.Get("Accept-Encoding"))
		}
		return upstreamtest.Fault{Gzip: n%2 == 1}
	}})
	defer some.Close()
	if stats := streamOK(t, newEngine(t, some, 64<<10, 4), engine.Job{Target: target(some), Span: span}, file); stats.Retries == 0 {
		t.Error("no retry: the gzip answers were not refused")
	}
	always := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault { return upstreamtest.Fault{Gzip: true} }})
	defer always.Close()
	if _, _, err := stream(t, newEngine(t, always, 64<<10, 4), engine.Job{Target: target(always), Span: span}); !errors.Is(err, upstream.ErrBadAnswer) {
		t.Fatalf("err = %v, want ErrBadAnswer after the retries", err)
	}
}

func TestSizesBeyondTheMaximumAreRefused(t *testing.T) {
	u := upstreamtest.NewVirtual(1<<62, upstreamtest.Options{})
	defer u.Close()
	e := newEngine(t, u, 1<<20, 4)
	for _, size := range []int64{upstream.MaxSize + 1, 1<<63 - 1} {
		tg := source.Target{Location: source.Location{URL: u.URL + "/f"}, Version: source.Version{Size: size, ETag: u.ETag}}
		if _, _, err := stream(t, e, engine.Job{Target: tg, Span: httprange.Span{Start: size - 1, End: size - 1}}); !errors.Is(err, upstream.ErrTooBig) {
			t.Errorf("size %d: err = %v, want ErrTooBig", size, err)
		}
	}
	if u.Requests() != 0 {
		t.Errorf("%d requests for a file too big to stream", u.Requests())
	}
}

// FuzzStreamAtTheEdges streams random spans of virtual files of random sizes (up to 2^63-1) with random
// chunk sizes: within the maximum size every byte must be right, beyond it the stream is refused, and
// nothing hangs or panics.
func FuzzStreamAtTheEdges(f *testing.F) {
	f.Add(int64(1<<63-1), int64(1<<20), uint64(1), uint64(0), 4)
	f.Add(upstream.MaxSize, int64(1<<20), uint64(0), uint64(100), 4)
	f.Add(upstream.MaxSize-3, int64(1<<30), uint64(5), uint64(2), 2)
	f.Add(int64(1000), int64(16<<10), uint64(999), uint64(0), 1)
	f.Add(int64(3<<20+7), int64(1<<20), uint64(1<<20+5), uint64(300_000), 8)
	f.Fuzz(func(t *testing.T, size, chunk int64, fromEnd, length uint64, conns int) {
		if size <= 0 || chunk <= 0 || conns <= 0 {
			return
		}
		chunk = 1 + chunk%(1<<30)
		conns = 1 + conns%8
		start := size - 1 - int64(fromEnd%uint64(size))
		end := start + int64(length%(512<<10))
		end = min(end, size-1, start+(512<<10)) // keep each case small and quick
		u := upstreamtest.NewVirtual(size, upstreamtest.Options{})
		defer u.Close()
		c := upstream.NewClient(upstream.Config{Dial: u.Dial(), MaxRedirects: 1})
		defer c.CloseIdleConnections()
		e := &engine.Engine{Client: c, ChunkSize: max(chunk, 16<<10), Connections: conns, Retries: 2, RetryBase: time.Millisecond, Logger: quiet}
		span := httprange.Span{Start: start, End: end}
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := e.Stream(ctx, &out, engine.Job{Target: source.Target{Location: source.Location{URL: u.URL + "/f"}, Version: source.Version{Size: size, ETag: u.ETag}}, Span: span})
		if size > upstream.MaxSize {
			if !errors.Is(err, upstream.ErrTooBig) {
				t.Fatalf("size %d: err = %v, want ErrTooBig", size, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("size %d, chunk %d, span %d-%d: %v", size, e.ChunkSize, start, end, err)
		}
		if want := u.Bytes(start, end+1); !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("size %d, chunk %d, span %d-%d: wrong bytes", size, e.ChunkSize, start, end)
		}
	})
}

// deadlineWriter is a player that takes the first write, then holds every later one until its write
// deadline is set, as a player that stopped reading holds mflow's write.
type deadlineWriter struct {
	mu       sync.Mutex
	n        int
	first    chan struct{}
	deadline chan struct{}
	once     sync.Once
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.n++
	n := w.n
	w.mu.Unlock()
	if n == 1 {
		close(w.first)
		return len(b), nil
	}
	<-w.deadline
	return 0, os.ErrDeadlineExceeded
}

func (w *deadlineWriter) SetWriteDeadline(time.Time) error {
	w.once.Do(func() { close(w.deadline) })
	return nil
}

func TestCancellingCutsAWriteThePlayerHolds(t *testing.T) {
	file := upstreamtest.RandomFile(4 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	e := newEngine(t, u, 256<<10, 4)
	ctx, cancel := context.WithCancel(t.Context())
	w := &deadlineWriter{first: make(chan struct{}), deadline: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := e.Stream(ctx, w, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}})
		done <- err
	}()
	<-w.first
	cancel() // as pausing or removing the task does
	if err := <-done; err == nil {
		t.Fatal("the stream ended cleanly after it was cancelled")
	}
	testsync.WaitFor(t, "no upstream request open", func() bool { return u.Open() == 0 })
}

// onEachDriveModel runs test in a bubble of its own for each drive model, with a 16 MiB file on it and an
// engine of 1 MiB chunks and 4 connections.
func onEachDriveModel(t *testing.T, test func(t *testing.T, file []byte, u *upstreamtest.Upstream, e *engine.Engine)) {
	for _, m := range upstreamtest.DriveModels(2 << 20) {
		t.Run(m.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				file := upstreamtest.RandomFile(16 << 20)
				u := upstreamtest.NewInMemory(file, m.Opts)
				defer u.Close()
				test(t, file, u, newEngine(t, u, 1<<20, 4))
			})
		})
	}
}

func TestAStreamNeverHasMoreThanConnectionsRequestsOpen(t *testing.T) {
	onEachDriveModel(t, func(t *testing.T, file []byte, u *upstreamtest.Upstream, e *engine.Engine) {
		streamOK(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}}, file)
		e.Client.CloseIdleConnections()
		if n := u.MaxOpen(); n > 4 {
			t.Errorf("%d requests open at once at the upstream with -c 4", n)
		}
	})
}

func TestRequestsGrowWhileThePlayerKeepsReading(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(32 << 20)
		var mu sync.Mutex
		var ranges []httprange.Span
		u := upstreamtest.NewInMemory(file, upstreamtest.Options{PerConn: 2 << 20, Latency: 150 * time.Millisecond, Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
			var a, b int64
			fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b)
			mu.Lock()
			defer mu.Unlock()
			ranges = append(ranges, httprange.Span{Start: a, End: b})
			return upstreamtest.Fault{}
		}})
		defer u.Close()
		e := newEngine(t, u, 1<<20, 4)
		streamOK(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}}, file)
		e.Client.CloseIdleConnections()
		mu.Lock()
		defer mu.Unlock()
		// A seek's worth first: a request per chunk; then, the player reading on, longer and longer ones.
		// Requests sent together reach the upstream in any order: by where they start.
		slices.SortFunc(ranges, func(a, b httprange.Span) int { return cmp.Compare(a.Start, b.Start) })
		for i, r := range ranges[:4] {
			if r.Len() != 1<<20 {
				t.Errorf("request %d asks for %d bytes, want one chunk", i, r.Len())
			}
		}
		longest := int64(0)
		for _, r := range ranges {
			longest = max(longest, r.Len())
		}
		if longest < 4<<20 || len(ranges) > 16 {
			t.Errorf("%d requests, the longest %d bytes, for 32 chunks: the requests did not grow with the reading: %v", len(ranges), longest, ranges)
		}
	})
}

func TestASlowRouteIsReplacedWhileTheOthersKeepTheirRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(8 << 20)
		var mu sync.Mutex
		var ranges []string
		u := upstreamtest.NewInMemory(file, upstreamtest.Options{PerConn: 1 << 20, Latency: 50 * time.Millisecond, Fault: func(n int64, r *http.Request) upstreamtest.Fault {
			mu.Lock()
			defer mu.Unlock()
			ranges = append(ranges, r.Header.Get("Range"))
			if n == 3 {
				return upstreamtest.Fault{Rate: 64 << 10} // one request lands on a route 16 times slower
			}
			return upstreamtest.Fault{}
		}})
		defer u.Close()
		e := newEngine(t, u, 1<<20, 4)
		e.MinSpeed = 0 // relative to the stream's own speed: no setting needed
		began := time.Now()
		stats := streamOK(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}}, file)
		took := time.Since(began)
		e.Client.CloseIdleConnections()
		if stats.Replaced != 1 || stats.Retries != 0 {
			t.Errorf("replaced %d, retried %d; want the one slow request replaced and nothing else touched", stats.Replaced, stats.Retries)
		}
		mu.Lock()
		defer mu.Unlock()
		if splits := int(e.Remedies.Splits.Load()); len(ranges) > 9+splits {
			t.Errorf("%d requests, want at most 9 and the %d halves idle connections took: one per chunk and one fresh request for the slow route: %q",
				len(ranges), splits, ranges)
		}
		// 8 MiB over 4 connections at 1 MiB/s is 2 s; the slow route alone would take 16 s for its chunk.
		if took > 4*time.Second {
			t.Errorf("took %v: the slow route was not replaced within a few seconds", took)
		}
	})
}

func TestReplacedRequestsCountInTheStats(t *testing.T) {
	// The uneven-routes drive model: a stream over it replaces requests and stays byte-exact.
	file := upstreamtest.RandomFile(6 << 20)
	opts := upstreamtest.DriveModels(4 << 20)[2].Opts
	opts.Seed = 3 // its first draws send a request down the slow route
	u := upstreamtest.New(file, opts)
	defer u.Close()
	stats := streamOK(t, newEngine(t, u, 256<<10, 4), engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}}, file)
	if stats.Replaced == 0 {
		t.Errorf("no request replaced over %d requests on uneven routes", u.Requests())
	}
}

func TestBurstyPacingIsNotTakenForASlowRoute(t *testing.T) {
	// nginx's limit_rate sends each second's allowance at once and then nothing: over 100 ms a healthy
	// request reads a burst or nothing. None of them is a slow route.
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(8 << 20)
		u := upstreamtest.NewInMemory(file, upstreamtest.Options{PerConn: 512 << 10, Bursts: time.Second, Latency: 5 * time.Millisecond})
		defer u.Close()
		e := newEngine(t, u, 1<<20, 4)
		stats := streamOK(t, e, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(file)) - 1}}, file)
		e.Client.CloseIdleConnections()
		if splits := e.Remedies.Splits.Load(); stats.Replaced != 0 || u.Requests() > 8+splits {
			t.Errorf("replaced %d requests, %d requests in all (%d halves taken by idle connections); want none replaced, at most one request per chunk and half", stats.Replaced, u.Requests(), splits)
		}
		if n := u.MaxOpen(); n > 4 {
			t.Errorf("%d requests open at once with -c 4", n)
		}
	})
}

func TestAHostNeverHasMoreThanHostConnectionsRequestsOpen(t *testing.T) {
	onEachDriveModel(t, func(t *testing.T, file []byte, u *upstreamtest.Upstream, e *engine.Engine) {
		e.Client = upstream.NewClient(upstream.Config{Dial: u.Dial(), HostConnections: 4})
		defer e.Client.CloseIdleConnections()
		req := engine.Job{Target: target(u), FileKey: "film"}
		var wg sync.WaitGroup
		for _, start := range []int64{0, 8 << 20} { // two players of one file
			wg.Go(func() {
				req := req
				req.Span = httprange.Span{Start: start, End: int64(len(file)) - 1}
				streamOK(t, e, req, file)
			})
		}
		wg.Go(func() { // and one that seeks away after 3 MiB, cutting its requests
			ctx, leave := context.WithCancel(t.Context())
			defer leave()
			req := req
			req.Span = httprange.Span{Start: 4 << 20, End: int64(len(file)) - 1}
			e.Stream(ctx, &leavingWriter{after: 3 << 20, leave: leave}, req)
		})
		wg.Wait()
		e.Client.CloseIdleConnections()
		if n := u.MaxOpen(); n > 4 {
			t.Errorf("%d requests open at once at the upstream with --host-connections 4", n)
		}
	})
}

// leavingWriter is a player that leaves once it took after bytes; with a round trip, it is seen gone that
// much later, the bytes written meanwhile taken by the socket buffers between.
type leavingWriter struct {
	after     int64
	roundTrip time.Duration
	got       int64
	leave     func()
	leaving   bool
}

func (w *leavingWriter) Write(b []byte) (int, error) {
	if w.got += int64(len(b)); w.got >= w.after && !w.leaving {
		w.leaving = true
		time.AfterFunc(w.roundTrip, w.leave)
	}
	return len(b), nil
}

func TestASeekCostsAboutWhatItReads(t *testing.T) {
	// mpv on every seek: bytes=X-, a couple of MiB read, the connection closed.
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(256 << 20)
		u := upstreamtest.NewInMemory(file, upstreamtest.DriveModels(2e6)[1].Opts) // 150 ms
		defer u.Close()
		e := newEngine(t, u, 1<<20, 4)
		rng := rand.New(rand.NewPCG(1, 2))
		for range 20 {
			ctx, leave := context.WithCancel(t.Context())
			from := rng.Int64N(int64(len(file)) - 4<<20)
			w := &leavingWriter{after: 2 << 20, roundTrip: time.Millisecond, leave: leave}
			e.Stream(ctx, w, engine.Job{Target: target(u), Span: httprange.Span{Start: from, End: int64(len(file)) - 1}})
			leave()
			if w.got < 2<<20 {
				t.Fatalf("the seek to %d read %d bytes", from, w.got)
			}
		}
		e.Client.CloseIdleConnections()
		t.Logf("20 seeks of 2 MiB made %d upstream requests", u.Requests())
		// A read-ahead that slid on with each seek's first window made 81: a request for every chunk the
		// seek read, and two or three more for bytes it never read; one that slid on as soon as the socket
		// buffers took the window's last bytes, before the player was seen gone, made 140.
		if n := u.Requests(); n > 70 {
			t.Errorf("20 seeks of 2 MiB made %d upstream requests, want at most 70 (the 3 chunks each reads, and few more)", n)
		}
	})
}
