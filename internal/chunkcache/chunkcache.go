// Package chunkcache keeps whole chunks so that what mflow fetched once is not fetched again: in memory,
// on disk across restarts, or both. Each is bounded in bytes.
package chunkcache

import (
	"sync/atomic"

	"github.com/maypok86/otter/v2"
)

// Counters are a cache's lookups since it opened, each read and written atomically.
type Counters struct {
	Hits   atomic.Int64 // lookups that found the chunk
	Misses atomic.Int64 // lookups that did not
}

// count records one lookup.
func (c *Counters) count(found bool) {
	if found {
		c.Hits.Add(1)
	} else {
		c.Misses.Add(1)
	}
}

// Memory keeps chunks in memory, bounded in bytes, evicting what is least likely to be asked for again.
type Memory struct {
	Counters Counters // lookups, for metrics

	c *otter.Cache[string, []byte]
}

// NewMemory returns a memory cache of at most maxBytes of chunks.
func NewMemory(maxBytes int64) *Memory {
	return &Memory{c: otter.Must(&otter.Options[string, []byte]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(key string, v []byte) uint32 { return uint32(len(key) + len(v)) },
		// Maintenance runs in the caller, so the bound holds when Put returns and no goroutine is left.
		Executor: func(fn func()) { fn() },
	})}
}

// Get returns the chunk stored under key. The bytes are the cache's: read them, do not keep or change them.
func (m *Memory) Get(key string) ([]byte, bool) {
	data, ok := m.c.GetIfPresent(key)
	m.Counters.count(ok)
	return data, ok
}

// Put stores a copy of data under key.
func (m *Memory) Put(key string, data []byte) {
	m.c.Set(key, append([]byte(nil), data...))
	m.c.CleanUp()
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

// Put stores data under key in each tier.
func (t Tiered) Put(key string, data []byte) {
	if t.Memory != nil {
		t.Memory.Put(key, data)
	}
	if t.Disk != nil {
		t.Disk.Put(key, data)
	}
}
