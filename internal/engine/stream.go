package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/source"
)

// stream is the state of one Stream call.
type stream struct {
	e         *Engine
	f         *file                   // the shared state of the file
	ctx       context.Context         // ends when the stream does
	cancel    context.CancelCauseFunc // ends ctx
	log       *slog.Logger            // this stream's logger
	span      httprange.Span          // the bytes asked for
	refresh   func(context.Context) (source.Target, error)
	lanes     int            // requests kept going at once
	minSpeed  int64          // bytes per second, 0 = off
	lastChunk int64          // index of the chunk holding span.End
	wg        sync.WaitGroup // the workers and the watcher

	// refreshMu lets one worker at a time resolve an expired link; the others find the new target.
	refreshMu sync.Mutex

	// The file's lock (f.mu) protects the following fields.
	target        source.Target     // current target; Refresh replaces it
	targetGen     int               // counts target replacements
	mirrors       []source.Target   // other copies of the file
	mirrorAside   []bool            // mirrors set aside after a failure
	nextTarget    int               // round-robin position over target and the usable mirrors
	head          *http.Response    // the probe's answer for span.Start, until the first request takes it
	window        []*chunk          // chunks held, in order; window[0] holds the next byte to write
	finishing     []*chunk          // chunks written but not yet whole, held so the cache can keep them
	nextChunk     int64             // index of the next chunk to hold
	written       int64             // offset of the next byte for the player; only the writer changes it
	writerWaiting bool              // the writer is waiting on the head
	fetches       map[*fetch]*piece // this stream's connections and the pieces they work on
	busy          int               // fetches holding a lane
	connRate      float64           // the stream's usual speed of one connection, bytes/s (moving average)
	routeBest     float64           // the best speed of one request lately, bytes/s (a fading maximum)
	routeBestBy   *fetch            // the request that reached routeBest
	firstByte     time.Duration     // the stream's usual wait for an answer (moving average); 0 until seen
	retries       int               // retries of all pieces
	received      int64             // bytes new to the file's pieces that this stream's connections brought
	replaced      int               // requests asked again for being slow
	err           error             // why the stream failed; the first error wins
}

func (e *Engine) newStream(ctx context.Context, f *file, req Request) *stream {
	s := &stream{
		e:           e,
		f:           f,
		log:         req.Logger,
		span:        req.Span,
		refresh:     req.Refresh,
		lanes:       max(req.Connections, 0),
		minSpeed:    req.MinSpeed,
		lastChunk:   req.Span.End / e.ChunkSize,
		target:      req.Target,
		mirrors:     req.Mirrors,
		mirrorAside: make([]bool, len(req.Mirrors)),
		head:        req.Head,
		nextChunk:   req.Span.Start / e.ChunkSize,
		written:     req.Span.Start,
		fetches:     map[*fetch]*piece{},
	}
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	if s.lanes == 0 {
		s.lanes = max(e.Connections, 1)
	}
	switch {
	case s.minSpeed == 0:
		s.minSpeed = e.MinSpeed
	case s.minSpeed < 0:
		s.minSpeed = 0
	}
	if s.log == nil {
		s.log = e.logger()
	}
	return s
}

// plan holds more chunks while the read-ahead (2 × lanes chunks) allows. A chunk no stream holds is
// looked up in the cache first, without the lock.
func (s *stream) plan() {
	lookedUp, data := int64(-1), []byte(nil)
	for {
		next, lookup := s.holdChunks(lookedUp, data)
		if !lookup {
			return
		}
		lookedUp, data = next, s.f.lookup(next)
	}
}

// holdChunks holds the next chunks until the window is full, and returns early with the index of one the
// cache must be asked for first (lookedUp, data: the answer for the one asked last).
func (s *stream) holdChunks(lookedUp int64, data []byte) (next int64, lookup bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	size := s.e.ChunkSize
	for len(s.window) < 2*s.lanes && s.nextChunk <= s.lastChunk {
		k := s.nextChunk
		if s.f.chunks[k] == nil && s.f.caching() && k != lookedUp {
			return k, true
		}
		var cached []byte
		if k == lookedUp {
			cached = data
		}
		s.window = append(s.window, s.f._acquire(k, max(s.span.Start, k*size), min((k+1)*size, s.span.End+1), cached))
		s.nextChunk++
	}
	s.f._broadcast()
	return 0, false
}

// releaseAll lets go of the chunks still held, once no worker of the stream is left.
func (s *stream) releaseAll() {
	s.f.retire(s.dropWindow())
}

func (s *stream) dropWindow() []*chunk {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	var released []*chunk
	for _, c := range append(s.window, s.finishing...) {
		released = append(released, s.f._release(c))
	}
	s.window, s.finishing = nil, nil
	s.f._broadcast()
	return released
}

// fail ends the stream with err, unless it already failed.
func (s *stream) fail(err error) {
	s.setErr(err)
	s.cancel(err)
}

func (s *stream) setErr(err error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	s.f._progress()
}

// stats are the stream's figures so far.
func (s *stream) stats() Stats {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return Stats{Bytes: s.written - s.span.Start, Retries: s.retries, Replaced: s.replaced}
}

// takeHead takes the probe's answer, if no request took it yet.
func (s *stream) takeHead() *http.Response {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	h := s.head
	s.head = nil
	return h
}

// _needs reports whether the stream still has to write some of p's bytes.
func (s *stream) _needs(p *piece) bool {
	return p.end > s.written && p.start <= s.span.End
}

// writeDeadliner is a player's connection whose blocked write can be cut.
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// write sends the range to w in order, each piece's bytes as soon as they are in.
func (s *stream) write(w io.Writer) error {
	if d, ok := w.(writeDeadliner); ok {
		// A player slow to take a write must not keep a paused, removed or failed stream going.
		stop := context.AfterFunc(s.ctx, func() { _ = d.SetWriteDeadline(time.Now()) })
		defer stop()
	}
	w = flushWriter{w}
	for s.written <= s.span.End {
		ready, c, wait, err := s.ready()
		if err != nil {
			return err
		}
		if wait != nil {
			select {
			case <-wait:
			case <-s.ctx.Done():
			}
			continue
		}
		// Bytes below a piece's fill mark never change again, and the chunk is held: write without the lock.
		n, werr := w.Write(ready)
		if released, passed := s.wrote(c, n); passed {
			s.f.retire([]*chunk{released})
			s.plan()
		}
		if werr != nil {
			return werr
		}
	}
	return nil
}

// ready returns the bytes the player can have next, or the channel to wait on for them, or why the stream
// is over.
func (s *stream) ready() (data []byte, c *chunk, wait <-chan struct{}, err error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.err == nil && s.ctx.Err() != nil {
		s.err = context.Cause(s.ctx)
	}
	if s.err != nil {
		return nil, nil, nil, s.err
	}
	c = s.window[0]
	p := c._pieceAt(s.written)
	if p == nil {
		return nil, nil, nil, fmt.Errorf("internal error: no piece holds byte %d", s.written)
	}
	if p.filled <= s.written {
		s.writerWaiting = true
		return nil, nil, s.f.progress, nil
	}
	s.writerWaiting = false
	return c.bytes(s.written, min(p.filled, s.span.End+1)), c, nil, nil
}

// wrote records n bytes written from c. When the player is past c, c leaves the window; the chunk it
// returns, if any, must be retired.
func (s *stream) wrote(c *chunk, n int) (released *chunk, passed bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.written += int64(n)
	if s.written != min(c.end, s.span.End+1) {
		return nil, false
	}
	if s.f.caching() && !c._complete() {
		s.finishing = append(s.finishing, c) // the rest of it is fetched for the cache
	} else {
		released = s.f._release(c)
	}
	s.window = s.window[1:]
	s.f._broadcast()
	return released, true
}

// work is one worker's loop: take a piece, fill it, repeat until the stream is over.
func (s *stream) work() {
	for {
		p, f := s.nextJob()
		if p == nil {
			return
		}
		s.fill(p, f)
	}
}

// nextJob waits for a free lane and something to do with it, and claims it; nil once the stream is over.
func (s *stream) nextJob() (*piece, *fetch) {
	for {
		p, f, wait := s.claim()
		if p != nil || wait == nil {
			return p, f
		}
		select {
		case <-wait:
		case <-s.ctx.Done():
		}
	}
}

// claim takes a lane and a piece, or returns what to wait on for one; all nil once the stream is over.
func (s *stream) claim() (*piece, *fetch, <-chan struct{}) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.ctx.Err() != nil {
		return nil, nil, nil
	}
	if s.busy < s.lanes {
		if p := s._pickPiece(); p != nil {
			f := &fetch{pos: p.filled, began: time.Now(), lane: true}
			s.busy++
			p.fetches = append(p.fetches, f)
			s.fetches[f] = p
			return p, f, nil
		}
	}
	return nil, nil, s.f.changed
}

// _head is the piece holding the next byte for the player.
func (s *stream) _head() *piece {
	if len(s.window) == 0 {
		return nil
	}
	return s.window[0]._pieceAt(s.written)
}

// _pickPiece chooses what an idle connection does, best first: a piece the player needs that nobody
// fetches, or that only a request on a slow route fetches (the earliest first); the rest of the head the
// player waits on, when its connection lags; half of the piece that needs longest; a piece only the cache
// wants.
func (s *stream) _pickPiece() *piece {
	for _, c := range s.window {
		for _, p := range c.pieces {
			if !p.done() && s._needs(p) && (len(p.fetches) == 0 || len(p.fetches) == 1 && p.fetches[0].routeSlow > 0) {
				return p
			}
		}
	}
	if head := s._head(); head != nil && s.writerWaiting && !head.done() && len(head.fetches) == 1 && s._lagging(head.fetches[0]) {
		s.log.Debug("head lags: racing a second connection", "from", head.filled, "to", head.end-1)
		s.e.Counters.Raced.Add(1)
		return head
	}
	if head := s._head(); head != nil && s.writerWaiting && !head.done() && len(head.fetches) > 0 && !slices.ContainsFunc(head.fetches, func(f *fetch) bool { return !f.recovering }) {
		s.log.Debug("the head's request failed: trying it on an idle connection meanwhile", "from", head.filled, "to", head.end-1)
		return head
	}
	var longest *piece
	var need time.Duration
	for _, c := range s.window {
		for _, p := range c.pieces {
			if d := s._timeLeft(p); !p.done() && d > need {
				longest, need = p, d
			}
		}
	}
	if longest != nil && need >= splitAfter && longest.end-longest.filled >= 2*minSplit {
		tail := longest.c._split(longest, longest.filled+(longest.end-longest.filled)/2)
		s.e.Counters.Splits.Add(1)
		s.log.Debug("idle connection takes half a piece", "from", tail.start, "to", tail.end-1)
		return tail
	}
	for _, c := range append(s.window, s.finishing...) {
		for _, p := range c.pieces {
			if !p.done() && len(p.fetches) == 0 {
				return p
			}
		}
	}
	return nil
}

// finish waits, once the player has all its bytes, for the chunks written but not yet whole, so the
// cache can keep them. A player that goes away, or a failure, ends the wait.
func (s *stream) finish() {
	for {
		wait := s.finishWait()
		if wait == nil {
			return
		}
		select {
		case <-wait:
		case <-s.ctx.Done():
			return
		}
	}
}

// finishWait is what to wait on while a finishing chunk is not whole; nil when all are, or the stream is over.
func (s *stream) finishWait() <-chan struct{} {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.err != nil || s.ctx.Err() != nil {
		return nil
	}
	for _, c := range s.finishing {
		if !c._complete() {
			return s.f.progress
		}
	}
	return nil
}

// _speed is f's latest speed and whether it has been measured: over the last route check when there was a
// whole one, else over the last one-second sample.
func (f *fetch) _speed() (float64, bool) {
	switch {
	case f.measured:
		return f.routeRate, true
	case f.samples > 0:
		return f.rate, true
	}
	return 0, false
}

// _lagging reports whether an attempt, measured at least once, delivers nothing or far less than the
// stream's usual speed.
func (s *stream) _lagging(f *fetch) bool {
	rate, ok := f._speed()
	return f.cancel != nil && ok && (rate == 0 || rate*lagFactor < max(s.connRate, s.routeBest))
}

// _timeLeft estimates how long the connections on p need to finish it; 0 until each has been measured.
func (s *stream) _timeLeft(p *piece) time.Duration {
	var rate float64
	for _, f := range p.fetches {
		r, ok := f._speed()
		if !ok {
			return 0
		}
		rate += r
	}
	if len(p.fetches) == 0 {
		return 0
	}
	if rate == 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(float64(p.end-p.filled) / rate * float64(time.Second))
}
