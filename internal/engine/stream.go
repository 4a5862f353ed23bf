package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"mflow/internal/engine/budget"
	"mflow/internal/engine/limit"
	"mflow/internal/engine/pace"
	"mflow/internal/httprange"
	"mflow/internal/mediaindex"
	"mflow/internal/source"
)

// stream is the state of one Stream call.
type stream struct {
	e         *Engine
	f         *file                   // the shared state of the file
	ctx       context.Context         // ends the stream's work
	cancel    context.CancelCauseFunc // ends ctx
	player    context.Context         // the caller's: ends when the player goes (or the stream is stopped)
	log       *slog.Logger            // this stream's logger
	span      httprange.Span          // the bytes asked for
	refresh   func(context.Context) (source.Target, error)
	lanes     int            // requests the stream may have open at once: -c or the drive's limit, never more
	limitKey  string         // the file, as the drive-limit policy knows it
	lastChunk int64          // index of the chunk holding span.End
	debug     bool           // the logger writes DEBUG lines
	wg        sync.WaitGroup // the dispatcher, the work it started and the watcher

	// refreshMu lets one request at a time resolve an expired link; the others find the new target.
	refreshMu sync.Mutex

	lastRead atomic.Int64 // when the player last took bytes, Unix nanoseconds: whether it counts as reading
	withheld atomic.Int64 // the read-ahead the budget does not give the stream now, bytes

	// The file's lock (f.mu) protects the following fields.
	pace          *pace.Pacer      // what the stream learned of its upstream and its player, and its verdicts
	target        source.Target    // current target; Refresh replaces it
	targetGen     int              // counts target replacements
	mirrors       []source.Target  // other copies of the file
	mirrorAside   []bool           // mirrors set aside after a failure
	nextTarget    int              // round-robin position over target and the usable mirrors
	head          *http.Response   // the probe's answer for span.Start, until the first request takes it
	headEnd       int64            // one past the last byte the probe asked for
	window        []*chunk         // chunks held, in order; window[0] holds the next byte to write
	finishing     []*chunk         // chunks written but not yet whole, held so the cache can keep them
	index         []*chunk         // the film's index's chunks and its head's, held from when the head told
	indexAt       mediaindex.Index // where the film keeps its index; zero when nowhere to fetch ahead
	indexSought   bool             // the head told where the index is, or there is none to seek
	nextIndex     int64            // index of the next chunk of the film's index to hold
	nextChunk     int64            // index of the next chunk to hold
	planning      bool             // a plan runs: another call leaves its work to that one
	written       int64            // offset of the next byte for the player; only the writer changes it
	writerWaiting bool             // the writer is waiting on the head
	fetches       []*fetch         // this stream's requests, each in a lane of its own: never more than lanes
	lingering     bool             // the player has its bytes or left: only the chunks finishing are fetched on
	limited       *lowered         // the lanes a drive's refusals lowered, with the target they were refused on
	mostServed    int              // the most of its requests the drive served at once on the current target
	retries       int              // retries of all requests
	replaced      int              // requests replaced for being slow
	received      int64            // bytes new to the file's pieces that this stream's requests brought
	err           error            // why the stream failed; the first error wins
	logs          []logLine        // DEBUG lines decided under the lock, written by unlock once it is let go
}

// logLine is one DEBUG line of a stream.
type logLine struct {
	msg  string
	args []any
}

// _debug keeps a DEBUG line to write once the file's lock is let go (see unlock): no I/O under the lock.
func (s *stream) _debug(msg string, args ...any) {
	if s.debug {
		s.logs = append(s.logs, logLine{msg, args})
	}
}

// unlock lets go of the file's lock, then writes the DEBUG lines kept under it.
func (s *stream) unlock() {
	lines := s.logs
	s.logs = nil
	s.f.mu.Unlock()
	for _, l := range lines {
		s.log.Debug(l.msg, l.args...)
	}
}

func (e *Engine) newStream(ctx context.Context, f *file, req Job) *stream {
	s := &stream{
		e:           e,
		f:           f,
		player:      ctx,
		log:         req.Logger,
		span:        req.Span,
		refresh:     req.Refresh,
		lanes:       max(req.Connections, 0),
		lastChunk:   req.Span.End / e.ChunkSize,
		target:      req.Target,
		mirrors:     req.Mirrors,
		mirrorAside: make([]bool, len(req.Mirrors)),
		head:        req.Head,
		nextChunk:   req.Span.Start / e.ChunkSize,
		written:     req.Span.Start,
		indexSought: e.IndexOf == nil || req.Span.Start != 0, // only a play from the head opens a film
	}
	if req.Head != nil {
		s.headEnd = min(req.Span.End+1, (req.Span.Start/e.ChunkSize+1)*e.ChunkSize)
	}
	// The stream's own work ends with the player, unless the player only went away after its bytes while
	// a chunk is finished for the cache (see linger).
	s.ctx, s.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	if s.lanes == 0 {
		s.lanes = max(e.Connections, 1)
	}
	if s.log == nil {
		s.log = e.logger()
	}
	s.debug = s.log.Enabled(ctx, slog.LevelDebug)
	s.limitKey = cmp.Or(req.FileKey, req.Target.URL)
	s.startWithinLimit(source.HostOf(req.Target.URL))
	minSpeed := e.MinSpeed
	if req.MinSpeed != nil {
		minSpeed = *req.MinSpeed
	}
	s.pace = pace.New(pace.Config{Lanes: s.lanes, Chunk: e.ChunkSize, MaxAhead: e.maxAhead(s.lanes), MinSpeed: float64(minSpeed), StallAfter: e.StallTimeout})
	return s
}

// startWithinLimit lowers the stream's lanes, and its file's, to what the drive is known to allow (or tries
// one more, once an hour).
func (s *stream) startWithinLimit(host string) {
	n, fileLimit, probing := s.e.Drives.start(host, s.limitKey, s.lanes)
	s.lanes = n
	s.f.mu.Lock()
	if fileLimit > 0 && (s.f.limit == 0 || fileLimit < s.f.limit || probing) {
		s.f.limit = fileLimit
	}
	s.f.mu.Unlock()
	if probing {
		s.log.Info("trying one connection more than the drive allowed an hour ago", "drive", limit.Drive(host), "connections", n)
	}
}

// plan holds more chunks while the read-ahead the policy allows lasts. A chunk no stream holds is looked
// up in the cache first, without the lock. One plan runs at a time, so no chunk is looked up twice (a file
// read, for the disk tier): a call meanwhile (a lane done, the writer moved on, the head read) leaves its
// work to the running one, which takes the lock again after it and so sees what it changed.
func (s *stream) plan() {
	if !s.startPlan() {
		return
	}
	lookedUp, data := int64(-1), []byte(nil)
	readers := 0 // how many share the budget: counted, without the file's lock, only when there is one
	if s.e.MaxMemory > 0 {
		readers = s.e.readers(time.Now())
	}
	for {
		next, lookup := s.holdChunks(lookedUp, data, readers)
		if !lookup {
			s.e.yieldCache()
			return
		}
		lookedUp, data = next, s.f.lookup(next)
	}
}

// startPlan reports whether no plan runs, and marks one running.
func (s *stream) startPlan() bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.planning {
		return false
	}
	s.planning = true
	return true
}

// holdChunks holds the next chunks until the read-ahead is covered, and returns early with the index of
// one the cache must be asked for first (lookedUp, data: the answer for the one asked last). Once it
// returns no lookup, the plan is over.
func (s *stream) holdChunks(lookedUp int64, data []byte, readers int) (next int64, lookup bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if next, lookup := s._holdChunks(lookedUp, data, readers); lookup {
		return next, true
	}
	s.planning = false
	s.f._broadcast()
	return 0, false
}

func (s *stream) _holdChunks(lookedUp int64, data []byte, readers int) (next int64, lookup bool) {
	size := s.e.ChunkSize
	ahead, floor := s.pace.Ahead(), int64(s.lanes)*size
	if s.pace.Opened() { // a first window is the stream's whatever the others hold: its first byte waits for none
		allowed := budget.Ahead(s.e.MaxMemory, readers, ahead, floor)
		s.withheld.Store(ahead - allowed)
		ahead = allowed
	}
	limit := s.written + ahead
	// Whole chunks within the read-ahead: a player that starts mid-chunk holds no more chunks for it.
	for (len(s.window) == 0 || min((s.nextChunk+1)*size, s.span.End+1) <= limit) && s.nextChunk <= s.lastChunk && !s.lingering {
		if len(s.window) > 0 && s.pace.Opened() && s.nextChunk*size-s.written >= floor && !budget.Fits(s.e.MaxMemory, s.e.held.Load(), size) {
			s.withheld.Add(limit - s.nextChunk*size)
			break // the streams together hold the budget: this one reads on as its player frees chunks
		}
		k := s.nextChunk
		c := s._hold(k, max(s.span.Start, k*size), min((k+1)*size, s.span.End+1), lookedUp, data)
		if c == nil {
			return k, true
		}
		s.window = append(s.window, c)
		s.nextChunk++
	}
	for ix := s.indexAt; s.nextIndex*size < ix.End; s.nextIndex++ {
		k := s.nextIndex
		c := s._hold(k, max(ix.Start, k*size), min((k+1)*size, ix.End), lookedUp, data)
		if c == nil {
			return k, true
		}
		s.index = append(s.index, c)
	}
	return 0, false
}

// _hold acquires chunk k for the stream's bytes [from, to) of it; nil when the cache is to be asked for it
// first, without the lock (lookedUp, data: the chunk asked for last, and the cache's answer).
func (s *stream) _hold(k, from, to, lookedUp int64, data []byte) *chunk {
	if s.f.chunks[k] == nil && s.f.caching() && k != lookedUp {
		return nil
	}
	var cached []byte
	if k == lookedUp {
		cached = data
	}
	return s.f._acquire(k, from, to, cached)
}

// _seekIndex reads the head for where the film keeps its index, once chunk 0 brought more of it, and
// reports whether chunks are to be held now: the index's, when it found one to fetch ahead, with the
// head's chunk, so that the player's jumps to the index and back find their bytes; else the read-ahead's,
// which slides on from the head.
func (s *stream) _seekIndex() bool {
	c := s.f.chunks[0]
	if s.indexSought || c == nil {
		return false
	}
	p := c._pieceAt(0)
	if p == nil || p.filled == 0 {
		return false
	}
	ix, verdict := s.e.IndexOf(c.bytes(0, p.filled), s.f.size)
	if verdict == mediaindex.NeedMore {
		return false
	}
	s.indexSought = true
	s.f._broadcast() // the lanes that waited for the verdict
	if verdict != mediaindex.Found || ix.Start > s.span.End {
		s.pace.ReadsOn()
		return true // the read-ahead slides on: hold its next chunks
	}
	s.indexAt, s.nextIndex = ix, ix.Start/s.e.ChunkSize
	s.index = append(s.index, s.f._acquire(0, 0, c.end, nil))
	s._debug("the film's index is not at its head: fetching it alongside", "from", ix.Start, "to", ix.End-1)
	return true
}

// releaseAll lets go of the chunks still held, once no goroutine of the stream is left.
func (s *stream) releaseAll() {
	s.f.retire(s.dropWindow())
}

func (s *stream) dropWindow() []*chunk {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	var released []*chunk
	for _, c := range slices.Concat(s.window, s.finishing, s.index) {
		released = append(released, s.f._release(c))
	}
	s.window, s.finishing, s.index = nil, nil, nil
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

// write sends the range to w in order, each piece's bytes as soon as they are in.
func (s *stream) write(w io.Writer) error {
	// A player slow to take a write must not keep a paused, removed or failed stream going.
	defer cutWritesWhenDone(s.ctx, w)()
	defer cutWritesWhenDone(s.player, w)()
	w = newFlushWriter(w)
	for s.written <= s.span.End {
		ready, c, wait, err := s.ready()
		if err != nil {
			return err
		}
		if wait != nil {
			select {
			case <-wait:
			case <-s.ctx.Done():
			case <-s.player.Done():
			}
			continue
		}
		// Bytes below a piece's fill mark never change again, and the chunk is held: write without the lock.
		n, werr := w.Write(ready)
		released, moved, drained := s.wrote(c, n)
		if werr == nil && drained {
			s.settle()
		}
		if moved {
			s.f.retire([]*chunk{released})
			s.plan()
		}
		if werr != nil {
			return werr
		}
	}
	return nil
}

// settle waits, once the player took all of the stream's first window, for the time the policy gives a
// player that wanted only those bytes to be seen gone, then lets the read-ahead slide with the player.
func (s *stream) settle() {
	s.f.mu.Lock()
	wait := time.NewTimer(s.pace.Settle())
	s.f.mu.Unlock()
	defer wait.Stop()
	select {
	case <-wait.C:
	case <-s.ctx.Done():
		return
	case <-s.player.Done():
		return
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.pace.FirstWindowRead()
	s.f._broadcast()
}

// ready returns the bytes the player can have next, or the channel to wait on for them, or why the stream
// is over.
func (s *stream) ready() (data []byte, c *chunk, wait <-chan struct{}, err error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.err == nil && s.ctx.Err() != nil {
		s.err = context.Cause(s.ctx)
	}
	if s.err == nil && s.player.Err() != nil {
		s.err = context.Cause(s.player)
	}
	if s.err != nil {
		return nil, nil, nil, s.err
	}
	if len(s.window) == 0 {
		// The player took the last chunk held while a plan another goroutine runs asks the cache for the
		// next one: that plan holds it once it has the answer, and wakes the idle (changed) when it ends.
		return nil, nil, s.f.changed, nil
	}
	c = s.window[0]
	p := c._pieceAt(s.written)
	if p == nil {
		return nil, nil, nil, fmt.Errorf("internal error: no piece holds byte %d", s.written)
	}
	if p.filled <= s.written {
		if !s.writerWaiting {
			s.writerWaiting = true
			s.f._broadcast() // a lane may race or hedge the head now
		}
		return nil, nil, s.f.progress, nil
	}
	s.writerWaiting = false
	return c.bytes(s.written, min(p.filled, s.span.End+1)), c, nil, nil
}

// wrote records n bytes written from c. When the player is past c, c leaves the window; the chunk it
// returns, if any, must be retired. moved says the read-ahead moved on: more chunks are to be held;
// drained, that the player took all of the first window: the stream is to settle before it reads on.
func (s *stream) wrote(c *chunk, n int) (released *chunk, moved, drained bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.written += int64(n)
	s.lastRead.Store(time.Now().UnixNano())
	grew := s.pace.Read(int64(n))
	if s.written != min(c.end, s.span.End+1) {
		return nil, grew, false
	}
	if s.f.caching() && !c._complete() {
		s.finishing = append(s.finishing, c) // the rest of it is fetched for the cache
	} else {
		released = s.f._release(c)
	}
	s.window = s.window[1:]
	drained = len(s.window) == 0 && s.written <= s.span.End && !s.pace.Opened()
	s.f._broadcast()
	return released, true, drained
}

const (
	// lingerFor bounds how long a stream whose player left goes on finishing chunks it keeps.
	lingerFor = 10 * time.Second
	// indexHold is how long a lingering stream still holds a film's index and head once they are whole:
	// a player opening the film jumps to the index and back within it.
	indexHold = 3 * time.Second
)

// linger finishes, once the player has its bytes or went away, the chunks it keeps (see _kept): with a
// cache, the chunk the player entered mid-way and the last one, so the cache can keep them; and a film's
// index and head, held indexHold more, for the player's next requests. It lasts lingerFor at most. A
// stream stopped (paused, removed, shut down) or failed ends at once.
func (s *stream) linger() {
	limit := time.NewTimer(lingerFor)
	defer limit.Stop()
	for {
		wait, holdIndex := s.finishWait()
		if wait == nil && !holdIndex {
			return
		}
		if wait == nil {
			hold := time.NewTimer(indexHold)
			defer hold.Stop()
			select {
			case <-hold.C:
			case <-s.ctx.Done():
			case <-limit.C:
			}
			return
		}
		select {
		case <-wait:
		case <-s.ctx.Done():
			return
		case <-limit.C:
			return
		}
	}
}

// startLinger turns the stream to finishing its chunks for the cache, when there are any and the player's
// end allows it: its bytes written, or it went away (a player's own context ends with context.Canceled).
func (s *stream) startLinger(player error) bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if len(s._kept()) == 0 || s.err != nil && !errors.Is(s.err, ErrPlayerGone) && !errors.Is(s.err, context.Canceled) {
		return false
	}
	if player != nil && !errors.Is(player, context.Canceled) {
		return false
	}
	s.lingering, s.err = true, nil
	// The rest of the window's chunks were the player's: their requests stop now.
	kept := s._kept()
	for _, f := range s.fetches {
		if f.cancel != nil && !slices.ContainsFunc(kept, func(c *chunk) bool { return c.start <= f.pos && f.pos < c.end }) {
			f.cancel(errStreamDone)
		}
	}
	s.f._broadcast()
	return true
}

// _kept is the chunks a stream whose player is done with it still finishes: those the player entered
// mid-way, with a cache; the last, when the player has all its bytes and a cache keeps chunks; and a film's
// index and head.
func (s *stream) _kept() []*chunk {
	kept := slices.Concat(s.finishing, s.index)
	if s.written > s.span.End && len(s.window) > 0 && s.f.caching() {
		kept = append(kept, s.window[0])
	}
	return kept
}

// finishWait is what to wait on while a chunk kept is not whole; nil once all are, or the stream is over.
// holdIndex says the film's index and head are whole, to be held a while for the player.
func (s *stream) finishWait() (wait <-chan struct{}, holdIndex bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.err != nil || s.ctx.Err() != nil {
		return nil, false
	}
	for _, c := range s._kept() {
		if !c._complete() {
			return s.f.progress, false
		}
	}
	return nil, len(s.index) > 0
}
