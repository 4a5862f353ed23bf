package play_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/link"
	"mflow/internal/play"
	"mflow/internal/source"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tally records what a playback reports, as a task's stream would keep it.
type tally struct {
	mu        sync.Mutex
	size      int64
	delivered int64
	failed    []error
}

func (t *tally) Sized(size int64)  { t.mu.Lock(); defer t.mu.Unlock(); t.size = size }
func (t *tally) Delivered(n int64) { t.mu.Lock(); defer t.mu.Unlock(); t.delivered += n }
func (t *tally) Failed(err error)  { t.mu.Lock(); defer t.mu.Unlock(); t.failed = append(t.failed, err) }

func service(t *testing.T) *play.Service {
	client := upstream.NewClient(upstream.Config{MaxRedirects: 3})
	t.Cleanup(client.CloseIdleConnections)
	quiet := slog.New(slog.DiscardHandler)
	e := &engine.Engine{Client: client, ChunkSize: 16 << 10, Connections: 3, Retries: 2, RetryBase: time.Millisecond, Logger: quiet}
	t.Cleanup(e.Close)
	r := link.New(link.Config{Client: client, Retry: upstream.Retry{Max: 1, Base: time.Millisecond}})
	t.Cleanup(r.Close)
	return &play.Service{
		Resolver: r,
		Engine:   e,
		Logger:   quiet,
	}
}

func linkTo(u *upstreamtest.Upstream, path string) source.Link {
	return source.Link{Location: source.Location{URL: u.URL + path}}
}

func TestATallyHearsTheSizeTheBytesAndTheFailure(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	s := service(t)
	var tl tally
	pb, err := s.Open(t.Context(), play.Request{Link: linkTo(u, "/film.mkv"), First: httprange.Span{Start: -1, End: -1}, Tally: &tl})
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	if pb.File.Version.Size != 100_000 || !pb.File.Ranges || pb.File.Name != "film.mkv" || pb.File.ContentType != "video/mp4" /* the upstream's own */ {
		t.Errorf("file %+v", pb.File)
	}
	var out bytes.Buffer
	res := pb.Play(t.Context(), &out, "player", httprange.Span{Start: 10, End: 99_999})
	if res.Outcome != play.Done || !bytes.Equal(out.Bytes(), file[10:]) {
		t.Fatalf("outcome %v, %v; %d bytes", res.Outcome, res.Err, out.Len())
	}
	if tl.size != 100_000 || tl.delivered != 99_990 || len(tl.failed) != 0 {
		t.Errorf("tally %d bytes, %d delivered, failures %v", tl.size, tl.delivered, tl.failed)
	}

	missing := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusNotFound}
	}})
	defer missing.Close()
	var refused tally
	_, err = s.Open(t.Context(), play.Request{Link: linkTo(missing, "/f"), First: httprange.Span{Start: -1, End: -1}, Tally: &refused})
	if f := upstream.Classify(err); f.Kind != upstream.KindStatus || f.Code != 404 || len(refused.failed) != 1 {
		t.Errorf("a 404: %v, tally failures %v", err, refused.failed)
	}
}

func TestHowAPlaybackEnded(t *testing.T) {
	file := upstreamtest.RandomFile(1 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	s := service(t)
	errPaused := errors.New("paused")
	for _, c := range []struct {
		name   string
		cancel func(context.CancelCauseFunc)
		want   play.Outcome
	}{
		{"the player left", func(cancel context.CancelCauseFunc) { cancel(nil) }, play.Left},
		{"the task was paused", func(cancel context.CancelCauseFunc) { cancel(errPaused) }, play.Stopped},
	} {
		ctx, cancel := context.WithCancelCause(t.Context())
		pb, err := s.Open(ctx, play.Request{Link: linkTo(u, "/f"), First: httprange.Span{Start: -1, End: -1}})
		if err != nil {
			t.Fatal(err)
		}
		w := &cutAfter{n: 64 << 10, cut: func() { c.cancel(cancel) }}
		res := pb.Play(ctx, w, "player", httprange.Span{Start: 0, End: 1<<20 - 1})
		pb.Close()
		if res.Outcome != c.want || (c.want == play.Stopped && !errors.Is(res.Err, errPaused)) {
			t.Errorf("%s: outcome %v, %v; want %v", c.name, res.Outcome, res.Err, c.want)
		}
	}
}

// cutAfter takes n bytes, then calls cut once and takes the rest.
type cutAfter struct {
	n, got int
	cut    func()
	once   sync.Once
}

func (c *cutAfter) Write(b []byte) (int, error) {
	c.got += len(b)
	if c.got >= c.n {
		c.once.Do(c.cut)
	}
	return len(b), nil
}
