package probe

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counted is a probe that answers n (how many probes ran) after a second, with no body.
func counted(n *atomic.Int64) Func[int64] {
	return func(ctx context.Context) (int64, *http.Response, error) {
		v := n.Add(1)
		select {
		case <-time.After(time.Second):
			return v, nil, nil
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

func TestCallersOfOneKeyShareOneProbeAndReuseItsAnswerForTheTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New[int64](30*time.Second, 8)
		defer g.Close()
		var probes atomic.Int64
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				if v, _, err := g.Do(t.Context(), "film", false, counted(&probes)); err != nil || v != 1 {
					t.Errorf("got %d, %v; want the first probe's answer", v, err)
				}
			})
		}
		wg.Wait()
		g.Do(t.Context(), "film", false, counted(&probes)) // within the TTL: reused
		time.Sleep(30 * time.Second)
		g.Do(t.Context(), "film", false, counted(&probes)) // expired: probed again
		if n := probes.Load(); n != 2 {
			t.Errorf("%d probes, want one for the five callers and the reuse, and one after the TTL", n)
		}
	})
}

func TestAFreshProbeTakesNoEarlierAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New[int64](time.Minute, 8)
		defer g.Close()
		var probes atomic.Int64
		go g.Do(t.Context(), "film", false, counted(&probes))
		synctest.Wait() // the first probe runs
		if v, _, _ := g.Do(t.Context(), "film", true, counted(&probes)); v != 2 {
			t.Errorf("a fresh probe answered %d, want its own (2)", v)
		}
		if v, _, _ := g.Do(t.Context(), "film", false, counted(&probes)); v != 2 {
			t.Errorf("after a fresh probe: %d, want its answer kept", v)
		}
	})
}

func TestTheBodyGoesToTheCallerThatStartedTheProbeOrIsClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New[int64](time.Minute, 8)
		defer g.Close()
		var closed atomic.Bool
		withBody := func(context.Context) (int64, *http.Response, error) {
			time.Sleep(time.Second)
			return 7, &http.Response{Body: closer{Reader: strings.NewReader("head"), closed: &closed}}, nil
		}
		ctx, leave := context.WithCancel(t.Context())
		done := make(chan error)
		go func() {
			_, resp, err := g.Do(ctx, "a", false, withBody)
			if resp != nil {
				t.Error("a caller that left got the body")
			}
			done <- err
		}()
		synctest.Wait()
		var waiter int64
		var wg sync.WaitGroup
		wg.Go(func() { waiter, _, _ = g.Do(t.Context(), "a", false, withBody) })
		synctest.Wait()
		leave()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("the caller that left: %v, want context.Canceled", err)
		}
		wg.Wait()
		synctest.Wait() // the probe hands its body on, or closes it
		if waiter != 7 || !closed.Load() {
			t.Errorf("the other caller got %d, body closed %v; want the probe's answer, and its body closed", waiter, closed.Load())
		}
		_, resp, err := g.Do(t.Context(), "b", false, withBody)
		if err != nil || resp == nil {
			t.Fatalf("the caller that started a probe: %v, body %v", err, resp)
		}
		resp.Body.Close()
	})
}

type closer struct {
	io.Reader
	closed *atomic.Bool
}

func (c closer) Close() error { c.closed.Store(true); return nil }

func TestCloseEndsTheProbesNoCallerWaitsFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New[int64](time.Minute, 8)
		ended := make(chan error, 1)
		ctx, leave := context.WithCancel(t.Context())
		go g.Do(ctx, "a", false, func(ctx context.Context) (int64, *http.Response, error) {
			<-ctx.Done() // a probe that would run for an hour
			ended <- ctx.Err()
			return 0, nil, ctx.Err()
		})
		synctest.Wait()
		leave() // the caller goes; the probe goes on for the others
		synctest.Wait()
		select {
		case <-ended:
			t.Fatal("the probe ended with the caller that started it")
		default:
		}
		g.Close()
		if err := <-ended; !errors.Is(err, context.Canceled) {
			t.Errorf("the probe ended with %v, want context.Canceled by Close", err)
		}
	})
}

func TestAnswersKeptAreBoundedAndExpiredOnesMakeRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := New[int64](time.Minute, 2)
		defer g.Close()
		var probes atomic.Int64
		for _, k := range []string{"a", "b", "c"} {
			g.Do(t.Context(), k, false, counted(&probes))
		}
		if len(g.answers) != 2 {
			t.Errorf("%d answers kept, want at most 2", len(g.answers))
		}
		time.Sleep(time.Minute)
		g.Do(t.Context(), "c", false, counted(&probes))
		if _, ok := g.Recent("c"); !ok || len(g.answers) != 1 {
			t.Errorf("after the others expired: %d kept, c kept %v; want c alone", len(g.answers), ok)
		}
	})
}

func TestAProbesRequestLivesUntilTheCallerClosesItsBody(t *testing.T) {
	g := New[int64](time.Minute, 8)
	defer g.Close()
	var probeCtx context.Context
	_, resp, err := g.Do(t.Context(), "a", false, func(ctx context.Context) (int64, *http.Response, error) {
		probeCtx = ctx
		return 1, &http.Response{Body: io.NopCloser(strings.NewReader("head"))}, nil
	})
	if err != nil || resp == nil {
		t.Fatalf("%v, body %v", err, resp)
	}
	if probeCtx.Err() != nil {
		t.Fatal("the probe's request ended before its body was read")
	}
	resp.Body.Close()
	if probeCtx.Err() == nil {
		t.Error("the probe's request still open once its body was closed")
	}
}
