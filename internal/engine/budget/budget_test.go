package budget

import "testing"

const mib = 1 << 20

func TestAStreamsReadAheadIsItsShareOfTheBudget(t *testing.T) {
	for _, c := range []struct {
		name                string
		total               int64
		readers             int
		want, floor, expect int64
	}{
		{"no budget: what it wants", 0, 16, 64 * mib, 4 * mib, 64 * mib},
		{"alone: what it wants, within the budget", 256 * mib, 1, 64 * mib, 4 * mib, 64 * mib},
		{"alone with a small budget: its buffers", 32 * mib, 1, 64 * mib, 4 * mib, 24 * mib},
		{"16 readers share 128 MiB evenly", 128 * mib, 16, 64 * mib, 4 * mib, 6 * mib},
		{"64 readers: never below its lanes' chunks", 128 * mib, 64, 64 * mib, 4 * mib, 4 * mib},
		{"a share above what it wants: what it wants", 256 * mib, 2, 16 * mib, 4 * mib, 16 * mib},
		{"a floor above what it wants: what it wants", 256 * mib, 200, 2 * mib, 4 * mib, 2 * mib},
		{"no reader counted yet: as alone", 128 * mib, 0, 64 * mib, 4 * mib, 64 * mib},
	} {
		if got := Ahead(c.total, c.readers, c.want, c.floor); got != c.expect {
			t.Errorf("%s: Ahead = %d MiB, want %d MiB", c.name, got/mib, c.expect/mib)
		}
	}
}

func TestChunksBeyondTheFloorFitTheBudget(t *testing.T) {
	for _, c := range []struct {
		total, held int64
		fits        bool
	}{
		{0, 10 << 30, true},
		{128 * mib, 95 * mib, true},
		{128 * mib, 96 * mib, false},  // a quarter stays for what comes and goes
		{128 * mib, 200 * mib, false}, // first windows and floors may take the streams past it
	} {
		if got := Fits(c.total, c.held, mib); got != c.fits {
			t.Errorf("Fits(%d MiB, %d MiB held) = %v", c.total/mib, c.held/mib, got)
		}
	}
}

func TestTheMemoryCacheYieldsToPlayingStreams(t *testing.T) {
	for _, c := range []struct {
		total, held, max, room int64
	}{
		{0, 500 * mib, 32 * mib, 32 * mib},        // no budget: the cache's own bound
		{128 * mib, 16 * mib, 32 * mib, 32 * mib}, // the streams leave it room
		{128 * mib, 78 * mib, 32 * mib, 18 * mib}, // it yields what they need
		{128 * mib, 150 * mib, 32 * mib, 0},       // down to nothing
	} {
		if got := CacheRoom(c.total, c.held, c.max); got != c.room {
			t.Errorf("CacheRoom(%d, %d held, max %d) = %d MiB, want %d MiB", c.total/mib, c.held/mib, c.max/mib, got/mib, c.room/mib)
		}
	}
}
