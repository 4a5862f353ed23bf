package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"mflow/internal/bytesize"
	"mflow/internal/chunkcache"
	"mflow/internal/engine/budget"
)

// defaultMaxMemory is --max-memory's default: a quarter of a 1 GB box, beside a media server. It holds 4
// streams at the default read-ahead, and 64 streams at a chunk per connection each.
const defaultMaxMemory = 256 << 20

// runtimeRoom is what mflow holds besides its buffers: the Go runtime, goroutines, connections' buffers.
const runtimeRoom = 16 << 20

// cacheBeyondBudget says why --cache-size cannot be reached within --max-memory, or "" when it can.
func cacheBeyondBudget(o options) string {
	if !o.cache || o.MaxMemory <= 0 || o.cacheSize <= budget.Buffers(o.MaxMemory) {
		return ""
	}
	return fmt.Sprintf("--cache-size %s cannot be reached: the memory cache and the streams share %s of --max-memory %s; raise --max-memory to %dM or more to give the cache its size",
		bytesize.Format(o.cacheSize), bytesize.Format(budget.Buffers(o.MaxMemory)), bytesize.Format(o.MaxMemory), ((o.cacheSize+o.ReadAhead)*4/3+1<<20-1)>>20)
}

// memoryText is the start-up line's word on memory.
func memoryText(o options) string {
	if o.MaxMemory <= 0 {
		return "no bound (--max-memory 0)"
	}
	return bytesize.Format(o.MaxMemory) + " for buffers (--max-memory)"
}

// cacheText is the start-up line's word on the chunk caches: which are on, their sizes and where.
func cacheText(o options) string {
	var tiers []string
	if o.cache {
		tiers = append(tiers, bytesize.Format(o.cacheSize)+" in memory")
	}
	if o.cacheDir != "" {
		tiers = append(tiers, bytesize.Format(o.cacheDirSize)+" on disk in "+o.cacheDir)
	}
	if len(tiers) == 0 {
		return "none (--cache, --cache-dir)"
	}
	return strings.Join(tiers, ", ")
}

// setMemoryLimit sets the Go runtime's soft memory limit from the budget, so the GC works harder rather
// than the process grows past it: freed chunk buffers would otherwise wait for a heap twice as large.
// GOMEMLIMIT, when set, wins.
func setMemoryLimit(o options, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" || o.MaxMemory <= 0 {
		return
	}
	limit := o.MaxMemory + runtimeRoom
	debug.SetMemoryLimit(limit)
	log.Debug("soft memory limit", "bytes", bytesize.Human(float64(limit)))
}

// openCache opens the chunk caches the flags ask for; either tier may be nil.
func openCache(o options, log *slog.Logger) (chunkcache.Tiered, error) {
	var tiers chunkcache.Tiered
	if o.cache {
		tiers.Memory = chunkcache.NewMemory(o.cacheSize)
	}
	if o.cacheDir != "" {
		d, err := chunkcache.OpenDisk(o.cacheDir, o.cacheDirSize, log)
		if err != nil {
			return tiers, err
		}
		tiers.Disk = d
	}
	return tiers, nil
}
