package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"time"

	"mflow/internal/engine/pace"
	"mflow/internal/httprange"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// fetch is one lane's work: the bytes [pos, claim) it claims, brought by one request at a time, asked
// again after a failure from the byte it reached. Its fields are protected by the file's lock.
type fetch struct {
	from      int64     // where its claim began
	pos       int64     // the next byte its request brings
	claim     int64     // one past the last byte it claims; an idle lane that takes half lowers it
	began     time.Time // when it was made
	racer     *fetch    // a fresh request racing this slow one on the same bytes, if any
	raced     *fetch    // for a racer: the slow request it races
	raceGap   int64     // for a racer: how far behind the slow request its first bytes came; -1 before
	wantsRace bool      // the policy found it far slower than the stream's best: a free lane races it

	retries    int   // attempts in a row that failed with no new byte reaching the stream in between
	failedAt   int64 // the stream's received bytes when its last attempt failed
	recovering bool  // waiting to try again after a failure the upstream did not ask it to wait out
	replaced   int   // fresh requests its bytes got for being slow

	// The current attempt, its request open; meter is nil between attempts.
	meter  *pace.Meter             // what the policy knows of it
	cancel context.CancelCauseFunc // ends it
	asked  int64                   // one past the last byte it asked for
	gen    int                     // the target generation it uses
	mirror int                     // the mirror it asks, 1-based; 0 is the target
}

// try is what one attempt needs, set up under the lock.
type try struct {
	span   httprange.Span
	target source.Target
	ctx    context.Context
	head   *http.Response // the probe's answer, when this attempt may use it
	via    pace.Via       // how its answer came
}

// run works on f until its bytes are in, the stream is over, or its retries run out; then the lane is
// free again.
func (s *stream) run(f *fetch) {
	defer s.leave(f)
	for {
		if !s.waitForDrive() {
			return
		}
		// A request cut short holds its lane a moment longer, while the server learns of it (the upstream
		// client's Close waits): the upstream never sees more than -c requests of a stream.
		err := s.attempt(f)
		if err == nil || s.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRaceLost) || errors.Is(err, errStreamDone) {
			return // another request brings its bytes, or nobody needs them any more
		}
		wait, fatal := s.retryPlan(f, err)
		if errors.Is(fatal, errLimited) {
			return // the stream's other requests take its bytes over
		}
		if fatal != nil {
			if s.covered(f) {
				return // another request on its bytes may still bring them
			}
			s.fail(fatal)
			return
		}
		if wait > 0 {
			s.setRecovering(f, !slowDownAsked(err))
			ok := s.pause(wait)
			s.setRecovering(f, false)
			if !ok {
				return
			}
		}
	}
}

// pause waits d unless the stream ends first; false when it did.
func (s *stream) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

func (s *stream) setRecovering(f *fetch, on bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.recovering = on
	s.f._broadcast() // an idle lane may take the bytes the player waits on meanwhile
}

// leave drops f: its lane is free, its claim gone. When that made the policy's requests grow, the stream
// holds the chunks of its longer read-ahead at once, whether the player reads on or not.
func (s *stream) leave(f *fetch) {
	if s.drop(f) {
		s.plan()
	}
}

// drop forgets f, and reports whether the requests grew.
func (s *stream) drop(f *fetch) (grew bool) {
	s.f.mu.Lock()
	defer s.unlock()
	for i, g := range s.fetches {
		if g == f {
			s.fetches = append(s.fetches[:i], s.fetches[i+1:]...)
			break
		}
	}
	delete(s.f.fetches, f)
	if f.racer != nil {
		f.racer.raced = nil
	}
	if f.raced != nil {
		f.raced.racer = nil
	}
	if f.pos >= f.claim && f.claim > f.from {
		if f.raced == nil {
			grew = s.pace.Finished()
		}
		s._debug("bytes in", "from", f.from, "to", f.claim-1, "took", time.Since(f.began).Round(time.Millisecond), "retries", f.retries)
	}
	s.f._broadcast()
	return grew
}

// covered reports whether another request of the file still works on f's next byte.
func (s *stream) covered(f *fetch) bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return f.racer != nil || f.raced != nil
}

// attempt sends one request for the rest of f's claim (or takes the probe's answer) and copies its answer
// in. It returns nil when f needs it no more.
func (s *stream) attempt(f *fetch) (err error) {
	t, ok := s.startAttempt(f)
	if !ok {
		return nil
	}
	defer func() { s.endAttempt(f, t.span, err) }()
	resp, err := s.open(f, &t)
	if resp == nil {
		return err
	}
	defer resp.Body.Close()
	s.answered(f, t.via)
	buf := make([]byte, readSize)
	for {
		n, rerr := resp.Body.Read(buf)
		more, hold := true, false
		if n > 0 {
			more, hold = s.deliver(f, buf[:n])
		}
		if hold {
			s.plan() // the head told where the film's index is: hold its chunks, or the read-ahead's
		}
		if rerr == io.EOF {
			if s.position(f) < t.span.End+1 {
				return fmt.Errorf("%w at byte %d of %s", upstream.ErrShortBody, s.position(f), t.span.Header())
			}
			return nil
		}
		if rerr != nil {
			return attemptError(t.ctx, fmt.Errorf("%w at byte %d of %s: %w", upstream.ErrShortBody, s.position(f), t.span.Header(), rerr))
		}
		if !more {
			s.drain(resp.Body, t.span.End+1-s.position(f))
			return nil
		}
	}
}

// drainMax is how much of an answer a request that needs no more of it reads on, so its connection serves
// the next request rather than a new one starting over (a handshake, and TCP's slow start).
const drainMax = 128 << 10

// drain reads and drops the left bytes of body, to its end, when they are few.
func (s *stream) drain(body io.Reader, left int64) {
	if left >= 0 && left <= drainMax {
		io.Copy(io.Discard, io.LimitReader(body, left+1))
	}
}

// open returns the checked answer for t: the probe's, when it fits, else a new request's for the rest of
// f's claim. Without an answer, the error is nil when the attempt was cancelled because nobody needs it any
// more.
func (s *stream) open(f *fetch, t *try) (*http.Response, error) {
	if resp := t.head; resp != nil {
		// The probe's request is not ours to cancel: closing its body ends it.
		context.AfterFunc(t.ctx, func() { resp.Body.Close() })
		err := upstream.CheckPartial(resp, t.target.URL, t.span, t.target.Version)
		if err == nil {
			t.via = pace.ViaProbe
			return resp, nil
		}
		resp.Body.Close()
		s.log.Debug("the probe's answer does not fit the first request; asking again", "err", err)
		t.head, t.span = nil, s.askWhole(f)
	}
	trace := &httptrace.ClientTrace{GotConn: func(c httptrace.GotConnInfo) { // the last one, after redirects
		t.via = pace.ViaReused
		if !c.Reused {
			t.via = pace.ViaNew // a connection opened ahead too: it carried nothing yet
		}
	}}
	resp, _, err := s.e.Client.Get(httptrace.WithClientTrace(t.ctx, trace), t.target.Location, t.span.Header())
	if err != nil {
		return nil, attemptError(t.ctx, err)
	}
	if err := upstream.CheckPartial(resp, t.target.URL, t.span, t.target.Version); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

// askWhole makes f's attempt ask for the whole rest of its claim, and returns that span.
func (s *stream) askWhole(f *fetch) httprange.Span {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.asked = f.claim
	return httprange.Span{Start: f.pos, End: f.claim - 1}
}

// startAttempt sets f up for a new attempt on the rest of its claim; false when it needs no more bytes.
func (s *stream) startAttempt(f *fetch) (try, bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.pos = s._nextNeeded(f.pos, f.claim)
	if f.pos >= f.claim || s.ctx.Err() != nil {
		return try{}, false
	}
	t := try{span: httprange.Span{Start: f.pos, End: f.claim - 1}}
	if s.head != nil && f.pos == s.span.Start && f.raced == nil {
		t.head, s.head = s.head, nil
		t.span.End = s.headEnd - 1 // what the probe asked for; the rest of the claim is asked after it
		f.mirror = 0
	} else {
		f.mirror = s._pickTarget()
	}
	t.target = s._targetOf(f)
	ctx, cancel := context.WithCancelCause(s.ctx)
	t.ctx = ctx
	f.cancel, f.gen, f.asked = cancel, s.targetGen, t.span.End+1
	f.meter = s.pace.Sent(time.Now())
	return t, true
}

// _nextNeeded is the first byte in [from, to) that no piece holds yet: bytes another request already
// brought are not asked again.
func (s *stream) _nextNeeded(from, to int64) int64 {
	for from < to {
		c := s.f.chunks[from/s.e.ChunkSize]
		if c == nil {
			return from
		}
		p := c._pieceAt(from)
		if p == nil || p.filled <= from {
			return from
		}
		from = p.filled
	}
	return from
}

const (
	EndedOK        RequestEnd = iota // its bytes are in, or another request brought them first
	EndedFailed                      // an error: its bytes are asked again, or the stream fails
	EndedReplaced                    // cancelled as far slower than the stream's best, below --min-speed, or stalled
	EndedCancelled                   // the stream ended first: the player has its bytes, left, or the stream failed
)

func (s *stream) position(f *fetch) int64 {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return f.pos
}

// rest names the bytes f still has to bring, for errors and logs. Its claim moves under the lock when a
// race settles on another lane.
func (s *stream) rest(f *fetch) string {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return fmt.Sprintf("bytes %d-%d", f.pos, f.claim-1)
}

// attemptError names why an attempt ended: the cause of its cancellation when it was cancelled.
func attemptError(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	return context.Cause(ctx)
}

// deliver copies the bytes a request read at f.pos into the pieces they belong to, past what each already
// holds, and reports whether the request should go on reading (it should not once its claim is in, when
// it races and lost, or when nobody needs its bytes any more) and whether they told where the film's index
// is, so that chunks are to be held (see _seekIndex).
func (s *stream) deliver(f *fetch, data []byte) (more, hold bool) {
	s.f.mu.Lock()
	defer s.unlock()
	size := s.e.ChunkSize
	s.pace.Got(f.meter, time.Now(), len(data))
	at := f.pos
	for len(data) > 0 && at < f.asked {
		c := s.f.chunks[at/size]
		step := min(int64(len(data)), (at/size+1)*size-at, f.asked-at)
		if c != nil && !c.released {
			if p := c._pieceAt(at); p != nil {
				step = min(step, p.end-at)
				if at <= p.filled && at+step > p.filled { // contiguous with what the piece holds: the new part
					copy(c.bytes(p.filled, at+step), data[p.filled-at:step])
					s.received += at + step - p.filled
					p.filled = at + step
					s.f._progress()
				}
			} else if next := c._pieceAfter(at); next != nil {
				step = min(step, next.start-at) // bytes no stream needs: dropped
			}
		}
		at += step
		data = data[step:]
	}
	f.pos = at
	s._settleRace(f, f.racer)
	s._settleRace(f.raced, f)
	return f.pos < f.claim, s._seekIndex()
}

// _settleRace ends a race as soon as it is decided. The fresh request wins when it catches up with the
// slow one: the slow one is cancelled and the fresh carries on with its claim. It loses when the slow one
// brought its claim first, or when it brought twice the gap it started behind without closing it (a route
// at least twice as fast would have): every byte it brings until then is one the slow request brings too.
func (s *stream) _settleRace(slow, fresh *fetch) {
	if slow == nil || fresh == nil || fresh.meter == nil || fresh.meter.Bytes() == 0 {
		return
	}
	if fresh.raceGap < 0 {
		fresh.raceGap = max(slow.pos-fresh.pos, 0)
	}
	loser := (*fetch)(nil)
	switch {
	case fresh.pos >= slow.pos:
		fresh.claim = max(fresh.claim, slow.claim)
		slow.claim, loser = slow.pos, slow
		s.replaced++
	case slow.pos >= slow.claim || fresh.meter.Bytes() > max(2*fresh.raceGap, 2*readSize):
		fresh.claim, loser = fresh.pos, fresh
	default:
		return
	}
	slow.racer, fresh.raced = nil, nil
	if loser.cancel != nil {
		loser.cancel(errRaceLost)
	}
}
