package engine_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/upstreamtest"
)

// budgeted is an engine of 64 KiB chunks and 4 connections with budget (0: none), on an upstream of an
// 8 MiB file.
func budgeted(t *testing.T, budget int64) (*engine.Engine, *upstreamtest.Upstream) {
	u := upstreamtest.NewInMemory(upstreamtest.RandomFile(8<<20), upstreamtest.Options{})
	t.Cleanup(u.Close)
	e := newEngine(t, u, 64<<10, 4)
	e.ReadAhead, e.MaxMemory = 4<<20, budget
	return e, u
}

// budgetedPlays starts n streams of u's file on e, each as its own file (no sharing), whose players take
// after bytes and then hold their next write until release is closed. It returns once every player holds
// its write and every connection is idle, with the bytes the streams hold.
func budgetedPlays(t *testing.T, e *engine.Engine, u *upstreamtest.Upstream, n int, after int) (held int64, release func()) {
	file := u.Content
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	writers := make([]*blockingWriter, n)
	done := make(chan error, n)
	for i := range n {
		writers[i] = &blockingWriter{after: after, release: make(chan struct{})}
		go func() {
			_, err := e.Stream(t.Context(), writers[i], engine.Job{Target: target(u), Span: span, FileKey: fmt.Sprint("film ", i)})
			done <- err
		}()
	}
	time.Sleep(time.Second) // the bubble's clock: each stream settles once its first window is read
	synctest.Wait()
	return e.HeldBytes(), func() {
		for _, w := range writers {
			close(w.release)
		}
		for range writers {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
		for _, w := range writers {
			checkBytes(t, w.buf.Bytes(), file, span)
		}
	}
}

func TestSixteenStreamsHoldNoMoreThanTheBudget(t *testing.T) {
	const budget, chunk = 8 << 20, 64 << 10
	synctest.Test(t, func(t *testing.T) {
		// Without a budget each player that read on holds its whole read-ahead: what the budget is for.
		e, u := budgeted(t, 0)
		unbounded, release := budgetedPlays(t, e, u, 16, 1<<20)
		release()
		if unbounded < 4*budget {
			t.Fatalf("without a budget 16 streams hold %d bytes: the test does not test", unbounded)
		}
		e, u = budgeted(t, budget)
		held, release := budgetedPlays(t, e, u, 16, 1<<20)
		// Each stream checks the budget and then takes a chunk: at most one each past it.
		if held > budget+16*chunk {
			t.Errorf("16 streams hold %d bytes within a budget of %d", held, budget)
		}
		if held < budget/2 {
			t.Errorf("16 streams hold %d bytes of a budget of %d: they read ahead less than it allows", held, budget)
		}
		release() // every player gets every byte, in order
	})
}

func TestANewStreamsFirstByteWaitsForNoOther(t *testing.T) {
	const budget = 3 << 20
	synctest.Test(t, func(t *testing.T) {
		// Fifteen players that read on, then stopped: together they hold so much of the budget that a new
		// stream's first window (3 chunks) does not fit in what is left.
		e, u := budgeted(t, budget)
		held, release := budgetedPlays(t, e, u, 15, 1<<20)
		defer release()
		if held+3*64<<10 <= budget {
			t.Fatalf("the paused streams hold %d bytes of the budget of %d: the test does not test", held, budget)
		}
		w := &firstWriteWriter{first: make(chan int, 1)}
		done := make(chan error, 1)
		go func() {
			_, err := e.Stream(t.Context(), w, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: 1<<20 - 1}, FileKey: "a new film"})
			done <- err
		}()
		synctest.Wait()
		select {
		case <-w.first:
		default:
			t.Fatal("a new stream's first byte waited while the others held the budget")
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
