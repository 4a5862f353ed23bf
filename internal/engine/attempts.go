package engine

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/upstream"
)

// endAttempt closes the attempt, logs it (its range, first-byte time, bytes, speed and end) and reports
// it to the engine's Observe, outside the lock.
func (s *stream) endAttempt(f *fetch, span httprange.Span, err error) {
	done := s.closeAttempt(f, span, err)
	if s.e.Observe != nil {
		s.e.Observe(done)
	}
}

func (s *stream) closeAttempt(f *fetch, span httprange.Span, err error) RequestDone {
	s.f.mu.Lock()
	defer s.unlock()
	now := time.Now()
	f.cancel(nil)
	m := f.meter
	f.cancel, f.meter = nil, nil
	s.f._broadcast() // a refusal waiting to know whether the drive serves this one reads on
	s.pace.Done(m, now)
	done := RequestDone{Bytes: m.Bytes(), Took: now.Sub(m.Sent()), End: endOf(err)}
	attrs := []any{"range", span.Header(), "bytes", m.Bytes()}
	if m.Answered() {
		done.Status = http.StatusPartialContent // an answer used is a checked 206
		done.FirstByte = m.FirstByte()
		attrs = append(attrs, "first_byte", done.FirstByte.Round(time.Millisecond))
		if d := now.Sub(m.Sent()) - done.FirstByte; d > 0 {
			attrs = append(attrs, "speed", fmt.Sprintf("%.0fKiB/s", float64(m.Bytes())/d.Seconds()/1024))
		}
	}
	var status *upstream.StatusError
	if errors.As(err, &status) {
		done.Status = status.Code
	}
	if f.mirror > 0 {
		attrs = append(attrs, "mirror", f.mirror)
	}
	if err != nil {
		attrs = append(attrs, "ended", err)
	}
	s._debug("request", attrs...)
	return done
}

// RequestDone describes one upstream request of a stream, as it ended.
type RequestDone struct {
	End       RequestEnd
	Status    int           // the answer's HTTP status; 0 when none came
	FirstByte time.Duration // from sending to the answer's headers; 0 when none came
	Took      time.Duration // from sending to the end
	Bytes     int64         // body bytes used
}

// RequestEnd is how an upstream request ended.
type RequestEnd int

// endOf says how a request that ended with err ended.
func endOf(err error) RequestEnd {
	switch {
	case err == nil, errors.Is(err, errRaceLost):
		return EndedOK
	case errors.Is(err, errSlowRoute), errors.Is(err, errSlow), errors.Is(err, upstream.ErrStalled):
		return EndedReplaced
	case errors.Is(err, errStreamDone), errors.Is(err, context.Canceled):
		return EndedCancelled
	}
	return EndedFailed
}
