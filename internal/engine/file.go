package engine

import (
	"fmt"
	"slices"
	"sync"
)

// file is the state the streams of one file version share: the chunks some stream holds, and the
// pieces connections fill in them. Two players of the same film wait on the same pieces, so upstream
// sees each chunk about once; a player that leaves only takes its own connections away.
type file struct {
	e    *Engine
	key  string // names the file and its version; "" for a stream that shares nothing
	size int64  // bytes in the file

	// mu guards everything below, and the state of every stream of this file: one lock, so that a
	// delivery, a write and a choice of work always see the same pieces.
	mu       sync.Mutex
	streams  int              // streams using this file
	chunks   map[int64]*chunk // chunks held by at least one stream, by index
	progress chan struct{}    // closed (and replaced) when a piece gets bytes or a stream fails: wakes writers
	changed  chan struct{}    // closed (and replaced) when idle workers should look for work again
}

// chunk is one aligned unit of the file and the buffer its pieces fill.
type chunk struct {
	index      int64    // chunk number: bytes [index × ChunkSize, …)
	start, end int64    // absolute offsets, end clipped to the file's size
	buf        *[]byte  // from Engine.buffers; (*buf)[0] holds byte start
	pieces     []*piece // in order, not overlapping; together they cover what streams asked for
	refs       int      // streams holding the chunk in their window
	cached     bool     // filled from the cache: never put back
	released   bool     // the buffer went back to the pool: no byte may be copied in
}

// piece is a byte range [start, end) of a chunk that connections fill.
type piece struct {
	c          *chunk   // the chunk it belongs to
	start, end int64    // absolute offsets; a split lowers end
	filled     int64    // bytes [start, filled) are in the chunk's buffer
	fetches    []*fetch // connections working on it, of any stream
	retries    int      // retries spent on it
}

func (p *piece) done() bool { return p.filled >= p.end }

// bytes are the chunk's buffer bytes [from, to), absolute offsets.
func (c *chunk) bytes(from, to int64) []byte { return (*c.buf)[from-c.start : to-c.start] }

// complete reports whether every byte of the chunk is in.
func (c *chunk) complete() bool {
	at := c.start
	for _, p := range c.pieces {
		if p.start != at || !p.done() {
			return false
		}
		at = p.end
	}
	return at == c.end
}

// pieceAt is the piece holding offset x; nil when no piece covers it.
func (c *chunk) pieceAt(x int64) *piece {
	for _, p := range c.pieces {
		if p.start <= x && x < p.end {
			return p
		}
	}
	return nil
}

// _cover adds pieces for the parts of [from, to) no piece covers yet. Call with the lock held.
func (c *chunk) _cover(from, to int64) {
	var gaps []*piece
	at := from
	for _, p := range c.pieces {
		if p.start > at && at < to {
			gaps = append(gaps, &piece{c: c, start: at, end: min(p.start, to), filled: at})
		}
		at = max(at, p.end)
	}
	if at < to {
		gaps = append(gaps, &piece{c: c, start: at, end: to, filled: at})
	}
	if len(gaps) > 0 {
		c.pieces = append(c.pieces, gaps...)
		slices.SortFunc(c.pieces, func(a, b *piece) int { return int(a.start - b.start) })
	}
}

// _split cuts p at mid: p keeps [start, mid), and the new piece after it takes [mid, end). Call with the
// lock held.
func (c *chunk) _split(p *piece, mid int64) *piece {
	tail := &piece{c: c, start: mid, end: p.end, filled: mid}
	p.end = mid
	i := slices.Index(c.pieces, p)
	c.pieces = slices.Insert(c.pieces, i+1, tail)
	return tail
}

// openFile returns the shared state of the file key names, creating it for the first stream.
func (e *Engine) openFile(key string, size int64) *file {
	e.filesMu.Lock()
	defer e.filesMu.Unlock()
	if key != "" {
		if f := e.files[key]; f != nil {
			f.mu.Lock()
			f.streams++
			f.mu.Unlock()
			return f
		}
	}
	f := &file{e: e, key: key, size: size, streams: 1, chunks: map[int64]*chunk{}, progress: make(chan struct{}), changed: make(chan struct{})}
	if key != "" {
		if e.files == nil {
			e.files = map[string]*file{}
		}
		e.files[key] = f
	}
	return f
}

// closeFile drops a stream's use of f, and f itself after its last stream.
func (e *Engine) closeFile(f *file) {
	e.filesMu.Lock()
	defer e.filesMu.Unlock()
	f.mu.Lock()
	f.streams--
	last := f.streams == 0
	f.mu.Unlock()
	if last && f.key != "" {
		delete(e.files, f.key)
	}
}

// cacheKey names chunk index of this file in the cache.
func (f *file) cacheKey(index int64) string {
	return fmt.Sprintf("%s\x00%d\x00%d", f.key, f.e.ChunkSize, index)
}

// _acquire holds chunk index for a stream that needs its bytes [from, to): from the chunks other streams
// hold, else from the cache, else new. With a cache, the whole chunk is covered, so that it can be
// kept once complete. Call with the lock held.
func (f *file) _acquire(index, from, to int64) *chunk {
	c := f.chunks[index]
	if c == nil {
		size := f.e.ChunkSize
		c = &chunk{index: index, start: index * size, end: min((index+1)*size, f.size), buf: f.e.getBuffer()}
		if cache := f.e.Cache; cache != nil && f.key != "" {
			if data, ok := cache.Get(f.cacheKey(index)); ok && int64(len(data)) == c.end-c.start {
				copy(*c.buf, data)
				c.pieces = []*piece{{c: c, start: c.start, end: c.end, filled: c.end}}
				c.cached = true
			}
		}
		f.chunks[index] = c
	}
	if f.e.Cache != nil && f.key != "" {
		from, to = c.start, c.end
	}
	c._cover(from, to)
	c.refs++
	return c
}

// _release drops a stream's hold on c. The last hold puts a complete chunk into the cache and gives
// the buffer back. Call with the lock held.
func (f *file) _release(c *chunk) {
	if c.refs--; c.refs > 0 {
		return
	}
	delete(f.chunks, c.index)
	if cache := f.e.Cache; cache != nil && f.key != "" && !c.cached && c.complete() {
		cache.Put(f.cacheKey(c.index), c.bytes(c.start, c.end))
	}
	c.released = true
	for _, p := range c.pieces {
		for _, g := range p.fetches {
			if g.cancel != nil {
				g.cancel(errRaceLost) // nobody needs these bytes any more
			}
		}
	}
	f.e.buffers.Put(c.buf)
}

// _progress wakes every writer of the file. Call with the lock held.
func (f *file) _progress() {
	close(f.progress)
	f.progress = make(chan struct{})
}

// _broadcast wakes every idle worker of the file. Call with the lock held.
func (f *file) _broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}
