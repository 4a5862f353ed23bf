package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"time"

	"mflow/internal/engine/limit"
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

// waitForDrive waits out the Retry-After the stream's drive last sent: nothing goes to it before. false
// when the stream ended meanwhile.
func (s *stream) waitForDrive() bool {
	target, _ := s.currentTarget()
	if wait := time.Until(s.e.Drives.quietUntil(source.HostOf(target.URL))); wait > 0 {
		return s.pause(wait)
	}
	return true
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

// slowDownAsked reports whether the upstream asked to be left alone for a while (429, 503): then no other
// connection hurries to the bytes while this one waits.
func slowDownAsked(err error) bool {
	var status *upstream.StatusError
	return errors.As(err, &status) && (status.Code == http.StatusTooManyRequests || status.Code == http.StatusServiceUnavailable)
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

const (
	EndedOK        RequestEnd = iota // its bytes are in, or another request brought them first
	EndedFailed                      // an error: its bytes are asked again, or the stream fails
	EndedReplaced                    // cancelled as far slower than the stream's best, below --min-speed, or stalled
	EndedCancelled                   // the stream ended first: the player has its bytes, left, or the stream failed
)

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

// answered records that f's answer arrived, and how.
func (s *stream) answered(f *fetch, via pace.Via) {
	s.f.mu.Lock()
	s.pace.Answered(f.meter, time.Now(), via)
	host := source.HostOf(s._targetOf(f).URL)
	served, _ := s._served(nil)
	s.mostServed = max(s.mostServed, served)
	raised := s.e.Drives.served(host, s.limitKey, served)
	s.f._broadcast() // a refusal waiting to know whether the drive serves its others reads on
	s.f.mu.Unlock()
	if raised {
		s.log.Info("the drive served one connection more than its limit: the limit is raised", "drive", limit.Drive(host))
		s.e.Drives.share(host)
	}
}

// _served is how many of the stream's requests, besides except, have their answer and are being served,
// and how many are still waiting for theirs.
func (s *stream) _served(except *fetch) (served, waiting int) {
	for _, g := range s.fetches {
		switch {
		case g == except || g.meter == nil:
		case g.meter.Answered():
			served++
		default:
			waiting++
		}
	}
	return served, waiting
}

// servedBesides is how many of the stream's requests besides f the drive serves, once that is known: one
// still waiting for its answer may be served, or refused as f was (a link that expired), so the count
// waits for their answers (a round trip at most).
func (s *stream) servedBesides(f *fetch) int {
	for {
		s.f.mu.Lock()
		served, waiting := s._served(f)
		changed := s.f.changed
		s.f.mu.Unlock()
		if waiting == 0 {
			return served
		}
		select {
		case <-changed:
		case <-s.ctx.Done():
			return 0
		}
	}
}

// limitedBy reads a refusal of f's request: when the drive serves the stream's other requests to the file,
// it told its limit, and the stream keeps that many lanes (its file too). It reports whether it did.
func (s *stream) limitedBy(f *fetch, r limit.Refusal) bool {
	r.Served = s.servedBesides(f)
	s.f.mu.Lock()
	r.MostServed = s.mostServed
	host := source.HostOf(s._targetOf(f).URL)
	verdict, n, learned := s.e.Drives.refused(host, s.limitKey, r)
	if verdict == limit.Limited {
		if s.limited == nil || s.limited.gen != s.targetGen {
			s.limited = &lowered{gen: s.targetGen, lanes: s.lanes, fileLimit: s.f.limit}
		}
		s.lanes = min(s.lanes, n)
		s.pace.SetLanes(s.lanes)
		if s.f.limit == 0 || n < s.f.limit {
			s.f.limit = n
		}
		s.f._broadcast()
	}
	s.f.mu.Unlock()
	if learned {
		s.log.Info("drive limit learned", "drive", limit.Drive(host), "connections", n, "why", fmt.Sprintf("a request was refused (%s) while %d were served", limit.StatusText(r.Status), r.Served))
		s.e.Drives.share(host)
	}
	return verdict == limit.Limited
}

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

// retryPlan decides what follows a failed attempt: how long to wait before the next, or why the stream
// must fail.
func (s *stream) retryPlan(f *fetch, err error) (time.Duration, error) {
	if errors.Is(err, errSlowRoute) {
		s.countReplaced(f)
		return 0, nil
	}
	if r, ok := refusalOf(err); ok && f.mirror == 0 && s.limitedBy(f, r) {
		return 0, errLimited
	}
	retries := s.countRetry(f)
	where := s.rest(f)
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
// new byte reaching the stream in between: bytes that arrived, to its claim or to another, show the
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
	s.e.Remedies.Retries.Add(1)
	return f.retries
}

func (s *stream) countReplaced(f *fetch) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.replaced++
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
	if s.setTarget(t, gen) {
		// The refusals before it were the link expiring, one request after another, not the drive's limit.
		s.e.Drives.withdraw(source.HostOf(old.URL), s.limitKey)
		s.log.Info("the refusals were the link expiring, not the drive's limit: the stream's connections are back", "drive", limit.Drive(source.HostOf(old.URL)))
	}
	return nil
}

// lowered is what a drive's refusals changed in a stream, to be undone if they were a link expiring.
type lowered struct {
	gen       int // the target generation they were refused on
	lanes     int // the stream's lanes before
	fileLimit int // its file's limit before
}

func (s *stream) currentTarget() (source.Target, int) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return s.target, s.targetGen
}

// setTarget makes t the stream's target, replacing generation gen, and reports whether that undid lanes
// that refusals of gen's requests had lowered.
func (s *stream) setTarget(t source.Target, gen int) (restored bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.target = t
	s.targetGen++
	s.mostServed = 0
	if l := s.limited; l != nil && l.gen == gen {
		s.lanes, s.f.limit, s.limited = l.lanes, l.fileLimit, nil
		s.pace.SetLanes(s.lanes)
		s.f._broadcast()
		return true
	}
	return false
}
