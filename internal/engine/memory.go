package engine

import (
	"time"

	"mflow/internal/engine/budget"
)

// idleAfter is how long a player may take nothing and still count as reading: a stream whose player
// paused longer leaves its share of the budget to the others.
const idleAfter = 5 * time.Second

// begin counts a stream among those playing now.
func (e *Engine) begin(s *stream) {
	s.lastRead.Store(time.Now().UnixNano())
	e.liveMu.Lock()
	defer e.liveMu.Unlock()
	if e.live == nil {
		e.live = map[*stream]struct{}{}
	}
	e.live[s] = struct{}{}
}

// end counts a stream out, once its player is done with it.
func (e *Engine) end(s *stream) {
	e.liveMu.Lock()
	defer e.liveMu.Unlock()
	delete(e.live, s)
}

// readers is how many streams' players took bytes within idleAfter of now.
func (e *Engine) readers(now time.Time) int {
	e.liveMu.Lock()
	defer e.liveMu.Unlock()
	n := 0
	for s := range e.live {
		if now.Sub(time.Unix(0, s.lastRead.Load())) < idleAfter {
			n++
		}
	}
	return n
}

// Withheld is the read-ahead the streams playing now want beyond what the budget gives them.
func (e *Engine) Withheld() int64 {
	e.liveMu.Lock()
	defer e.liveMu.Unlock()
	var n int64
	for s := range e.live {
		n += s.withheld.Load()
	}
	return n
}

// yieldCache gives the memory cache the room the streams leave of the budget. Called without a file's
// lock: the cache evicts in the caller.
func (e *Engine) yieldCache() {
	if e.CacheRoom != nil && e.MaxMemory > 0 {
		e.CacheRoom(budget.CacheRoom(e.MaxMemory, e.held.Load(), e.MaxMemory))
	}
}
