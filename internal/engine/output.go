package engine

import (
	"context"
	"fmt"
	"io"
	"time"
)

// The player's connection is reached through the writers wrapped around it (a byte counter, a multipart
// body): each names the one it wraps with Unwrap, as http.ResponseController finds a ResponseWriter's.

// flusher sends what a writer buffered.
type flusher interface{ Flush() }

// writeDeadliner is a player's connection whose blocked write can be cut.
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// underneath is the first writer of w's chain, w itself or one it wraps (Unwrap() io.Writer), that is a T.
func underneath[T any](w io.Writer) (T, bool) {
	for {
		if t, ok := w.(T); ok {
			return t, true
		}
		u, ok := w.(interface{ Unwrap() io.Writer })
		if !ok {
			var none T
			return none, false
		}
		w = u.Unwrap()
	}
}

// cutWritesWhenDone cuts w's blocked write once ctx ends, when w's connection can; the function it returns
// stops that.
func cutWritesWhenDone(ctx context.Context, w io.Writer) (stop func() bool) {
	d, ok := underneath[writeDeadliner](w)
	if !ok {
		return func() bool { return false }
	}
	return context.AfterFunc(ctx, func() { _ = d.SetWriteDeadline(time.Now()) })
}

// flushWriter flushes after each write, when it can, so the player gets the bytes as they come.
type flushWriter struct {
	w     io.Writer
	flush flusher // nil when w cannot flush
}

func newFlushWriter(w io.Writer) flushWriter {
	f, _ := underneath[flusher](w)
	return flushWriter{w: w, flush: f}
}

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err != nil {
		return n, fmt.Errorf("%w: %w", ErrPlayerGone, err)
	}
	if f.flush != nil {
		f.flush.Flush()
	}
	return n, nil
}
