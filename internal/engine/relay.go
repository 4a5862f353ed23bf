package engine

import (
	"context"
	"fmt"
	"io"

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
	defer cutWritesWhenDone(ctx, w)()
	if _, err := io.CopyN(io.Discard, resp.Body, span.Start); err != nil {
		return Stats{}, fmt.Errorf("skipping to byte %d: %w", span.Start, err)
	}
	body := io.Reader(resp.Body)
	if span.End >= 0 {
		body = io.LimitReader(resp.Body, span.Len())
	}
	n, err := io.CopyBuffer(newFlushWriter(w), body, make([]byte, readSize))
	if err == nil && span.End >= 0 && n < span.Len() {
		err = fmt.Errorf("%w after %d of %d bytes", upstream.ErrShortBody, n, span.Len())
	}
	return Stats{Bytes: n}, err
}
