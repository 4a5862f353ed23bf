package engine

import (
	"iter"
	"slices"
	"time"

	"mflow/internal/engine/pace"
	"mflow/internal/upstream"
)

// The stream's lanes: each piece of work runs in a lane of its own, and the stream never has more requests
// open than it has lanes (the probe's answer, races and hedges included), nor its file more than the
// drive allows: claimJob is the one place that holds both bounds. What a free lane does, best first:
//
//  1. a fresh request racing one the policy found far slower than the stream's best, or the one the player
//     waits on when it lags, on the same bytes;
//  2. a hedge: the bytes the player waits on, while the request on them waits to try again;
//  3. the first bytes of the read-ahead no request claims, for as long a request as the policy says; the
//     film's index, when it is elsewhere, right after the head's first chunk;
//  4. half of the request that needs longest, as aria2 does, when the policy hands it over;
//  5. the bytes of a chunk only the cache wants.

// dispatch starts each piece of work claimJob gives a free lane, until the stream is over.
func (s *stream) dispatch() {
	for {
		f, wait, hold := s.claimJob()
		switch {
		case hold:
			s.plan() // the head told where the film's index is: hold its chunks, or the read-ahead's
		case f != nil:
			s.wg.Go(func() {
				defer s.recoverWorker()
				s.run(f)
			})
		case wait == nil:
			return
		default:
			select {
			case <-wait:
			case <-s.ctx.Done():
			}
		}
	}
}

// claimJob takes work for a free lane, or returns what to wait on for some; both nil once the stream is
// over. hold says the head, from the cache, told where the film's index is: chunks are to be held
// first.
func (s *stream) claimJob() (f *fetch, wait <-chan struct{}, hold bool) {
	s.f.mu.Lock()
	defer s.unlock()
	if s.ctx.Err() != nil {
		return nil, nil, false
	}
	if !s._laneFree() {
		return nil, s.f.changed, false
	}
	if s._seekIndex() {
		return nil, nil, true
	}
	if f = s._pickJob(); f == nil {
		return nil, s.f.changed, false
	}
	f.began = time.Now()
	s.fetches = append(s.fetches, f)
	s.f.fetches[f] = s
	return f, nil, false
}

// _laneFree reports whether the stream may open one more request: a lane of its own is free, and the
// drive's limit for the file, by all its streams together, is not reached (a seek's new stream waits until
// the old one's requests are gone).
func (s *stream) _laneFree() bool {
	return len(s.fetches) < s.lanes && (s.f.limit == 0 || len(s.f.fetches) < s.f.limit)
}

// _pickJob chooses the work of a free lane; nil when there is none now.
func (s *stream) _pickJob() *fetch {
	if f := s._race(); f != nil {
		return f
	}
	if f := s._hedge(); f != nil {
		return f
	}
	if s.lingering {
		return s._claimNext(s._kept(), false)
	}
	if f := s._claimNext(s.window[:min(len(s.window), 1)], true); f != nil { // the head first
		return f
	}
	if !s.indexSought || s.nextIndex*s.e.ChunkSize < s.indexAt.End {
		// Until the head tells whether the film's index is elsewhere, and plan holds its chunks: the
		// player reads it next.
		return nil
	}
	if f := s._claimNext(s.index, false); f != nil {
		return f
	}
	if f := s._claimNext(s.window, true); f != nil {
		return f
	}
	if f := s._split(); f != nil {
		return f
	}
	return s._claimNext(slices.Concat(s.window, s.finishing), false)
}

// _race is a fresh request on the bytes of one the policy wants raced, or of the one the player waits on
// when it brings nothing or far less than the stream's usual.
func (s *stream) _race() *fetch {
	for _, slow := range s.fetches {
		lagsHead := s.writerWaiting && slow.pos <= s.written && s.written < slow.claim && slow.meter != nil && s.pace.Lagging(slow.meter)
		if slow.meter != nil && (slow.wantsRace || lagsHead) && slow.racer == nil && slow.raced == nil && slow.pos < slow.claim {
			slow.wantsRace = false
			fresh := &fetch{from: slow.pos, pos: slow.pos, claim: slow.claim, raced: slow, raceGap: -1}
			slow.racer = fresh
			s.e.Remedies.Raced.Add(1)
			s._debug("request far slower than the stream's best; racing a fresh one", "at", slow.pos, "best", int64(s.pace.Best()))
			return fresh
		}
	}
	return nil
}

// _hedge is a request on the bytes the player waits on while the request that claims them waits to try
// again after a failure (one the upstream did not ask to be waited out).
func (s *stream) _hedge() *fetch {
	if !s.writerWaiting {
		return nil
	}
	for _, f := range s.fetches {
		if f.recovering && f.racer == nil && f.raced == nil && f.pos <= s.written && s.written < f.claim {
			hedge := &fetch{from: f.pos, pos: f.pos, claim: f.claim, raced: f, raceGap: -1}
			f.racer = hedge
			s._debug("the request the player waits on failed: trying its bytes on an idle connection meanwhile", "from", f.pos, "to", f.claim-1)
			return hedge
		}
	}
	return nil
}

// _claimNext claims the first bytes of chunks that no piece holds yet and no request claims (needed: only
// the player's; else the cache's too), as far as one request should ask: the policy's extent, in whole
// pieces, which end on the chunk grid.
func (s *stream) _claimNext(chunks []*chunk, needed bool) *fetch {
	for ci, c := range chunks {
		for pi, p := range c.pieces {
			if p.done() || (needed && !s._needs(p)) || s._claimedAt(p.filled) {
				continue
			}
			from, claim := p.filled, p.end
			extent := s.pace.ExtentAt(from-s.written, s._left(from))
			for q := range piecesAfter(chunks, ci, pi) { // on through empty, unclaimed pieces that follow
				if claim-from >= extent || q.start != claim || q.filled != q.start || s._claimedAt(q.start) || (needed && !s._needs(q)) {
					break
				}
				claim = q.end
			}
			return &fetch{from: from, pos: from, claim: claim}
		}
	}
	return nil
}

// piecesAfter yields the pieces that follow piece pi of chunk ci, in order.
func piecesAfter(chunks []*chunk, ci, pi int) iter.Seq[*piece] {
	return func(yield func(*piece) bool) {
		for j := ci; j < len(chunks); j++ {
			first := 0
			if j == ci {
				first = pi + 1
			}
			for _, q := range chunks[j].pieces[first:] {
				if !yield(q) {
					return
				}
			}
		}
	}
}

// _left is what the player's range still needs from byte from on, whoever brings it: the bytes from there
// to its end, and what this stream's requests still have to bring before it.
func (s *stream) _left(from int64) int64 {
	left := s.span.End + 1 - from
	for _, f := range s.fetches {
		if f.pos < from {
			left += min(f.claim, from) - f.pos
		}
	}
	return max(left, 0)
}

// _needs reports whether the stream still has to write some of p's bytes.
func (s *stream) _needs(p *piece) bool {
	return p.end > s.written && p.start <= s.span.End
}

// _claimedAt reports whether a request of the file claims byte x.
func (s *stream) _claimedAt(x int64) bool {
	for f := range s.f.fetches {
		if f.pos <= x && x < f.claim {
			return true
		}
	}
	return false
}

// _split takes half of the request of this stream the policy hands over, as aria2 does: the request
// keeps the first half and stops there, the new one asks for the second.
func (s *stream) _split() *fetch {
	open := s._open()
	judged := make([]pace.Judged, len(open))
	for i, f := range open {
		judged[i] = s._judged(f)
	}
	i := s.pace.HandOver(time.Now(), judged)
	if i < 0 {
		return nil
	}
	longest := open[i]
	mid := longest.pos + (longest.claim-longest.pos)/2
	if c := s.f.chunks[mid/s.e.ChunkSize]; c != nil {
		if p := c._pieceAt(mid); p != nil && p.start < mid {
			c._split(p, mid)
		}
	}
	tail := &fetch{from: mid, pos: mid, claim: longest.claim}
	longest.claim = mid
	s.e.Remedies.Splits.Add(1)
	s._debug("idle connection takes half a request", "from", mid, "to", tail.claim-1)
	return tail
}

// _judged is f as the policy judges it.
func (s *stream) _judged(f *fetch) pace.Judged {
	return pace.Judged{Req: f.meter, Left: f.claim - f.pos, Replaced: f.replaced, Raced: f.racer != nil || f.raced != nil,
		Waited: s.writerWaiting && f.pos <= s.written && s.written < f.claim}
}

// watch samples the requests until the stream ends: each second for --min-speed and the stall rule, and
// each RouteEvery against the stream's best.
func (s *stream) watch() {
	second := time.NewTicker(pace.SampleEvery)
	defer second.Stop()
	route := time.NewTicker(pace.RouteEvery)
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

// _open is the requests of the stream with an attempt open now.
func (s *stream) _open() []*fetch {
	var open []*fetch
	for _, f := range s.fetches {
		if f.meter != nil {
			open = append(open, f)
		}
	}
	return open
}

// sample applies the policy's one-second verdicts: a request below --min-speed for SlowSamples seconds,
// or silent for the stall timeout, is replaced by a fresh one.
func (s *stream) sample() {
	s.f.mu.Lock()
	defer s.unlock()
	open := s._open()
	meters := make([]*pace.Meter, len(open))
	for i, f := range open {
		meters[i] = f.meter
	}
	for i, v := range s.pace.Sample(time.Now(), meters) {
		switch v {
		case pace.Stalled:
			s._debug("connection stalled; replacing it", "at", open[i].pos)
			open[i].cancel(upstream.ErrStalled)
		case pace.TooSlow:
			s._debug("connection below --min-speed; replacing it", "at", open[i].pos, "speed", int64(open[i].meter.Speed(time.Now())))
			open[i].cancel(errSlow)
		}
	}
	s.f._broadcast()
}

// checkRoutes applies the policy's route verdicts: a request far slower than the stream's best is raced by
// a fresh one when a lane is free, and replaced when it stays that slow or no lane is free.
func (s *stream) checkRoutes() {
	s.f.mu.Lock()
	defer s.unlock()
	open := s._open()
	judged := make([]pace.Judged, len(open))
	for i, f := range open {
		judged[i] = s._judged(f)
	}
	laneFree := s._laneFree()
	if laneFree {
		s.f._broadcast() // an idle lane looks again: a request past its grace time may be handed over now
	}
	for i, v := range s.pace.Routes(time.Now(), judged, laneFree) {
		f := open[i]
		switch {
		case v == pace.Race:
			f.wantsRace = true // a free lane takes it up
			s.f._broadcast()
		case v != pace.Replace:
		case f.racer != nil: // still slow while raced: the fresh request carries on alone
			f.racer.claim, f.claim = max(f.racer.claim, f.claim), f.pos
			f.cancel(errRaceLost)
			s.replaced++
		case f.raced != nil: // the fresh request is no better: the one it raced carries on
			f.cancel(errRaceLost)
		default:
			s._debug("request still far slower than the stream's best; replacing it", "at", f.pos, "best", int64(s.pace.Best()))
			f.cancel(errSlowRoute)
		}
	}
}
