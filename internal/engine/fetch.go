package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/upstream"
)

// fetch is a worker's claim on a piece, kept across its retries. Guarded by the file's lock.
type fetch struct {
	pos       int64                   // next offset this connection will read
	began     time.Time               // when the claim was made
	cancel    context.CancelCauseFunc // ends the current attempt; nil between attempts
	gen       int                     // target generation the attempt uses
	mirror    int                     // the mirror the attempt uses, 1-based; 0 is the target
	got       int64                   // bytes the current attempt read
	sampled   int64                   // got at the last sample
	samples   int                     // samples taken of the current attempt
	rate      float64                 // bytes/s in the last sample
	quiet     time.Duration           // time since the attempt last delivered a byte
	slowCount int                     // samples in a row below the minimum speed
}

// fill works on p until it is done, the stream ends, or its retries run out.
func (s *stream) fill(p *piece, f *fetch) {
	defer s.leave(p, f)
	for {
		err := s.attempt(p, f)
		if err == nil || s.ctx.Err() != nil {
			return
		}
		wait, fatal := s.retryPlan(p, f, err)
		if fatal != nil {
			s.fail(fatal)
			return
		}
		s.log.Debug("retrying chunk", "from", f.pos, "to", p.end-1, "wait", wait, "err", err)
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

// leave drops f's claim on p, and logs p once it is done.
func (s *stream) leave(p *piece, f *fetch) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for i, g := range p.fetches {
		if g == f {
			p.fetches = append(p.fetches[:i], p.fetches[i+1:]...)
			break
		}
	}
	delete(s.fetches, f)
	if p.done() && f.pos >= p.end {
		s.log.Debug("chunk done", "from", p.start, "to", p.end-1, "took", time.Since(f.began).Round(time.Millisecond), "retries", p.retries)
	}
	s.f._broadcast()
}

// attempt sends one request for the rest of p and copies its answer in. It returns nil when p needs this
// connection no more.
func (s *stream) attempt(p *piece, f *fetch) error {
	s.f.mu.Lock()
	if p.done() || p.c.released {
		s.f.mu.Unlock()
		return nil
	}
	f.pos = max(f.pos, p.filled)
	span := httprange.Span{Start: f.pos, End: p.end - 1}
	f.mirror = s._pickTarget()
	target := s.target
	if f.mirror > 0 {
		target = s.mirrors[f.mirror-1]
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	f.cancel, f.gen, f.got, f.sampled, f.samples, f.rate, f.quiet, f.slowCount = cancel, s.targetGen, 0, 0, 0, 0, 0, 0
	s.f.mu.Unlock()
	defer func() {
		s.f.mu.Lock()
		f.cancel = nil
		s.f.mu.Unlock()
		cancel(nil)
	}()

	resp, _, err := s.e.Client.Get(ctx, target.URL, target.Header, span.Header(), s.e.MaxRedirects)
	if err != nil {
		return attemptError(ctx, err)
	}
	defer resp.Body.Close()
	if err := upstream.CheckPartial(resp, target.URL, span, target.Version); err != nil {
		return err
	}
	buf := make([]byte, readSize)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 && !s.deliver(p, f, buf[:n]) {
			return nil
		}
		if err == io.EOF {
			return fmt.Errorf("%w at byte %d of %s", errShortBody, f.pos, span.Header())
		}
		if err != nil {
			return attemptError(ctx, err)
		}
	}
}

// _pickTarget takes turns between the target and the mirrors not set aside: 0 is the target, n the nth
// mirror. Call with the lock held.
func (s *stream) _pickTarget() int {
	for range len(s.mirrors) + 1 {
		i := s.nextTarget % (len(s.mirrors) + 1)
		s.nextTarget++
		if i == 0 || !s.mirrorAside[i-1] {
			return i
		}
	}
	return 0
}

// attemptError names why an attempt ended: the cause of its cancellation when it was cancelled.
func attemptError(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	if cause := context.Cause(ctx); cause != errRaceLost {
		return cause
	}
	return nil
}

// deliver copies the bytes a connection read at f.pos into p, past what p already holds, and reports
// whether the connection should go on reading.
func (s *stream) deliver(p *piece, f *fetch, data []byte) bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if p.done() || p.c.released {
		return false
	}
	from := f.pos
	f.pos += int64(len(data))
	f.got += int64(len(data))
	f.quiet = 0
	if to := min(f.pos, p.end); to > p.filled {
		copy(p.c.bytes(p.filled, to), data[p.filled-from:to-from])
		p.filled = to
		s.f._progress()
	}
	if !p.done() {
		return true
	}
	for _, g := range p.fetches {
		if g != f && g.cancel != nil {
			g.cancel(errRaceLost)
		}
	}
	return false
}

// retryPlan decides what follows a failed attempt: how long to wait before the next, or why the stream
// must fail.
func (s *stream) retryPlan(p *piece, f *fetch, err error) (time.Duration, error) {
	s.f.mu.Lock()
	p.retries++
	s.retries++
	retries := p.retries
	s.f.mu.Unlock()
	where := fmt.Sprintf("bytes %d-%d", f.pos, p.end-1)
	if retries > s.e.Retries {
		return 0, fmt.Errorf("%s: gave up after %d retries: %w", where, s.e.Retries, err)
	}
	if f.mirror > 0 && !errors.Is(err, errSlow) && !errors.Is(err, errStalled) {
		// A mirror that fails is dropped at once: the target and the other mirrors carry on.
		s.f.mu.Lock()
		s.mirrorAside[f.mirror-1] = true
		s.f.mu.Unlock()
		s.log.Info("mirror set aside", "mirror", upstream.Redact(s.mirrors[f.mirror-1].URL), "err", err)
		return 0, nil
	}
	var status *upstream.StatusError
	switch {
	case errors.Is(err, upstream.ErrChanged), errors.Is(err, upstream.ErrTooManyRedirects):
		return 0, fmt.Errorf("%s: %w", where, err)
	case errors.As(err, &status) && status.Expired():
		if err := s.refreshTarget(f.gen, err); err != nil {
			return 0, fmt.Errorf("%s: %w", where, err)
		}
		return 0, nil
	case errors.As(err, &status) && !status.Temporary():
		return 0, fmt.Errorf("%s: %w", where, err)
	case errors.Is(err, errSlow), errors.Is(err, errStalled):
		return 0, nil
	}
	wait := s.backoff(retries)
	if errors.As(err, &status) {
		wait = max(wait, status.RetryAfter)
	}
	return wait, nil
}

// backoff is the wait before the nth retry: exponential, with jitter so connections do not retry in step.
func (s *stream) backoff(n int) time.Duration {
	base := s.e.RetryBase
	if base <= 0 {
		base = 250 * time.Millisecond
	}
	d := min(base<<min(n-1, 16), maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// refreshTarget resolves an expired link again, once for all the connections that found it expired with
// target generation gen, and checks that it still leads to the same version.
func (s *stream) refreshTarget(gen int, cause error) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	s.f.mu.Lock()
	old, current := s.target, s.targetGen
	s.f.mu.Unlock()
	if current != gen {
		return nil // another connection already refreshed it
	}
	if s.refresh == nil {
		return fmt.Errorf("link expired and cannot be resolved again: %w", cause)
	}
	t, err := s.refresh(s.ctx)
	if err != nil {
		return fmt.Errorf("resolving the expired link again: %w", err)
	}
	if err := upstream.SameVersion(t.Version, old.Version); err != nil {
		return err
	}
	s.log.Info("signed link expired; resolved it again", "url", upstream.Redact(t.URL))
	s.f.mu.Lock()
	s.target = t
	s.targetGen++
	s.f.mu.Unlock()
	return nil
}

// watch samples every connection's speed each second until the stream ends.
func (s *stream) watch() {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.sample()
		}
	}
}

// sample takes one speed sample of every attempt of the stream: it drops those below the minimum speed
// for slowSamples samples in a row, and those silent for StallTimeout.
func (s *stream) sample() {
	stall := s.e.StallTimeout
	if stall <= 0 {
		stall = 10 * time.Second
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for f := range s.fetches {
		if f.cancel == nil {
			continue
		}
		delta := f.got - f.sampled
		f.sampled, f.rate = f.got, float64(delta)/sampleEvery.Seconds()
		f.samples++
		if delta == 0 {
			f.quiet += sampleEvery
		} else {
			s.connRate = 0.7*s.connRate + 0.3*f.rate
			if s.connRate < f.rate/2 { // the first samples, or a faster link than before
				s.connRate = f.rate
			}
		}
		switch {
		case f.quiet >= stall:
			s.log.Debug("connection stalled; replacing it", "at", f.pos, "silent", f.quiet)
			f.cancel(errStalled)
		case s.minSpeed > 0 && f.rate < float64(s.minSpeed):
			if f.slowCount++; f.slowCount >= slowSamples {
				s.log.Debug("connection too slow; replacing it", "at", f.pos, "rate", int64(f.rate))
				f.cancel(errSlow)
			}
		default:
			f.slowCount = 0
		}
	}
	s.f._broadcast()
}
