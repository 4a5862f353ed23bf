// Package budget is the engine's memory policy: how far each stream may read ahead when every stream and
// the memory cache share one budget (--max-memory), and how much room that leaves the cache. It holds no
// state, no lock and no clock: the engine feeds it figures and applies its answers.
package budget

// Buffers is the part of the budget total that chunks may take, the streams' and the memory cache's
// together: a quarter is left for what comes and goes beside them (each request's read buffer, chunk
// buffers freed and not yet collected, an RPC answer being built), so the process stays near total.
func Buffers(total int64) int64 { return total - total/4 }

// Ahead is how far ahead of its player a stream may read: what it wants, within an even share of the
// budget among the streams whose players read now (readers, itself among them), and never less than floor,
// a chunk for each of its lanes, so its connections never wait for memory. total 0 is no budget.
func Ahead(total int64, readers int, want, floor int64) int64 {
	if total <= 0 {
		return want
	}
	share := Buffers(total) / int64(max(readers, 1))
	return max(min(want, share), min(want, floor))
}

// Fits reports whether one more chunk may be held beyond a stream's floor: all streams' chunks (held)
// stay within the budget's Buffers. total 0 is no budget.
func Fits(total, held, chunk int64) bool {
	return total <= 0 || held+chunk <= Buffers(total)
}

// CacheRoom is what the memory cache may hold while the streams hold held bytes: its own bound (max), within
// what they leave of the budget's Buffers, so it yields to playing streams and takes the room again when
// they end.
func CacheRoom(total, held, max int64) int64 {
	if total <= 0 {
		return max
	}
	return min(max, Buffers(total)-min(held, Buffers(total)))
}
