// Package engine fetches a byte range of one file version over several upstream connections at once and
// writes it to the player in order, the head streamed as it arrives.
//
// A file is cut into chunks whose boundaries are absolute multiples of the chunk size; each chunk has a
// buffer, and a piece is a part of a chunk that connections fill. Any number of connections may work on
// one piece: each copies in only the bytes past the piece's contiguous fill mark, so a second connection
// on a lagging piece races the first (first to arrive wins), and a split piece is a shorter end plus a
// new piece over the same buffer. Streams of the same file share its chunks, so they share the
// downloads in flight, and a chunk complete when its last stream lets go of it goes into the cache. A
// stream holds at most Connections chunks ahead of its player.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	// Cache, when set, keeps complete chunks of files streamed with a FileKey; nil keeps none.
	Cache Cache
	// Logger receives a DEBUG line per chunk. Default slog.Default().
	Logger *slog.Logger

	buffers sync.Pool        // *[]byte of ChunkSize capacity, reused across chunks and streams
	filesMu sync.Mutex       // guards files
	files   map[string]*file // the files being streamed, by FileKey
}

// Cache keeps whole chunks by key. Get returns bytes the engine only reads; Put's bytes are the
// caller's again once Put returns.
type Cache interface {
	Get(key string) ([]byte, bool)
	Put(key string, data []byte)
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
	// FileKey names the file and its version (the link as the user gave it, not a signed redirect
	// target, with its size and validators). Streams with the same key share chunk downloads and the
	// cache; "" shares nothing.
	FileKey string
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
	// errRaceLost cancels a connection whose piece another connection finished first, or that nobody
	// needs any more.
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
	f := e.openFile(req.FileKey, req.Target.Version.Size)
	defer e.closeFile(f)
	s := e.newStream(ctx, f, req)
	var wg sync.WaitGroup
	for range s.connections {
		wg.Go(s.work)
	}
	wg.Go(s.watch)
	err := s.write(w)
	if err == nil {
		s.finish()
	}
	s.cancel(errStreamDone)
	wg.Wait()
	s.releaseAll()
	return Stats{Bytes: s.written - req.Span.Start, Retries: s.retries}, err
}

func (e *Engine) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

func (e *Engine) getBuffer() *[]byte {
	if b, ok := e.buffers.Get().(*[]byte); ok && int64(cap(*b)) == e.ChunkSize {
		return b
	}
	b := make([]byte, e.ChunkSize)
	return &b
}
