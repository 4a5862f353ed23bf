package engine_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/mediaindex"
	"mflow/internal/upstreamtest"
)

// tailIndexedMP4 is a film of size bytes as many on drives are: ftyp, mdat, then its moov of index bytes.
func tailIndexedMP4(size, index int) (film []byte, moov int64) {
	film = upstreamtest.RandomFile(size)
	binary.BigEndian.PutUint32(film, 32)
	copy(film[4:], "ftypisom")
	binary.BigEndian.PutUint32(film[32:], uint32(size-index-32))
	copy(film[36:], "mdat")
	moov = int64(size - index)
	binary.BigEndian.PutUint32(film[moov:], uint32(index))
	copy(film[moov+4:], "moov")
	return film, moov
}

// recorded is an upstream's requests, with when they came.
type recorded struct {
	mu   sync.Mutex
	reqs []struct {
		at   time.Time
		span httprange.Span
	}
}

func (r *recorded) fault(_ int64, req *http.Request) upstreamtest.Fault {
	var a, b int64
	fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-%d", &a, &b)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, struct {
		at   time.Time
		span httprange.Span
	}{time.Now(), httprange.Span{Start: a, End: b}})
	return upstreamtest.Fault{}
}

// since is how many requests came at or after t, and how many of those asked for a byte of [from, to].
func (r *recorded) since(t time.Time, from, to int64) (all, within int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, q := range r.reqs {
		if !q.at.Before(t) {
			all++
			if q.span.Start <= to && from <= q.span.End {
				within++
			}
		}
	}
	return all, within
}

// openFilm plays the film as mpv opens one whose index is at its end: the head, then the index, then back
// to the mdat's start; it returns when each of the three plays began.
func openFilm(t *testing.T, e *engine.Engine, u *upstreamtest.Upstream, film []byte, moov int64) (began [3]time.Time) {
	for i, c := range []struct {
		from int64
		read int64
	}{{0, 64 << 10}, {moov, int64(len(film)) - moov}, {40, 256 << 10}} {
		began[i] = time.Now()
		ctx, leave := context.WithCancel(t.Context())
		w := &leavingWriter{after: c.read, leave: leave}
		e.Stream(ctx, w, engine.Job{Target: target(u), FileKey: "film", Span: httprange.Span{Start: c.from, End: int64(len(film)) - 1}})
		leave()
		if w.got < c.read {
			t.Fatalf("the play from %d read %d bytes, want %d", c.from, w.got, c.read)
		}
	}
	return began
}

func TestAFilmsIndexAtItsEndIsFetchedWithItsHead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		film, moov := tailIndexedMP4(64<<20, 3<<20)
		rec := &recorded{}
		opts := upstreamtest.DriveModels(2e6)[1].Opts // 150 ms
		opts.Fault = rec.fault
		u := upstreamtest.NewInMemory(film, opts)
		defer u.Close()
		e := newEngine(t, u, 1<<20, 4)
		e.IndexOf = mediaindex.Locate
		began := openFilm(t, e, u, film, moov)
		e.Client.CloseIdleConnections()
		if _, within := rec.since(began[0], moov, int64(len(film))-1); within == 0 {
			t.Fatal("nobody asked for the index")
		}
		if _, within := rec.since(began[1], moov, int64(len(film))-1); within != 0 {
			t.Errorf("%d requests for the index after the player asked for it: it was not fetched with the head", within)
		}
		if _, within := rec.since(began[2], 40, 40+256<<10-1); within != 0 {
			t.Errorf("the return to the mdat asked the drive %d times for what it read: the head was not held", within)
		}
		if n := u.MaxOpen(); n > 4 {
			t.Errorf("%d requests open at once with -c 4", n)
		}
	})
}

// playFrontIndexedFilm plays a 64 MiB film indexed in front from its head, over a 150 ms drive, until the
// player read the given bytes and left; it returns the drive's requests, when the play began, and the
// most requests it had open at once.
func playFrontIndexedFilm(t *testing.T, read int64) (rec *recorded, began time.Time, maxOpen int64) {
	film := upstreamtest.RandomFile(64 << 20)
	binary.BigEndian.PutUint32(film, 32)
	copy(film[4:], "ftypisom")
	binary.BigEndian.PutUint32(film[32:], 2<<20)
	copy(film[36:], "moov")
	rec = &recorded{}
	u := upstreamtest.NewInMemory(film, upstreamtest.Options{Fault: rec.fault, PerConn: 2e6, Latency: 150 * time.Millisecond})
	defer u.Close()
	e := newEngine(t, u, 1<<20, 4)
	e.IndexOf = mediaindex.Locate
	began = time.Now()
	ctx, leave := context.WithCancel(t.Context())
	e.Stream(ctx, &leavingWriter{after: read, leave: leave}, engine.Job{Target: target(u), Span: httprange.Span{Start: 0, End: int64(len(film)) - 1}})
	leave()
	e.Client.CloseIdleConnections()
	return rec, began, u.MaxOpen()
}

func TestNoIndexIsFetchedAheadWhenItIsAtTheHead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec, began, _ := playFrontIndexedFilm(t, 3<<20)
		if all, tail := rec.since(began, 48<<20, 64<<20-1); tail != 0 {
			t.Errorf("%d of %d requests went to the last 16 MiB of a film indexed in front, where a film indexed at its end keeps its index", tail, all)
		}
	})
}

func TestAPlayFromTheHeadOfAFilmIndexedInFrontUsesEveryLaneAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec, began, maxOpen := playFrontIndexedFilm(t, 1<<20)
		// A seek's first window is a chunk per lane but one, kept until it is read; a play that opens a
		// film at its head reads on, and its fourth lane brings the fourth chunk instead of idling.
		if all, fourth := rec.since(began, 3<<20, 4<<20-1); fourth == 0 {
			t.Errorf("none of %d requests asked for the fourth chunk while the player read the first", all)
		}
		if maxOpen > 4 {
			t.Errorf("%d requests open at once with -c 4", maxOpen)
		}
	})
}
