package engine

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	"mflow/internal/httprange"
)

// stream is the state of one Stream call. Fields below f's lock are guarded by f.mu.
type stream struct {
	e           *Engine
	f           *file                   // the shared state of the file
	ctx         context.Context         // ends when the stream does
	cancel      context.CancelCauseFunc // ends ctx
	log         *slog.Logger            // this stream's logger
	span        httprange.Span          // the bytes asked for
	refresh     func(context.Context) (Target, error)
	connections int   // workers, and chunks read ahead
	minSpeed    int64 // bytes per second, 0 = off
	lastChunk   int64 // index of the chunk holding span.End

	// refreshMu lets one worker at a time resolve an expired link; the others find the new target.
	refreshMu sync.Mutex

	// Guarded by f.mu:
	target        Target            // current target; Refresh replaces it
	targetGen     int               // counts target replacements
	mirrors       []Target          // other copies of the file
	mirrorAside   []bool            // mirrors set aside after a failure
	nextTarget    int               // round-robin position over target and the usable mirrors
	window        []*chunk          // chunks held, in order; window[0] holds the next byte to write
	finishing     []*chunk          // chunks written but not yet whole, held so the cache can keep them
	nextChunk     int64             // index of the next chunk to hold
	written       int64             // offset of the next byte for the player
	writerWaiting bool              // the writer is waiting on the head
	fetches       map[*fetch]*piece // this stream's connections and the pieces they work on
	connRate      float64           // the stream's usual speed of one connection, bytes/s (moving average)
	retries       int               // retries of all pieces
	err           error             // why the stream failed; the first error wins
}

func (e *Engine) newStream(ctx context.Context, f *file, req Request) *stream {
	s := &stream{
		e:           e,
		f:           f,
		log:         req.Logger,
		span:        req.Span,
		refresh:     req.Refresh,
		connections: max(req.Connections, 0),
		minSpeed:    req.MinSpeed,
		lastChunk:   req.Span.End / e.ChunkSize,
		target:      req.Target,
		mirrors:     req.Mirrors,
		mirrorAside: make([]bool, len(req.Mirrors)),
		nextChunk:   req.Span.Start / e.ChunkSize,
		written:     req.Span.Start,
		fetches:     map[*fetch]*piece{},
	}
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	if s.connections == 0 {
		s.connections = max(e.Connections, 1)
	}
	if s.minSpeed <= 0 {
		s.minSpeed = e.MinSpeed
	}
	if s.log == nil {
		s.log = e.logger()
	}
	f.mu.Lock()
	s._plan()
	f.mu.Unlock()
	return s
}

// _plan holds more chunks while the read-ahead allows. Call with the lock held.
func (s *stream) _plan() {
	size := s.e.ChunkSize
	for len(s.window) < s.connections && s.nextChunk <= s.lastChunk {
		k := s.nextChunk
		s.window = append(s.window, s.f._acquire(k, max(s.span.Start, k*size), min((k+1)*size, s.span.End+1)))
		s.nextChunk++
	}
}

// releaseAll lets go of the chunks still held, once no worker of the stream is left.
func (s *stream) releaseAll() {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for _, c := range append(s.window, s.finishing...) {
		s.f._release(c)
	}
	s.window, s.finishing = nil, nil
	s.f._broadcast()
}

// fail ends the stream with err, unless it already failed.
func (s *stream) fail(err error) {
	s.f.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.f.mu.Unlock()
	s.cancel(err)
}

// needs reports whether the stream still has to write some of p's bytes. Call with the lock held.
func (s *stream) needs(p *piece) bool {
	return p.end > s.written && p.start <= s.span.End
}

// write sends the range to w in order, each piece's bytes as soon as they are in.
func (s *stream) write(w io.Writer) error {
	w = flushWriter{w}
	f := s.f
	for s.written <= s.span.End {
		f.mu.Lock()
		c := s.window[0]
		p := c.pieceAt(s.written)
		for s.err == nil && p.filled <= s.written {
			s.writerWaiting = true
			s._awaitProgress()
			if s.err == nil && s.ctx.Err() != nil {
				s.err = context.Cause(s.ctx)
			}
			p = c.pieceAt(s.written)
		}
		s.writerWaiting = false
		if s.err != nil {
			err := s.err
			f.mu.Unlock()
			return err
		}
		// Bytes below a piece's fill mark never change again, and the chunk is held: write without the lock.
		ready := c.bytes(s.written, min(p.filled, s.span.End+1))
		f.mu.Unlock()

		n, err := w.Write(ready)

		f.mu.Lock()
		s.written += int64(n)
		if s.written == min(c.end, s.span.End+1) {
			if s.e.Cache != nil && f.key != "" && !c.complete() {
				s.finishing = append(s.finishing, c) // the rest of it is fetched for the cache
			} else {
				f._release(c)
			}
			s.window = s.window[1:]
			s._plan()
			f._broadcast()
		}
		f.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// work is one connection's loop: take a piece, fill it, repeat until the stream is over.
func (s *stream) work() {
	for {
		p, f := s.nextJob()
		if p == nil {
			return
		}
		s.fill(p, f)
	}
}

// nextJob waits for something this connection can do and claims it; nil once the stream is over.
func (s *stream) nextJob() (*piece, *fetch) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for {
		if s.ctx.Err() != nil {
			return nil, nil
		}
		if p := s._pickPiece(); p != nil {
			f := &fetch{pos: p.filled, began: time.Now()}
			p.fetches = append(p.fetches, f)
			s.fetches[f] = p
			return p, f
		}
		changed := s.f.changed
		s.f.mu.Unlock()
		select {
		case <-changed:
		case <-s.ctx.Done():
		}
		s.f.mu.Lock()
	}
}

// _head is the piece holding the next byte for the player. Call with the lock held.
func (s *stream) _head() *piece {
	if len(s.window) == 0 {
		return nil
	}
	return s.window[0].pieceAt(s.written)
}

// _pickPiece chooses what an idle connection does, best first: a piece the player needs that nobody
// fetches; the rest of the head the player waits on, when its connection lags; half of the piece that
// needs longest; a piece only the cache wants. Call with the lock held.
func (s *stream) _pickPiece() *piece {
	for _, c := range s.window {
		for _, p := range c.pieces {
			if !p.done() && len(p.fetches) == 0 && s.needs(p) {
				return p
			}
		}
	}
	if head := s._head(); head != nil && s.writerWaiting && !head.done() && len(head.fetches) == 1 && s._lagging(head.fetches[0]) {
		s.log.Debug("head lags: racing a second connection", "from", head.filled, "to", head.end-1)
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
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for s.err == nil && s.ctx.Err() == nil {
		whole := true
		for _, c := range s.finishing {
			whole = whole && c.complete()
		}
		if whole {
			return
		}
		s._awaitProgress()
	}
}

// _awaitProgress waits, without the lock, until some piece of the file gets bytes or the stream ends.
// Call with the lock held; it is held again on return.
func (s *stream) _awaitProgress() {
	progress := s.f.progress
	s.f.mu.Unlock()
	select {
	case <-progress:
	case <-s.ctx.Done():
	}
	s.f.mu.Lock()
}

// _lagging reports whether an attempt, sampled at least once, delivers nothing or far less than the
// stream's usual speed. Call with the lock held.
func (s *stream) _lagging(f *fetch) bool {
	return f.cancel != nil && f.samples > 0 && (f.rate == 0 || f.rate*lagFactor < s.connRate)
}

// _timeLeft estimates how long the connections on p need to finish it; 0 until each has been sampled.
// Call with the lock held.
func (s *stream) _timeLeft(p *piece) time.Duration {
	var rate float64
	for _, f := range p.fetches {
		if f.samples == 0 {
			return 0
		}
		rate += f.rate
	}
	if len(p.fetches) == 0 {
		return 0
	}
	if rate == 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(float64(p.end-p.filled) / rate * float64(time.Second))
}
