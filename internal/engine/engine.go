// Package engine fetches a byte range of one file version over several upstream connections at once and
// writes it to the player in order, the head streamed as it arrives.
//
// The range is cut into chunks whose boundaries are absolute multiples of the chunk size. Each chunk has a
// buffer; a piece is a part of a chunk that connections fill. Any number of connections may work on one
// piece: each copies in only the bytes past the piece's contiguous fill mark, so a second connection on a
// lagging piece races the first (first to arrive wins) and a split piece is a shorter end plus a new piece
// over the same buffer. At most Connections chunks are buffered or in flight ahead of the player.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/upstream"
)

// Engine streams ranges. Its fields are set before the first Stream and not changed after.
type Engine struct {
	// Client sends the chunk requests.
	Client *upstream.Client
	// ChunkSize is the size of a chunk and the grid chunks are aligned to.
	ChunkSize int64
	// Connections is the number of upstream connections a stream uses, and of chunks it reads ahead.
	Connections int
	// Retries is how often one piece may be tried again before the stream fails.
	Retries int
	// MinSpeed, in bytes per second, drops a connection slower than this for slowSamples seconds in a row;
	// 0 turns the check off.
	MinSpeed int64
	// StallTimeout replaces a connection that delivers nothing for this long. Default 10 s.
	StallTimeout time.Duration
	// MaxRedirects bounds the redirects a chunk request follows.
	MaxRedirects int
	// RetryBase is the first back-off after an error; it doubles each retry up to maxBackoff. Default 250 ms.
	RetryBase time.Duration
	// Logger receives a DEBUG line per chunk. Default slog.Default().
	Logger *slog.Logger

	buffers sync.Pool // *[]byte of ChunkSize capacity, reused across chunks and streams
}

const (
	// sampleEvery is how often each connection's speed is sampled.
	sampleEvery = time.Second
	// slowSamples is how many samples in a row below MinSpeed drop a connection.
	slowSamples = 3
	// minSplit is the smallest half an idle connection takes from a piece.
	minSplit = 128 << 10
	// splitAfter is how long a piece must still need before an idle connection takes half of it: below
	// that, a new request costs more than it saves.
	splitAfter = time.Second
	// lagFactor marks a connection as lagging when it is this many times slower than the stream's usual.
	lagFactor = 4
	// maxBackoff caps the wait between retries.
	maxBackoff = 5 * time.Second
	// readSize is how much one connection reads at a time.
	readSize = 32 << 10
)

// Target is what to fetch: one version of a file, at a URL, asked for with these headers.
type Target struct {
	URL     string           // where the bytes are; after redirects
	Header  http.Header      // sent with every request, redirects included
	Version upstream.Version // the version every answer must match
}

// Request is one range to stream.
type Request struct {
	Target Target         // what to fetch
	Span   httprange.Span // the bytes to write, within Target.Version.Size
	// Mirrors are other copies of the same file, each checked against its own version; chunk requests are
	// spread across Target and them, and a mirror that fails is set aside for the rest of the stream.
	Mirrors []Target
	// Refresh resolves the link again when its signed URL expires (403 or 410 mid-stream). Nil means an
	// expired link fails the stream.
	Refresh func(context.Context) (Target, error)
	// Connections, when positive, replaces Engine.Connections for this stream.
	Connections int
	// MinSpeed, when positive, replaces Engine.MinSpeed for this stream.
	MinSpeed int64
	// Logger, when set, replaces Engine.Logger for this stream (to carry the stream's id).
	Logger *slog.Logger
}

// Stats describes a finished stream.
type Stats struct {
	Bytes   int64 // bytes written to the player
	Retries int   // chunk requests tried again, for any reason
}

var (
	// ErrPlayerGone wraps the error of a write to a player that went away.
	ErrPlayerGone = errors.New("player went away")
	// errSlow and errStalled cancel a connection that is too slow or silent; a fresh one takes over.
	errSlow    = errors.New("connection below --min-speed")
	errStalled = errors.New("connection stalled")
	// errRaceLost cancels a connection whose piece another connection finished first.
	errRaceLost = errors.New("piece finished by another connection")
	// errShortBody is an answer that ended before the bytes it announced.
	errShortBody = errors.New("upstream answer ended early")
	// errStreamDone ends the workers once the player has its bytes or the stream failed.
	errStreamDone = errors.New("stream over")
)

// Stream writes req.Span of the target to w, in order, and returns once it is written or cannot be. When
// w is an http.Flusher it is flushed after each write so the player sees bytes as they arrive. Every
// goroutine the stream started has ended when Stream returns.
func (e *Engine) Stream(ctx context.Context, w io.Writer, req Request) (Stats, error) {
	if sp := req.Span; sp.Start < 0 || sp.Start > sp.End || sp.End >= req.Target.Version.Size {
		return Stats{}, fmt.Errorf("bytes %d-%d are not within the %d-byte file", sp.Start, sp.End, req.Target.Version.Size)
	}
	s := e.newStream(ctx, req)
	var wg sync.WaitGroup
	for range s.connections {
		wg.Go(s.work)
	}
	wg.Go(s.watch)
	err := s.write(w)
	s.cancel(errStreamDone)
	wg.Wait()
	s.releaseAll()
	return Stats{Bytes: s.written - req.Span.Start, Retries: s.retries}, err
}

// stream is the state of one Stream call.
type stream struct {
	e           *Engine
	ctx         context.Context         // ends when the stream does
	cancel      context.CancelCauseFunc // ends ctx
	log         *slog.Logger            // this stream's logger
	span        httprange.Span          // the bytes asked for
	refresh     func(context.Context) (Target, error)
	connections int   // workers, and chunks read ahead
	minSpeed    int64 // bytes per second, 0 = off

	// headMoved wakes the writer when the head piece has new bytes or the stream failed. One slot, so a
	// wake-up sent while the writer is busy is kept and none blocks.
	headMoved chan struct{}
	// refreshMu lets one worker at a time resolve an expired link; the others find the new target.
	refreshMu sync.Mutex

	mu            sync.Mutex    // guards everything below
	target        Target        // current target; Refresh replaces it
	targetGen     int           // counts target replacements
	mirrors       []Target      // other copies of the file
	mirrorAside   []bool        // mirrors set aside after a failure
	nextTarget    int           // round-robin position over target and the usable mirrors
	pieces        []*piece      // pieces not yet written, in order; pieces[0] is the head
	planned       int64         // offset after the last chunk planned
	openChunks    int           // chunks planned and not yet written
	written       int64         // offset of the next byte for the player
	writerWaiting bool          // the writer is waiting on the head
	changed       chan struct{} // closed (and replaced) when idle workers should look for work again
	connRate      float64       // the stream's usual speed of one connection, bytes/s (moving average)
	retries       int           // retries of all pieces
	err           error         // why the stream failed; the first error wins
}

// piece is a byte range [start, end) that connections fill in its chunk's buffer.
type piece struct {
	start, end int64    // absolute offsets; a split lowers end
	buf        []byte   // buf[0] holds byte start; covers the piece only
	filled     int64    // bytes [start, filled) are in buf
	chunk      *chunk   // the chunk the buffer belongs to
	fetches    []*fetch // connections working on it
	retries    int      // retries spent on it
	began      time.Time
}

// chunk is one aligned unit of the range and the buffer its pieces share.
type chunk struct {
	buf *[]byte // from Engine.buffers, given back once the chunk is written
	end int64   // absolute offset after the chunk
}

// fetch is a worker's claim on a piece, kept across its retries.
type fetch struct {
	pos       int64                   // next offset this connection will read
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

func (p *piece) done() bool { return p.filled >= p.end }

func (e *Engine) newStream(ctx context.Context, req Request) *stream {
	s := &stream{
		e:           e,
		log:         req.Logger,
		span:        req.Span,
		refresh:     req.Refresh,
		connections: max(req.Connections, 0),
		minSpeed:    req.MinSpeed,
		headMoved:   make(chan struct{}, 1),
		target:      req.Target,
		mirrors:     req.Mirrors,
		mirrorAside: make([]bool, len(req.Mirrors)),
		planned:     req.Span.Start,
		written:     req.Span.Start,
		changed:     make(chan struct{}),
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
	s._plan()
	return s
}

func (e *Engine) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

// _plan adds chunks while the read-ahead allows. Call with the lock held.
func (s *stream) _plan() {
	size := s.e.ChunkSize
	for s.openChunks < s.connections && s.planned <= s.span.End {
		start := s.planned
		end := min((start/size+1)*size, s.span.End+1)
		c := &chunk{buf: s.e.getBuffer(), end: end}
		s.pieces = append(s.pieces, &piece{start: start, end: end, filled: start, buf: (*c.buf)[:end-start], chunk: c})
		s.openChunks++
		s.planned = end
	}
}

func (e *Engine) getBuffer() *[]byte {
	if b, ok := e.buffers.Get().(*[]byte); ok && int64(cap(*b)) == e.ChunkSize {
		return b
	}
	b := make([]byte, e.ChunkSize)
	return &b
}

// releaseAll gives back the buffers of chunks never written, once no worker is left.
func (s *stream) releaseAll() {
	for _, p := range s.pieces {
		if p.end == p.chunk.end {
			s.e.buffers.Put(p.chunk.buf)
		}
	}
	s.pieces = nil
}

// _broadcast wakes the idle workers. Call with the lock held.
func (s *stream) _broadcast() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *stream) wakeWriter() {
	select {
	case s.headMoved <- struct{}{}:
	default:
	}
}

// fail ends the stream with err, unless it already failed.
func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.cancel(err)
	s.wakeWriter()
}

// write sends the range to w in order, each piece's bytes as soon as they are in.
func (s *stream) write(w io.Writer) error {
	w = flushWriter{w}
	for s.written <= s.span.End {
		s.mu.Lock()
		head := s.pieces[0]
		for s.err == nil && head.filled <= s.written {
			s.writerWaiting = true
			s.mu.Unlock()
			select {
			case <-s.headMoved:
			case <-s.ctx.Done():
			}
			s.mu.Lock()
			if s.err == nil && s.ctx.Err() != nil {
				s.err = context.Cause(s.ctx)
			}
		}
		s.writerWaiting = false
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return err
		}
		// Bytes below filled never change again, so they are written without the lock.
		ready := head.buf[s.written-head.start : head.filled-head.start]
		s.mu.Unlock()

		n, err := w.Write(ready)

		s.mu.Lock()
		s.written += int64(n)
		if s.written == head.end {
			s.pieces = s.pieces[1:]
			if head.end == head.chunk.end {
				s.e.buffers.Put(head.chunk.buf)
				s.openChunks--
				s._plan()
			}
			s._broadcast()
		}
		s.mu.Unlock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.ctx.Err() != nil {
			return nil, nil
		}
		if p := s._pickPiece(); p != nil {
			f := &fetch{pos: p.filled}
			p.fetches = append(p.fetches, f)
			if p.began.IsZero() {
				p.began = time.Now()
			}
			return p, f
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-s.ctx.Done():
		}
		s.mu.Lock()
	}
}

// _pickPiece chooses what an idle connection does, best first: a piece nobody fetches; the rest of the
// head the player waits on, when its connection lags; half of the piece that needs longest. Call with the
// lock held.
func (s *stream) _pickPiece() *piece {
	for _, p := range s.pieces {
		if !p.done() && len(p.fetches) == 0 {
			return p
		}
	}
	if len(s.pieces) == 0 {
		return nil
	}
	if head := s.pieces[0]; s.writerWaiting && !head.done() && len(head.fetches) == 1 && s._lagging(head.fetches[0]) {
		s.log.Debug("head lags: racing a second connection", "from", head.filled, "to", head.end-1)
		return head
	}
	var longest *piece
	var need time.Duration
	for _, p := range s.pieces {
		if d := s._timeLeft(p); !p.done() && d > need {
			longest, need = p, d
		}
	}
	if longest == nil || need < splitAfter || longest.end-longest.filled < 2*minSplit {
		return nil
	}
	mid := longest.filled + (longest.end-longest.filled)/2
	tail := &piece{start: mid, end: longest.end, filled: mid, buf: longest.buf[mid-longest.start:], chunk: longest.chunk}
	longest.end, longest.buf = mid, longest.buf[:mid-longest.start]
	for i, p := range s.pieces {
		if p == longest {
			s.pieces = append(s.pieces[:i+1], append([]*piece{tail}, s.pieces[i+1:]...)...)
			break
		}
	}
	s.log.Debug("idle connection takes half a piece", "from", mid, "to", tail.end-1)
	return tail
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
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, g := range p.fetches {
		if g == f {
			p.fetches = append(p.fetches[:i], p.fetches[i+1:]...)
			break
		}
	}
	if p.done() && len(p.fetches) == 0 {
		s.log.Debug("chunk done", "from", p.start, "to", p.end-1, "took", time.Since(p.began).Round(time.Millisecond), "retries", p.retries)
	}
	s._broadcast()
}

// attempt sends one request for the rest of p and copies its answer in. It returns nil when p needs this
// connection no more.
func (s *stream) attempt(p *piece, f *fetch) error {
	s.mu.Lock()
	if p.done() {
		s.mu.Unlock()
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
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		f.cancel = nil
		s.mu.Unlock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.done() {
		return false
	}
	from := f.pos
	f.pos += int64(len(data))
	f.got += int64(len(data))
	f.quiet = 0
	if to := min(f.pos, p.end); to > p.filled {
		copy(p.buf[p.filled-p.start:to-p.start], data[p.filled-from:to-from])
		p.filled = to
		if p == s.pieces[0] {
			s.wakeWriter()
		}
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
	s.mu.Lock()
	p.retries++
	s.retries++
	retries := p.retries
	s.mu.Unlock()
	where := fmt.Sprintf("bytes %d-%d", f.pos, p.end-1)
	if retries > s.e.Retries {
		return 0, fmt.Errorf("%s: gave up after %d retries: %w", where, s.e.Retries, err)
	}
	if f.mirror > 0 && !errors.Is(err, errSlow) && !errors.Is(err, errStalled) {
		// A mirror that fails is dropped at once: the target and the other mirrors carry on.
		s.mu.Lock()
		s.mirrorAside[f.mirror-1] = true
		s.mu.Unlock()
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
	s.mu.Lock()
	old, current := s.target, s.targetGen
	s.mu.Unlock()
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
	s.mu.Lock()
	s.target = t
	s.targetGen++
	s.mu.Unlock()
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

// sample takes one speed sample of every attempt: it drops those below the minimum speed for slowSamples
// samples in a row, and those silent for StallTimeout.
func (s *stream) sample() {
	stall := s.e.StallTimeout
	if stall <= 0 {
		stall = 10 * time.Second
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pieces {
		for _, f := range p.fetches {
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
	}
	s._broadcast()
}
