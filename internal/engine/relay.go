package engine

import (
	"context"
	"fmt"
	"io"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// Relay streams span of a target whose upstream ignores Range, over one connection, for a player of class
// from: it asks for the whole file, skips the bytes before span and writes span. Nothing can resume such a
// download, so an error ends it. With an unknown size (span.End < 0) it writes the whole body.
func (e *Engine) Relay(ctx context.Context, w io.Writer, t source.Target, span httprange.Span) (Stats, error) {
	resp, _, err := e.Client.Get(ctx, t.Location, "")
	if err != nil {
		return Stats{}, err
	}
	defer resp.Body.Close()
	if err := upstream.CheckWhole(resp, t.URL, t.Version); err != nil {
		return Stats{}, err
	}
	if d, ok := w.(writeDeadliner); ok {
		stop := context.AfterFunc(ctx, func() { _ = d.SetWriteDeadline(time.Now()) })
		defer stop()
	}
	if _, err := io.CopyN(io.Discard, resp.Body, span.Start); err != nil {
		return Stats{}, fmt.Errorf("skipping to byte %d: %w", span.Start, err)
	}
	body := io.Reader(resp.Body)
	if span.End >= 0 {
		body = io.LimitReader(resp.Body, span.Len())
	}
	n, err := io.CopyBuffer(flushWriter{w}, body, make([]byte, readSize))
	if err == nil && span.End >= 0 && n < span.Len() {
		err = fmt.Errorf("%w after %d of %d bytes", upstream.ErrShortBody, n, span.Len())
	}
	return Stats{Bytes: n}, err
}

// flushWriter flushes after each write, when it can, so the player gets the bytes as they come.
type flushWriter struct{ w io.Writer }

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err != nil {
		return n, fmt.Errorf("%w: %w", ErrPlayerGone, err)
	}
	if fl, ok := f.w.(interface{ Flush() }); ok {
		fl.Flush()
	}
	return n, nil
}
