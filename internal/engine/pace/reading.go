package pace

import "time"

// How far ahead a stream reads, and how much a request asks for. A seek costs what it reads: a stream
// starts with requests of one chunk and a first window of a chunk fewer than it has lanes (two at least;
// the free lane races, hedges, or fetches a film's index), which stays where it is until the player took
// all of it, so a player that reads a couple of MiB and jumps elsewhere (mpv does on every seek) made a
// request per chunk it needed and none for bytes beyond what it read. Each
// request costs a round trip in which its connection brings nothing, and no lane may open a second one
// meanwhile; so once the player read past its first window, the requests grow: growth times longer at each
// round of requests done while it reads on, up to what the read-ahead bound allows; and the read-ahead
// grows with them, to hold a request per lane and a chunk each more.

// growth is how much longer requests get at each round.
const growth = 4

// Read tells the policy the player took n more bytes, and reports whether the requests, and the
// read-ahead, grew.
func (s *Pacer) Read(n int64) (grew bool) {
	s.read += n
	return s.grow()
}

// settle is the longest a stream waits, once its player took all of its first window, before it reads on.
const settle = 20 * time.Millisecond

// Settle is how long a stream waits, once its player took all of its first window, before it asks for
// more: the socket buffers between take a window's last bytes before the player reads them, and a player
// that wanted only those (a seek) is seen gone within its own round trip, before any request is spent on
// bytes it never reads. Never longer than a first-byte wait: no longer than the request it may save.
func (s *Pacer) Settle() time.Duration {
	if s.firstByte > 0 {
		return min(settle, s.firstByte)
	}
	return settle
}

// Opened reports whether the read-ahead slides with the player: it took all of its first window.
func (s *Pacer) Opened() bool { return s.opened }

// FirstWindowRead tells the policy that the player took every byte of its first window and reads on: the
// read-ahead slides with it from now on. It reports whether the requests, and the read-ahead, grew.
func (s *Pacer) FirstWindowRead() (grew bool) {
	s.opened = true
	return s.grow()
}

// ReadsOn tells the policy that the player opened the file at its head and the head told there is nothing
// to fetch elsewhere first (another kind of file, or a film indexed in front): a player reads on from
// there, so the read-ahead slides with it from now, a chunk per lane, and no lane waits for the first
// window to be read. A seek starts elsewhere and keeps its first window.
func (s *Pacer) ReadsOn() {
	if s.opened {
		return
	}
	s.opened = true
	s.ahead = max(s.ahead, int64(s.cfg.Lanes)*s.cfg.Chunk)
}

// Finished tells the policy that a request brought all it claimed, and reports whether the requests, and
// the read-ahead, grew.
func (s *Pacer) Finished() (grew bool) {
	s.done++
	return s.grow()
}

// grow makes the requests longer once a round of them is done, the player read all of its first window (a
// seek's worth) and read on since they last grew: a player that stopped reading holds the read-ahead where
// it is.
func (s *Pacer) grow() bool {
	if 2*s.done < s.cfg.Lanes || s.read == s.readAtGrowth || !s.opened || s.extent >= s.maxExtent() {
		return false
	}
	s.done, s.readAtGrowth = 0, s.read
	s.extent = min(growth*s.extent, s.maxExtent())
	s.ahead = s.aheadFor(s.extent)
	return true
}

// Ahead is how far ahead of the player the stream reads now: it holds the chunks of those bytes. Until
// the player took its first window, that window stays where the stream started.
func (s *Pacer) Ahead() int64 {
	if !s.opened {
		return max(s.ahead-s.read, 0)
	}
	return s.ahead
}

// ExtentAt is how many bytes a new request asks for when it starts distance bytes ahead of the player and
// left bytes of the player's range are still to come, whoever brings them: the extent; but no more than a
// part of its distance ahead, so that a player reading as fast as the stream brings bytes finds them ready
// in order (half of it: a lane brings its bytes at a fraction of the stream's speed); and near the end its
// lane's share of what is left, so the lanes finish together. In the nearest whole chunks: rounded up, the
// last long requests each ran up to a chunk longer than their share (half a second at 2 MB/s) while the
// lanes after them idled at the end.
func (s *Pacer) ExtentAt(distance, left int64) int64 {
	e := min(left/int64(s.cfg.Lanes), distance/2)
	e = (e + s.cfg.Chunk/2) / s.cfg.Chunk * s.cfg.Chunk // the nearest whole chunks
	return min(max(e, s.cfg.Chunk), s.extent)
}

// maxExtent is the longest request the read-ahead bound allows: one per lane, and a chunk each more.
func (s *Pacer) maxExtent() int64 {
	lanes := int64(s.cfg.Lanes)
	per := (s.cfg.MaxAhead - lanes*s.cfg.Chunk) / lanes
	return max(per/s.cfg.Chunk, 1) * s.cfg.Chunk
}

// aheadFor is the read-ahead that requests of extent bytes want: one per lane in flight and a chunk each
// more, within MaxAhead.
func (s *Pacer) aheadFor(extent int64) int64 {
	return min(int64(s.cfg.Lanes)*(extent+s.cfg.Chunk), s.cfg.MaxAhead)
}

// firstWindow is how far ahead a stream reads at its start: a chunk per lane but one, and two at least.
func (s *Pacer) firstWindow() int64 {
	return int64(max(s.cfg.Lanes-1, 2)) * s.cfg.Chunk
}
