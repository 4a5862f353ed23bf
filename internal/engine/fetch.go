package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// fetch is a worker's claim on a piece, kept across its retries. Its fields are protected by the file's lock.
type fetch struct {
	pos   int64     // next offset this connection will read
	began time.Time // when the claim was made
	lane  bool      // holds one of the stream's lanes; given up near the end, so the next request can start

	retries    int   // attempts in a row that failed with no new byte reaching the stream in between
	failedAt   int64 // the stream's received bytes when its last attempt failed
	recovering bool  // waiting to try again after a failure the upstream did not ask it to wait out

	// The current attempt:
	cancel     context.CancelCauseFunc // ends it; nil between attempts
	gen        int                     // target generation it uses
	mirror     int                     // the mirror it uses, 1-based; 0 is the target
	sent       time.Time               // when its request went out
	answered   time.Time               // when its answer arrived; zero before
	got        int64                   // bytes it read
	sampled    int64                   // got at the last one-second sample
	samples    int                     // one-second samples taken
	rate       float64                 // bytes/s in the last one-second sample
	quiet      time.Duration           // time since it last delivered a byte (or since it was sent)
	slowCount  int                     // one-second samples in a row below the minimum speed
	lastByte   time.Time               // when its last bytes arrived
	silence    time.Duration           // the longest wait for bytes since its grace time: the server's pacing
	trail      routeTrail              // what it had read at the last route checks
	routeRate  float64                 // bytes/s over twice its longest silence: its steady speed
	measured   bool                    // routeRate counts: the request ran a whole such window past its grace time
	recentRate float64                 // bytes/s over the last route check's interval; 0 in a silence
	routeSlow  int                     // route checks in a row it lost to the stream's best
}

// fill works on p until it is done, the stream ends, or its retries run out.
func (s *stream) fill(p *piece, f *fetch) {
	defer s.leave(p, f)
	for {
		err := s.attempt(p, f)
		if err == nil || s.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errSlowRoute) && s.racedBy(p, f) {
			return // the fresh request racing it carries on
		}
		wait, fatal := s.retryPlan(p, f, err)
		if fatal != nil {
			if s.racedBy(p, f) {
				return // another connection on the piece may still bring it
			}
			s.fail(fatal)
			return
		}
		if wait > 0 {
			s.setRecovering(f, !slowDownAsked(err))
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			s.setRecovering(f, false)
		}
	}
}

// slowDownAsked reports whether the upstream asked to be left alone for a while (429, 503): then no other
// connection hurries to the piece while this one waits.
func slowDownAsked(err error) bool {
	var status *upstream.StatusError
	return errors.As(err, &status) && (status.Code == http.StatusTooManyRequests || status.Code == http.StatusServiceUnavailable)
}

func (s *stream) setRecovering(f *fetch, on bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.recovering = on
	s.f._broadcast() // an idle lane may take the piece the player waits on meanwhile
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
	s._giveLane(f)
	if p.done() && f.pos >= p.end {
		s.log.Debug("piece done", "from", p.start, "to", p.end-1, "took", time.Since(f.began).Round(time.Millisecond), "retries", f.retries)
	}
	s.f._broadcast()
}

// _giveLane lets another worker start a request in f's lane.
func (s *stream) _giveLane(f *fetch) {
	if f.lane {
		f.lane = false
		s.busy--
		s.f._broadcast()
	}
}

// try is what one attempt needs, set up under the lock.
type try struct {
	span   httprange.Span
	target source.Target
	ctx    context.Context
	head   *http.Response // the probe's answer, when this attempt may use it
}

// attempt sends one request for the rest of p (or takes the probe's answer) and copies its answer in.
// It returns nil when p needs this connection no more.
func (s *stream) attempt(p *piece, f *fetch) (err error) {
	t, ok := s.startAttempt(p, f)
	if !ok {
		return nil
	}
	defer func() { s.endAttempt(f, t.span, err) }()
	resp, err := s.open(t)
	if resp == nil {
		return err // nil when another connection finished the piece meanwhile
	}
	defer resp.Body.Close()
	s.answered(f, t.head != nil)
	buf := make([]byte, readSize)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 && !s.deliver(p, f, buf[:n]) {
			return nil
		}
		if err == io.EOF {
			return fmt.Errorf("%w at byte %d of %s", upstream.ErrShortBody, s.position(f), t.span.Header())
		}
		if err != nil {
			return attemptError(t.ctx, fmt.Errorf("%w at byte %d of %s: %w", upstream.ErrShortBody, s.position(f), t.span.Header(), err))
		}
	}
}

// open returns the checked answer for t: the probe's, when it fits, else a new request's. Without an
// answer, the error is nil when the attempt was cancelled because nobody needs it any more.
func (s *stream) open(t try) (*http.Response, error) {
	if resp := t.head; resp != nil {
		// The probe's request is not ours to cancel: closing its body ends it.
		context.AfterFunc(t.ctx, func() { resp.Body.Close() })
		err := upstream.CheckPartial(resp, t.target.URL, t.span, t.target.Version)
		if err == nil {
			return resp, nil
		}
		resp.Body.Close()
		s.log.Debug("the probe's answer does not fit the first piece; asking again", "err", err)
	}
	resp, _, err := s.e.Client.Get(t.ctx, t.target.Location, t.span.Header())
	if err != nil {
		return nil, attemptError(t.ctx, err)
	}
	if err := upstream.CheckPartial(resp, t.target.URL, t.span, t.target.Version); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

// startAttempt sets f up for a new attempt on the rest of p; false when p needs no more bytes.
func (s *stream) startAttempt(p *piece, f *fetch) (try, bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if p.done() || p.c.released {
		return try{}, false
	}
	f.pos = max(f.pos, p.filled)
	t := try{span: httprange.Span{Start: f.pos, End: p.end - 1}}
	if s.head != nil && f.pos == s.span.Start {
		t.head, s.head = s.head, nil
		f.mirror = 0
	} else {
		f.mirror = s._pickTarget()
	}
	t.target = s._targetOf(f)
	ctx, cancel := context.WithCancelCause(s.ctx)
	t.ctx = ctx
	f.cancel, f.gen, f.sent, f.answered = cancel, s.targetGen, time.Now(), time.Time{}
	f.got, f.sampled, f.samples, f.rate, f.quiet, f.slowCount = 0, 0, 0, 0, 0, 0
	f.lastByte, f.silence, f.trail, f.routeRate, f.measured, f.recentRate, f.routeSlow = time.Time{}, 0, routeTrail{}, 0, false, 0, 0
	return t, true
}

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
	defer s.f.mu.Unlock()
	f.cancel(nil)
	f.cancel = nil
	done := RequestDone{Bytes: f.got, Took: time.Since(f.sent), Outcome: outcomeOf(err)}
	attrs := []any{"range", span.Header(), "bytes", f.got}
	if !f.answered.IsZero() {
		done.Status = http.StatusPartialContent // an answer used is a checked 206
		done.FirstByte = f.answered.Sub(f.sent)
		attrs = append(attrs, "first_byte", done.FirstByte.Round(time.Millisecond))
		if d := time.Since(f.answered); d > 0 {
			speed := float64(f.got) / d.Seconds()
			attrs = append(attrs, "speed", fmt.Sprintf("%.0fKiB/s", speed/1024))
			// A request too short for a route check still tells what a good route gives.
			if f.got >= 4*readSize && speed > s.routeBest {
				s.routeBest, s.routeBestBy = speed, f
			}
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
	s.log.Debug("request", attrs...)
	return done
}

// routeTrail is what a request had read at its last route checks, enough to cover routeWindow.
type routeTrail struct {
	at   [routeTrailLen]time.Time
	got  [routeTrailLen]int64
	next int // where the next sample goes
}

const routeTrailLen = int(routeWindow/routeEvery) + 2

func (t *routeTrail) add(at time.Time, got int64) {
	t.at[t.next], t.got[t.next] = at, got
	t.next = (t.next + 1) % routeTrailLen
}

// rate is the bytes per second read over the window before now: from the newest sample at least window
// old and not before since.
func (t *routeTrail) rate(now time.Time, window time.Duration, since time.Time) float64 {
	fromAt, fromGot := time.Time{}, int64(0)
	newest := t.got[(t.next+routeTrailLen-1)%routeTrailLen]
	for i := range routeTrailLen {
		if at := t.at[i]; !at.Before(since) && now.Sub(at) >= window && at.After(fromAt) {
			fromAt, fromGot = at, t.got[i]
		}
	}
	if fromAt.IsZero() { // no sample that old since: the oldest one since
		for i := range routeTrailLen {
			if at := t.at[i]; !at.Before(since) && (fromAt.IsZero() || at.Before(fromAt)) {
				fromAt, fromGot = at, t.got[i]
			}
		}
	}
	d := now.Sub(fromAt)
	if d <= 0 {
		return 0
	}
	return float64(newest-fromGot) / d.Seconds()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// RequestDone describes one upstream request of a stream, as it ended.
type RequestDone struct {
	Outcome   Outcome
	Status    int           // the answer's HTTP status; 0 when none came
	FirstByte time.Duration // from sending to the answer's headers; 0 when none came
	Took      time.Duration // from sending to the end
	Bytes     int64         // body bytes used
}

// Outcome is how an upstream request ended.
type Outcome int

const (
	OutcomeOK        Outcome = iota // its bytes are in, or another request finished its piece first
	OutcomeFailed                   // an error: its piece is tried again, or the stream fails
	OutcomeReplaced                 // cancelled as far slower than the stream's best, below --min-speed, or stalled
	OutcomeCancelled                // the stream ended first: the player has its bytes, left, or the stream failed
)

// outcomeOf says how a request that ended with err ended.
func outcomeOf(err error) Outcome {
	switch {
	case err == nil, errors.Is(err, errRaceLost):
		return OutcomeOK
	case errors.Is(err, errSlowRoute), errors.Is(err, errSlow), errors.Is(err, upstream.ErrStalled):
		return OutcomeReplaced
	case errors.Is(err, errStreamDone), errors.Is(err, context.Canceled):
		return OutcomeCancelled
	}
	return OutcomeFailed
}

// answered records that f's answer arrived, and learns the stream's usual wait for one (the probe's answer,
// already there, says nothing about it).
func (s *stream) answered(f *fetch, fromProbe bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.answered = time.Now()
	if fromProbe {
		return
	}
	wait := f.answered.Sub(f.sent)
	if s.firstByte == 0 {
		s.firstByte = wait
	} else {
		s.firstByte = (3*s.firstByte + wait) / 4
	}
}

func (s *stream) position(f *fetch) int64 {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return f.pos
}

// _targetOf is the target f's attempt asks: the link's, or its mirror's.
func (s *stream) _targetOf(f *fetch) source.Target {
	if f.mirror > 0 {
		return s.mirrors[f.mirror-1]
	}
	return s.target
}

// _pickTarget takes turns between the target and the mirrors not set aside: 0 is the target, n the nth
// mirror.
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
// whether the connection should go on reading. A request near its end gives its lane up here.
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
	f.lastByte = time.Now()
	if to := min(f.pos, p.end); to > p.filled {
		copy(p.c.bytes(p.filled, to), data[p.filled-from:to-from])
		s.received += to - p.filled
		p.filled = to
		s.f._progress()
	}
	if !p.done() {
		s._handOverNearEnd(p, f)
		return true
	}
	for _, g := range p.fetches {
		if g != f && g.cancel != nil {
			g.cancel(errRaceLost)
		}
	}
	return false
}

// _handOverNearEnd gives f's lane up once what is left of p will take less than the stream's usual wait
// for an answer: the next request then arrives as this one ends.
func (s *stream) _handOverNearEnd(p *piece, f *fetch) {
	if !f.lane || s.firstByte <= 0 || f.got < 2*readSize {
		return
	}
	elapsed := time.Since(f.answered)
	if elapsed <= 0 {
		return
	}
	rate := float64(f.got) / elapsed.Seconds()
	if left := float64(p.end-max(p.filled, f.pos)) / rate; left <= s.firstByte.Seconds() {
		s._giveLane(f)
	}
}

// retryPlan decides what follows a failed attempt: how long to wait before the next, or why the stream
// must fail.
func (s *stream) retryPlan(p *piece, f *fetch, err error) (time.Duration, error) {
	if errors.Is(err, errSlowRoute) {
		s.countReplaced(p)
		return 0, nil
	}
	retries := s.countRetry(f)
	where := fmt.Sprintf("bytes %d-%d", s.position(f), p.end-1)
	policy := upstream.Retry{Max: s.e.Retries, Base: s.e.RetryBase}
	if retries > policy.Max {
		return 0, fmt.Errorf("%s: gave up after %d retries in a row brought no byte: %w", where, policy.Max, err)
	}
	s.log.Debug("retrying", "range", where, "retry", retries, "err", err)
	if f.mirror > 0 && !errors.Is(err, errSlow) && !errors.Is(err, upstream.ErrStalled) {
		// A mirror that fails is dropped at once: the target and the other mirrors carry on.
		s.setMirrorAside(f.mirror)
		s.log.Info("mirror set aside", "mirror", upstream.Redact(s.mirrors[f.mirror-1].URL), "err", err)
		return 0, nil
	}
	var status *upstream.StatusError
	switch {
	case errors.As(err, &status) && status.Expired():
		if err := s.refreshTarget(f.gen, err); err != nil {
			return 0, fmt.Errorf("%s: %w", where, err)
		}
		return 0, nil
	case errors.Is(err, errSlow), errors.Is(err, upstream.ErrStalled):
		return 0, nil
	case !upstream.Retryable(err):
		return 0, fmt.Errorf("%s: %w", where, err)
	}
	return policy.Wait(max(retries, 1), err), nil
}

// countRetry counts a failed attempt of f, and returns how many of its attempts failed in a row with no
// new byte reaching the stream in between: bytes that arrived, to its piece or to another, show the
// upstream serving, so a try that moved the stream forward is progress, not a spent retry (-r).
func (s *stream) countRetry(f *fetch) int {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.received != f.failedAt {
		f.retries = 0
	}
	f.retries++
	f.failedAt = s.received
	s.retries++
	s.e.Counters.Retries.Add(1)
	return f.retries
}

// racedBy reports whether another connection works on p besides f.
func (s *stream) racedBy(p *piece, f *fetch) bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for _, g := range p.fetches {
		if g != f {
			return true
		}
	}
	return false
}

func (s *stream) countReplaced(p *piece) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	p.replaced++
	s.replaced++
}

func (s *stream) setMirrorAside(mirror int) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.mirrorAside[mirror-1] = true
}

// refreshTarget resolves an expired link again, once for all the connections that found it expired with
// target generation gen, and checks that it still leads to the same version.
func (s *stream) refreshTarget(gen int, cause error) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	old, current := s.currentTarget()
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
	s.setTarget(t)
	return nil
}

func (s *stream) currentTarget() (source.Target, int) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return s.target, s.targetGen
}

func (s *stream) setTarget(t source.Target) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.target = t
	s.targetGen++
}

// watch samples the connections until the stream ends: each second for --min-speed and the stall rule,
// and each routeEvery against the stream's best.
func (s *stream) watch() {
	second := time.NewTicker(sampleEvery)
	defer second.Stop()
	route := time.NewTicker(routeEvery)
	defer route.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-second.C:
			s.sample()
		case <-route.C:
			s.checkRoutes()
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
			f.cancel(upstream.ErrStalled)
		case s.minSpeed > 0 && f.rate < float64(s.minSpeed):
			if f.slowCount++; f.slowCount >= slowSamples {
				s.log.Debug("connection below --min-speed; replacing it", "at", f.pos, "speed", int64(f.rate))
				f.cancel(errSlow)
			}
		default:
			f.slowCount = 0
		}
	}
	s.f._broadcast()
}

// checkRoutes compares each answered request's speed with the best speed this stream's requests reached
// lately (a maximum that fades by routeFade each check, so a drive that slows down as a whole is soon the
// new normal). A request is judged on its speed over the last check's interval, once it has run for its
// grace time, four first-byte times (TCP's slow start on a distant drive is over by then) and at least
// routeEvery. One lagFactor times slower, with more
// than a moment of work left, gives its lane up at once, so a fresh request races it on the same piece
// (first bytes win); still that slow at the next check, it is cancelled, and the fresh request goes on
// alone. Drives route each request on its own, so a fresh one usually lands on a good route; a request
// misjudged costs some bytes fetched twice, not time. The best is kept across requests because a slow
// request often runs alone: the others finished the window and wait for it.
func (s *stream) checkRoutes() {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	now := time.Now()
	grace := max(routeEvery, 4*s.firstByte)
	s.routeBest *= routeFade
	for f := range s.fetches {
		if f.cancel == nil || f.answered.IsZero() {
			continue
		}
		f.trail.add(now, f.got)
		start := f.answered.Add(grace) // never judged over its first round trips: slower on any route
		if now.Before(start) {
			continue
		}
		// Two speeds. Over the last check's interval, which shows a slow route at once; and over twice the
		// longest silence the request had (routeEvery to routeWindow), once it ran that long: a server
		// that paces in bursts, as nginx's limit_rate sends a second's worth at once, leaves silences no
		// slow route explains, and such a window holds a burst. The stream's best is taken over the long
		// window only, so a burst does not set it; a request is judged on its recent speed while bytes
		// come, and on the long window while they do not, never on a silence alone.
		f.silence = max(f.silence, now.Sub(later(f.lastByte, start)))
		recent := f.trail.rate(now, routeEvery, start)
		window := min(max(routeEvery, 2*f.silence), routeWindow)
		long, whole := 0.0, now.Sub(start) >= window
		if whole {
			long = f.trail.rate(now, window, start)
			if long > s.routeBest {
				s.routeBest, s.routeBestBy = long, f
			}
		}
		f.recentRate = 0
		if now.Sub(start) >= routeEvery {
			f.recentRate = recent
		}
		if whole {
			f.routeRate, f.measured = long, true
		}
	}
	for f, p := range s.fetches {
		if f.cancel == nil || f.answered.IsZero() || now.Sub(f.answered) < grace+routeEvery || s.routeBestBy == f { // never judged by its own past
			continue
		}
		// Judged on its recent speed while bytes come; in a silence, on its steady speed, or, before it ran a
		// whole window, on its speed since its answer: a burst before the silence counts, a slow route's
		// trickle does not hide.
		rate := f.recentRate
		switch {
		case rate > 0:
		case f.measured:
			rate = f.routeRate
		default:
			rate = float64(f.got) / now.Sub(f.answered).Seconds()
		}
		left := float64(p.end - max(p.filled, f.pos))
		worth := rate == 0 || left/rate > (2*routeEvery).Seconds()
		if rate*lagFactor >= s.routeBest || !worth || p.done() {
			f.routeSlow = 0
			continue
		}
		switch f.routeSlow++; {
		case f.routeSlow == 1 && f.lane && p.replaced < maxReplaced:
			s.log.Debug("request far slower than the stream's best; racing a fresh one", "at", f.pos, "speed", int64(rate), "best", int64(s.routeBest))
			s.e.Counters.Raced.Add(1)
			s._giveLane(f)
			p.replaced++
			s.replaced++
		case f.routeSlow >= routeSamples && (len(p.fetches) > 1 || p.replaced < maxReplaced):
			s.log.Debug("request still far slower than the stream's best; replacing it", "at", f.pos, "speed", int64(rate), "best", int64(s.routeBest))
			f.cancel(errSlowRoute)
		}
	}
}
