// Package chunkcache keeps whole chunks so that what mflow fetched once is not fetched again: in memory,
// on disk across restarts, or both. Each is bounded in bytes.
package chunkcache

import (
	"sync/atomic"

	"github.com/maypok86/otter/v2"
)

// Lookups are a cache's lookups since it opened, each read and written atomically.
type Lookups struct {
	Hits   atomic.Int64 // lookups that found the chunk
	Misses atomic.Int64 // lookups that did not
}

// count records one lookup.
func (c *Lookups) count(found bool) {
	if found {
		c.Hits.Add(1)
	} else {
		c.Misses.Add(1)
	}
}

// Memory keeps chunks in memory, bounded in bytes, evicting what is least likely to be asked for again.
type Memory struct {
	Lookups Lookups // lookups, for metrics

	c    *otter.Cache[string, []byte]
	max  int64        // its own bound (--cache-size)
	room atomic.Int64 // what it may hold now, within max: less while playing streams need the budget
}

// NewMemory returns a memory cache of at most maxBytes of chunks.
func NewMemory(maxBytes int64) *Memory {
	m := &Memory{max: maxBytes}
	m.room.Store(maxBytes)
	m.c = otter.Must(&otter.Options[string, []byte]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(key string, v []byte) uint32 { return uint32(len(key) + len(v)) },
		// Maintenance runs in the caller, so the bound holds when Put returns and no goroutine is left.
		Executor: func(fn func()) { fn() },
	})
	return m
}

// Yield lets the cache hold room bytes from now on, within its own bound: it gives memory to playing
// streams when they need the budget (--max-memory), evicting what it must, and takes it back after.
func (m *Memory) Yield(room int64) {
	room = min(max(room, 0), m.max)
	if m.room.Swap(room) != room {
		m.c.SetMaximum(uint64(room))
	}
}

// Room is what the cache may hold now: its bound, or less while it yields to playing streams.
func (m *Memory) Room() int64 { return m.room.Load() }

// Get returns the chunk stored under key. The bytes are the cache's: read them, do not keep or change them.
func (m *Memory) Get(key string) ([]byte, bool) {
	data, ok := m.c.GetIfPresent(key)
	m.Lookups.count(ok)
	return data, ok
}

// Put stores data under key as it is, and reports whether it kept it: then the caller never writes those
// bytes again nor reuses their buffer (engine.Cache). While the cache yields all its room to playing
// streams, it keeps nothing.
func (m *Memory) Put(key string, data []byte) (kept bool) {
	if m.room.Load() < int64(len(data)) {
		return false
	}
	m.c.Set(key, data)
	m.c.CleanUp()
	return true
}

// Bytes is the weight of what the cache holds now.
func (m *Memory) Bytes() int64 { return int64(m.c.WeightedSize()) }

// Tiered asks the memory cache first, then the disk cache, and keeps new chunks in both. Either may be nil.
type Tiered struct {
	Memory *Memory
	Disk   *Disk
}

// Get returns the chunk stored under key; a chunk found on disk is kept in memory too.
func (t Tiered) Get(key string) ([]byte, bool) {
	if t.Memory != nil {
		if data, ok := t.Memory.Get(key); ok {
			return data, true
		}
	}
	if t.Disk != nil {
		if data, ok := t.Disk.Get(key); ok {
			if t.Memory != nil {
				t.Memory.Put(key, data)
			}
			return data, true
		}
	}
	return nil, false
}

// Put stores data under key in each tier, and reports whether the memory tier kept it (see Memory.Put).
func (t Tiered) Put(key string, data []byte) (kept bool) {
	if t.Disk != nil {
		t.Disk.Put(key, data) // first: once the memory tier keeps data, it is the cache's
	}
	if t.Memory != nil {
		kept = t.Memory.Put(key, data)
	}
	return kept
}
