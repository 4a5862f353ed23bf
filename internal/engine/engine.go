// Package engine fetches a byte range of one file version over several upstream connections at once and
// writes it to the player in order, the head streamed as it arrives.
//
// A file is cut into chunks whose boundaries are absolute multiples of the chunk size; each chunk has a
// buffer, and a piece is a part of a chunk that connections fill. Any number of connections may work on
// one piece: each copies in only the bytes past the piece's contiguous fill mark, so a second connection
// on a lagging piece races the first (first to arrive wins), and a split piece is a shorter end plus a
// new piece over the same buffer. Streams of the same file share its chunks, so they share the
// downloads in flight, and a chunk complete when its last stream lets go of it goes into the cache.
//
// Speed on real drives: a stream has Connections lanes. A request near its end (less left than the
// stream's first-byte time) gives its lane up, so the next request is already on its way when the current
// one ends and no connection waits idle for a first byte; a stream therefore reads up to 2 × Connections
// chunks ahead. A request far slower than the stream's best is raced by a fresh request, which usually
// lands on another route, and cancelled if it stays slow. The best is taken over windows longer than the
// silences requests had, and a request in a silence is judged on its steady speed, so a server that paces in
// bursts (nginx's limit_rate) is not taken for a slow route.
//
// Locking, the convention across mflow: a mutex's comment says which fields it protects (they follow
// it). A function or method whose name starts with an underscore must be called with that mutex held and
// never releases it; every other function that needs the mutex takes it itself, with a deferred unlock, so
// that a panic never leaves it held. No I/O (network, disk, a player) happens while a mutex a hot path
// needs is held. Here each file has one mutex, mu, that protects the file's chunks and pieces and the
// state of all its streams.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/mediaindex"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// Engine streams ranges. Its fields are set before the first Stream and not changed after.
type Engine struct {
	// Client sends the chunk requests.
	Client *upstream.Client
	// ChunkSize is the size of a chunk and the grid chunks are aligned to.
	ChunkSize int64
	// Connections is the most upstream requests a stream has open at once, its probe's answer, races and
	// hedges included.
	Connections int
	// ReadAhead bounds how far a stream reads ahead of its player, in bytes (DefaultReadAhead when 0): a
	// stream starts with Connections chunks ahead and reads further while its player keeps up.
	ReadAhead int64
	// IndexOf, when set, tells from a film's first bytes where it keeps its index when that is not at its
	// head (mediaindex.Locate): a stream from byte 0 then fetches the index alongside the head, within its
	// connections, and holds it and the head's chunk for the player's jumps at open. Nil fetches nothing
	// ahead.
	IndexOf func(head []byte, size int64) (mediaindex.Index, mediaindex.Finding)
	// Retries is how often one piece may be tried again before the stream fails.
	Retries int
	// MinSpeed, in bytes per second, drops a connection slower than this for pace.SlowSamples seconds in a
	// row; 0 turns the check off.
	MinSpeed int64
	// StallTimeout replaces a connection that delivers nothing for this long. Default 10 s.
	StallTimeout time.Duration
	// RetryBase is the first back-off after an error; it doubles each retry up to upstream.MaxBackoff.
	// Default 250 ms.
	RetryBase time.Duration
	// Cache, when set, keeps complete chunks of files streamed with a FileKey; nil keeps none.
	Cache Cache
	// Logger receives a DEBUG line per request. Default slog.Default().
	Logger *slog.Logger
	// Remedies count, since the engine started, what its streams did about failed and slow requests: for metrics.
	Remedies Remedies
	// Observe, when set, hears of every upstream request of every stream as it ends, for metrics. It runs
	// on the stream's own goroutines and must not block.
	Observe func(RequestDone)
	// Drives, when set, keeps streams within what each drive allows a file (NewDrives): it learns a
	// drive's limit from its refusals and starts later streams within it. Nil leaves -c the only bound.
	Drives *Drives

	// MaxMemory bounds the chunk buffers all streams hold together (--max-memory; see package budget):
	// beyond its first window and a chunk per lane, a stream reads ahead only within an even share of it
	// among the streams whose players read, and while all streams stay within it. 0 is no bound.
	MaxMemory int64
	// CacheRoom, when set, is told what the streams leave of MaxMemory each time what they hold changes:
	// the memory cache shrinks to it and grows back (chunkcache.Memory.Yield).
	CacheRoom func(bytes int64)

	buffers sync.Pool    // *[]byte of ChunkSize capacity, reused across chunks and streams
	held    atomic.Int64 // bytes of chunk buffers held by streams now

	liveMu sync.Mutex           // protects live
	live   map[*stream]struct{} // the streams playing now, for the budget's shares

	filesMu sync.Mutex       // protects files
	files   map[string]*file // the files being streamed, by FileKey

	lingerMu  sync.Mutex           // protects lingering
	lingering map[*stream]struct{} // streams finishing what they keep after their player was done
	lingers   sync.WaitGroup       // their goroutines
}

// Close ends the streams still finishing chunks after their players were done, and waits for them.
func (e *Engine) Close() {
	e.lingerMu.Lock()
	for s := range e.lingering {
		s.cancel(errStreamDone)
	}
	e.lingerMu.Unlock()
	e.lingers.Wait()
}

// Remedies are an engine's retries, races and splits, each read and written atomically, so that streams count
// without a lock.
type Remedies struct {
	Retries atomic.Int64 // pieces asked again after a request failed
	Raced   atomic.Int64 // fresh requests raced against a slow one
	Splits  atomic.Int64 // pieces split so an idle connection takes half
}

// Cache keeps whole chunks by key. Get returns bytes the engine only reads. Put may keep data as it is
// and says so (kept): the engine then never writes those bytes again nor reuses their buffer, so a chunk
// is cached without a copy; otherwise they are the engine's again once Put returns. The engine never
// calls them with a lock held.
type Cache interface {
	Get(key string) ([]byte, bool)
	Put(key string, data []byte) (kept bool)
}

// readSize is how much one connection reads at a time.
const readSize = 32 << 10

// DefaultReadAhead is the most a stream reads ahead of its player unless Engine.ReadAhead says otherwise.
const DefaultReadAhead = 64 << 20

// maxAhead is the read-ahead bound of a stream of lanes requests: ReadAhead, and never less than a chunk
// for each request in flight and one ready.
func (e *Engine) maxAhead(lanes int) int64 {
	ahead := e.ReadAhead
	if ahead <= 0 {
		ahead = DefaultReadAhead
	}
	return max(ahead, 2*int64(lanes)*e.ChunkSize)
}

// Job is one range to stream.
type Job struct {
	Target source.Target  // what to fetch, for which player
	Span   httprange.Span // the bytes to write, within Target.Version.Size
	// Head, when set, is an answer already open for the first bytes of Span (the probe's, asked for as
	// FirstRequest says): the first request uses it instead of asking again. Stream closes it.
	Head *http.Response
	// FileKey names the file and its version (the link as the user gave it, not a signed redirect
	// target, with its size and validators). Streams with the same key share chunk downloads and the
	// cache; "" shares nothing.
	FileKey string
	// Mirrors are other copies of the same file, each checked against its own version; chunk requests are
	// spread across Target and them, and a mirror that fails is set aside for the rest of the stream.
	Mirrors []source.Target
	// Refresh resolves the link again when its signed URL expires (403 or 410 mid-stream). Nil means an
	// expired link fails the stream.
	Refresh func(context.Context) (source.Target, error)
	// Connections, when positive, replaces Engine.Connections for this stream.
	Connections int
	// MinSpeed, when set, replaces Engine.MinSpeed for this stream (0 turns the check off).
	MinSpeed *int64
	// Logger, when set, replaces Engine.Logger for this stream (to carry the stream's id).
	Logger *slog.Logger
	// Live, when set, shows the stream's progress while it plays.
	Live *Live
}

// Stats describes a finished stream.
type Stats struct {
	Bytes    int64 // bytes written to the player
	Retries  int   // chunk requests tried again after a failure
	Replaced int   // requests raced or asked again for being far slower than the stream's best
}

var (
	// ErrPlayerGone wraps the error of a write to a player that went away.
	ErrPlayerGone = errors.New("player went away")
	// errSlow cancels a connection below --min-speed; a fresh one takes over.
	errSlow = errors.New("connection below --min-speed")
	// errSlowRoute cancels a request far slower than the stream's best; a fresh one usually takes another
	// route.
	errSlowRoute = errors.New("request far slower than the stream's best")
	// errRaceLost cancels a connection whose piece another connection finished first, or that nobody
	// needs any more.
	errRaceLost = errors.New("piece finished by another connection")
	// errStreamDone ends the requests once the player has its bytes or the stream failed.
	errStreamDone = errors.New("stream over")
)

// PanicError is a panic inside a stream, turned into the stream's error.
type PanicError struct {
	Value any    // what was panicked with
	Stack []byte // where
}

func (e *PanicError) Error() string { return fmt.Sprintf("internal error: panic: %v", e.Value) }

// FirstRequest is the range the first request of a stream of span asks for: from span.Start to the end of
// its chunk, or span.End when that comes first (span.End < 0: the end is not known yet). A probe that asks
// for it can hand its answer to Stream as Request.Head.
func (e *Engine) FirstRequest(span httprange.Span) httprange.Span {
	end := (span.Start/e.ChunkSize+1)*e.ChunkSize - 1
	if span.End >= 0 {
		end = min(end, span.End)
	}
	return httprange.Span{Start: span.Start, End: end}
}

// Stream writes req.Span of the target to w, in order, and returns once it is written or cannot be. When
// w, or a writer it wraps (see underneath), is an http.Flusher it is flushed after each write so the player
// sees bytes as they arrive; when it has SetWriteDeadline, a stream that ends early (ctx cancelled, the file
// changed) cuts a write the player is slow to take. Every goroutine the stream started has ended when
// Stream returns, and a panic in any of them ends this stream only, as a *PanicError.
func (e *Engine) Stream(ctx context.Context, w io.Writer, req Job) (stats Stats, err error) {
	size := req.Target.Version.Size
	if err := upstream.CheckSize(size); err != nil {
		closeHead(req.Head)
		return Stats{}, err
	}
	if e.ChunkSize <= 0 {
		closeHead(req.Head)
		return Stats{}, errors.New("engine: ChunkSize must be positive")
	}
	if sp := req.Span; sp.Start < 0 || sp.Start > sp.End || sp.End >= size {
		closeHead(req.Head)
		return Stats{}, fmt.Errorf("bytes %d-%d are not within the %d-byte file", sp.Start, sp.End, size)
	}
	f := e.openFile(req.FileKey, size)
	s := e.newStream(ctx, f, req)
	e.begin(s)
	defer e.end(s)
	// The stream's work is its own (it may finish chunks it keeps after its player was done), but a stop
	// for any other cause than the player going (a task paused, mflow stopping) ends it at once.
	stop := context.AfterFunc(ctx, func() {
		if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
			s.cancel(cause)
		}
	})
	lingers := false
	defer func() {
		if v := recover(); v != nil {
			err, lingers = s.panicked(v), false
		}
		if !lingers {
			s.close()
			stop()
			e.closeFile(f)
		}
		stats = s.stats()
	}()
	if req.Live != nil {
		req.Live.set(s.progress)
		defer req.Live.set(nil)
	}
	s.plan()
	s.wg.Go(func() { defer s.recoverWorker(); s.dispatch() })
	s.wg.Go(func() { defer s.recoverWorker(); s.watch() })
	err = s.write(w)
	if lingers = s.startLinger(context.Cause(ctx)); lingers {
		// The player is done with the stream: it returns now, so that the player's next request (on the
		// same connection, often) does not wait for what the stream keeps.
		e.lingerMu.Lock()
		if e.lingering == nil {
			e.lingering = map[*stream]struct{}{}
		}
		e.lingering[s] = struct{}{}
		e.lingerMu.Unlock()
		e.lingers.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					s.panicked(v)
				}
				s.close()
				stop()
				e.closeFile(f)
				e.lingerMu.Lock()
				delete(e.lingering, s)
				e.lingerMu.Unlock()
			}()
			s.linger()
		})
	}
	return stats, err
}

// close ends the stream's work, waits for its goroutines and lets go of what it holds.
func (s *stream) close() {
	s.cancel(errStreamDone)
	s.wg.Wait()
	s.releaseAll()
	closeHead(s.takeHead())
}

// recoverWorker ends the stream when one of its goroutines panics, instead of the process.
func (s *stream) recoverWorker() {
	if v := recover(); v != nil {
		s.fail(s.panicked(v))
	}
}

// panicked logs a panic with its stack at ERROR and returns it as an error.
func (s *stream) panicked(v any) error {
	pe := &PanicError{Value: v, Stack: debug.Stack()}
	s.log.Error("stream panicked; ending it", "panic", v, "stack", string(pe.Stack))
	return pe
}

func closeHead(h *http.Response) {
	if h != nil {
		h.Body.Close()
	}
}

func (e *Engine) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

// HeldBytes is the memory the streams hold in chunk buffers now. A stream holds at most its read-ahead
// (ReadAhead) and a chunk, and with a cache up to two more it finishes for the cache; each request also
// has a readSize read buffer.
func (e *Engine) HeldBytes() int64 { return e.held.Load() }

func (e *Engine) getBuffer() *[]byte {
	e.held.Add(e.ChunkSize)
	if b, ok := e.buffers.Get().(*[]byte); ok && int64(cap(*b)) == e.ChunkSize {
		return b
	}
	b := make([]byte, e.ChunkSize)
	return &b
}
