package engine

import (
	"cmp"
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

	// mu protects the following fields, and the state of every stream of this file: one lock, so that a
	// delivery, a write and a choice of work always see the same pieces.
	mu       sync.Mutex
	streams  int                // streams using this file
	chunks   map[int64]*chunk   // chunks held by at least one stream, by index
	fetches  map[*fetch]*stream // every stream's requests (and their claims on bytes), with the stream
	limit    int                // the most requests the drive allows the file, all its streams together; 0 none known
	progress chan struct{}      // closed (and replaced) when a piece gets bytes or a stream fails: wakes writers
	changed  chan struct{}      // closed (and replaced) when the dispatchers should look for work for a free lane again
}

// chunk is one aligned unit of the file and the buffer its pieces fill. Its fields are protected by the
// file's lock.
type chunk struct {
	index      int64    // chunk number: bytes [index × ChunkSize, …)
	start, end int64    // absolute offsets, end clipped to the file's size
	buf        *[]byte  // from Engine.buffers; (*buf)[0] holds byte start
	pieces     []*piece // in order, not overlapping; together they cover what streams asked for
	refs       int      // streams holding the chunk in their window
	cached     bool     // the cache has it (filled from it, or put): never put again
	given      bool     // its buffer went to the cache with its bytes: never reused
	storing    bool     // complete and held by no stream, being put into the cache: streams still find it
	released   bool     // no stream holds it: no byte may be copied in, the buffer is being given back
}

// piece is a byte range [start, end) of a chunk that connections fill. Its fields are protected by the
// file's lock.
type piece struct {
	c          *chunk // the chunk it belongs to
	start, end int64  // absolute offsets; a split lowers end
	filled     int64  // bytes [start, filled) are in the chunk's buffer
}

func (p *piece) done() bool { return p.filled >= p.end }

// bytes are the chunk's buffer bytes [from, to), absolute offsets.
func (c *chunk) bytes(from, to int64) []byte { return (*c.buf)[from-c.start : to-c.start] }

// _complete reports whether every byte of the chunk is in.
func (c *chunk) _complete() bool {
	at := c.start
	for _, p := range c.pieces {
		if p.start != at || !p.done() {
			return false
		}
		at = p.end
	}
	return at == c.end
}

// _pieceAt is the piece holding offset x; nil when no piece covers it.
func (c *chunk) _pieceAt(x int64) *piece {
	for _, p := range c.pieces {
		if p.start <= x && x < p.end {
			return p
		}
	}
	return nil
}

// _pieceAfter is the first piece that starts after offset x; nil when none does.
func (c *chunk) _pieceAfter(x int64) *piece {
	for _, p := range c.pieces {
		if p.start > x {
			return p
		}
	}
	return nil
}

// _cover adds pieces for the parts of [from, to) no piece covers yet.
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
		slices.SortFunc(c.pieces, func(a, b *piece) int { return cmp.Compare(a.start, b.start) })
	}
}

// _split cuts p at mid: p keeps [start, mid), and the new piece after it takes [mid, end).
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
	if f := e.files[key]; key != "" && f != nil {
		f.addStream(1)
		return f
	}
	f := &file{e: e, key: key, size: size, streams: 1, chunks: map[int64]*chunk{}, fetches: map[*fetch]*stream{}, progress: make(chan struct{}), changed: make(chan struct{})}
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
	if f.addStream(-1) == 0 && f.key != "" && e.files[f.key] == f {
		delete(e.files, f.key)
		e.Drives.forget(f.key)
	}
}

// addStream counts n more streams of f and returns how many there are.
func (f *file) addStream(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.streams += n
	return f.streams
}

// caching reports whether f's complete chunks go into the cache.
func (f *file) caching() bool { return f.e.Cache != nil && f.key != "" }

// cacheKey names chunk index of this file in the cache.
func (f *file) cacheKey(index int64) string {
	return fmt.Sprintf("%s\x00%d\x00%d", f.key, f.e.ChunkSize, index)
}

// lookup asks the cache for chunk index, without the lock: the disk tier reads a file.
func (f *file) lookup(index int64) []byte {
	if !f.caching() {
		return nil
	}
	data, _ := f.e.Cache.Get(f.cacheKey(index))
	return data
}

// _acquire holds chunk index for a stream that needs its bytes [from, to): the chunk other streams hold,
// else one filled from cached (the cache's bytes, looked up beforehand), else a new one. With a cache, the
// whole chunk is covered, so that it can be kept once complete; the stream's own part is its own piece, so
// the player never waits for bytes only the cache wants.
func (f *file) _acquire(index, from, to int64, cached []byte) *chunk {
	c := f.chunks[index]
	if c == nil {
		size := f.e.ChunkSize
		c = &chunk{index: index, start: index * size, end: min((index+1)*size, f.size), buf: f.e.getBuffer()}
		if int64(len(cached)) == c.end-c.start {
			copy(*c.buf, cached)
			c.pieces = []*piece{{c: c, start: c.start, end: c.end, filled: c.end}}
			c.cached = true
		}
		f.chunks[index] = c
	}
	c._cover(from, to)
	if f.caching() {
		c._cover(c.start, c.end)
	}
	c.refs++
	return c
}

// _release drops a stream's hold on c. When it was the last hold, c is returned: the caller must hand it
// to retire once the lock is let go. A complete chunk for the cache stays where streams find it until the
// cache has it, so a stream that comes meanwhile neither misses it in the cache nor fetches it again;
// any other is released at once, and requests that were to bring its bytes notice when they bring them.
func (f *file) _release(c *chunk) *chunk {
	if c.refs--; c.refs > 0 || c.storing {
		return nil
	}
	if f.caching() && !c.cached && c._complete() {
		c.storing = true
		return c
	}
	delete(f.chunks, c.index)
	c.released = true
	return c
}

// retire puts the chunks _release returned for the cache into it and gives their buffers back, but for
// those the cache keeps as they are. Call without the lock: the cache may write a file.
func (f *file) retire(chunks []*chunk) {
	for _, c := range chunks {
		if c == nil {
			continue
		}
		if c.storing {
			kept := f.e.Cache.Put(f.cacheKey(c.index), c.bytes(c.start, c.end))
			if !f.stored(c, kept) {
				continue
			}
		}
		if !c.given {
			f.e.buffers.Put(c.buf)
		}
		f.e.held.Add(-f.e.ChunkSize)
	}
	f.e.yieldCache()
}

// stored ends c's storing once the cache has it (kept: its buffer with it), and reports whether c is
// released: it is not when a stream came for it meanwhile, which now holds it.
func (f *file) stored(c *chunk, kept bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c.storing, c.cached, c.given = false, true, kept
	if c.refs > 0 {
		return false
	}
	delete(f.chunks, c.index)
	c.released = true
	return true
}

// _progress wakes every writer of the file.
func (f *file) _progress() {
	close(f.progress)
	f.progress = make(chan struct{})
}

// _broadcast wakes the dispatcher of every stream of the file, and whoever waits for a change.
func (f *file) _broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}
