package engine

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Live lets a caller look at a stream while it plays, for a status page: give Request.Live a new one.
type Live struct {
	mu   sync.Mutex      // protects look
	look func() Progress // the stream's, while it plays
}

// Progress is a stream at one moment.
type Progress struct {
	Written  int64             // bytes written to the player
	Ahead    int64             // bytes in hand past the player's next one, without a gap: its read-ahead
	Retries  int               // pieces asked again after a failure
	Replaced int               // requests raced or asked again for being slow
	Requests []RequestProgress // the upstream requests open now, in file order
}

// RequestProgress is one open upstream request.
type RequestProgress struct {
	Start, End int64         // the bytes it works on, End inclusive
	Bytes      int64         // bytes it has read
	Speed      float64       // bytes/s over its last second, or since its answer when younger
	Waiting    time.Duration // how long it has waited for its answer; 0 once answered
	Mirror     int           // the mirror it asks, 1-based; 0 is the link itself
	URL        string        // the URL it asks (after redirects): secrets in its query included
}

// Progress is the stream's progress now; the zero Progress before it starts and after it ends.
func (l *Live) Progress() Progress {
	look := l.looker()
	if look == nil {
		return Progress{}
	}
	return look() // outside l.mu: it takes the stream's own lock
}

func (l *Live) looker() func() Progress {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.look
}

func (l *Live) set(look func() Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.look = look
}

// progress is the stream's Progress, taken under the file's lock.
func (s *stream) progress() Progress {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	p := Progress{Written: s.written - s.span.Start, Ahead: s._ahead(), Retries: s.retries, Replaced: s.replaced}
	now := time.Now()
	for _, f := range s._open() {
		m := f.meter
		p.Requests = append(p.Requests, RequestProgress{Start: f.pos - m.Bytes(), End: f.claim - 1, Bytes: m.Bytes(), Speed: m.Speed(now),
			Waiting: m.Waiting(now), Mirror: f.mirror, URL: s._targetOf(f).URL})
	}
	slices.SortFunc(p.Requests, func(a, b RequestProgress) int { return cmp.Compare(a.Start, b.Start) })
	return p
}

// _ahead is how many bytes past the player's next one the stream's chunks hold without a gap.
func (s *stream) _ahead() int64 {
	pos := s.written
	for _, c := range s.window {
		for _, p := range c.pieces {
			switch {
			case p.end <= pos:
				continue
			case p.start > pos || p.filled <= pos:
				return pos - s.written
			}
			if pos = p.filled; pos < p.end {
				return pos - s.written
			}
		}
	}
	return pos - s.written
}
