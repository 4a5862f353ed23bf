package engine_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"mflow/internal/engine"
	"mflow/internal/engine/limit"
	"mflow/internal/httprange"
	"mflow/internal/upstreamtest"
)

// limitedPlay plays all of file at -c 4 from an in-memory drive that allows two requests of it at once (2
// MB/s each, 50 ms away), refusing one more with refuse, inside a synctest bubble. It returns the drive
// and how long the play took on the bubble's clock.
func limitedPlay(t *testing.T, e *engine.Engine, u *upstreamtest.Upstream, file []byte, key string) time.Duration {
	t.Helper()
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	began := time.Now()
	streamOK(t, e, engine.Job{Target: target(u), Span: span, FileKey: key}, file)
	return time.Since(began)
}

// drive is an in-memory drive allowing two requests of the file at once.
func drive(file []byte, lim *upstreamtest.DriveLimit) *upstreamtest.Upstream {
	return upstreamtest.NewInMemory(file, upstreamtest.Options{PerConn: 2e6, Latency: 50 * time.Millisecond, Limit: lim})
}

func TestARefusedExtraRequestIsTheDrivesLimit(t *testing.T) {
	file := upstreamtest.RandomFile(8 << 20)
	for _, refuse := range []struct {
		name       string
		status     int
		retryAfter string
	}{{"403", http.StatusForbidden, ""}, {"429", http.StatusTooManyRequests, ""}, {"503", http.StatusServiceUnavailable, ""}, {"reset", 0, ""}} {
		t.Run(refuse.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// Risk control: a third refusal bans the file for a minute, as drives do to clients that
				// keep trying.
				lim := &upstreamtest.DriveLimit{PerFile: 2, Refuse: refuse.status, BanAfter: 3, BanFor: time.Minute}
				u := drive(file, lim)
				defer u.Close()
				e := newEngine(t, u, 256<<10, 4)
				e.Drives = engine.NewDrives(nil)
				took := limitedPlay(t, e, u, file, "film")
				if n := lim.Refused(); n > 2 {
					t.Errorf("%d refused requests in a play whose limit was unknown, want at most 2", n)
				}
				if n := lim.MaxServing(); n > 2 {
					t.Errorf("%d requests served at once by a drive that allows 2", n)
				}
				// Against a play at -c 2 from the same drive without a limit: the refusals cost about a request.
				free := drive(file, nil)
				defer free.Close()
				two := newEngine(t, free, 256<<10, 2)
				if ref := limitedPlay(t, two, free, file, "film"); took > ref+ref/10 {
					t.Errorf("took %v; a play at -c 2 takes %v", took, ref)
				}
				st := e.Drives.States()
				if len(st) != 1 || st[0].Limit != 2 || !st[0].Learned {
					t.Errorf("the drive's state: %+v, want a learned limit of 2", st)
				}
				// The next play of the file, and of another file of the drive, start within it.
				before := lim.Refused()
				limitedPlay(t, e, u, file, "film")
				u2 := drive(file, &upstreamtest.DriveLimit{PerFile: 2, Refuse: refuse.status})
				defer u2.Close()
				e.Client = newEngine(t, u2, 256<<10, 4).Client
				limitedPlay(t, e, u2, file, "another film")
				if n := lim.Refused() - before; n != 0 {
					t.Errorf("%d refused requests in a later play of the file, want 0", n)
				}
			})
		})
	}
}

func TestRetryAfterQuietsTheWholeDrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(2 << 20)
		lim := &upstreamtest.DriveLimit{PerFile: 2, Refuse: http.StatusTooManyRequests, RetryAfter: "5"}
		u := drive(file, lim)
		defer u.Close()
		e := newEngine(t, u, 256<<10, 4)
		e.Drives = engine.NewDrives(nil)
		var last atomic.Int64
		e.Observe = func(d engine.RequestDone) {
			if d.Status == http.StatusTooManyRequests {
				last.Store(time.Now().UnixNano())
			}
		}
		took := limitedPlay(t, e, u, file, "film")
		// 2 MiB over two connections is half a second; the 429's Retry-After holds every request 5 s.
		if took < 5*time.Second {
			t.Errorf("took %v: requests went to the drive before its Retry-After of 5 s ended", took)
		}
		if lim.Refused() > 2 {
			t.Errorf("%d refusals", lim.Refused())
		}
	})
}

func TestAnExpiredLinkIsResolvedAgainNotTakenForALimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(2 << 20)
		var current atomic.Int64
		current.Store(1)
		u := upstreamtest.NewInMemory(file, upstreamtest.Options{PerConn: 2e6, Latency: 50 * time.Millisecond, Fault: func(n int64, r *http.Request) upstreamtest.Fault {
			if n == 6 {
				current.Store(2) // every request of the old signature is refused from now on
			}
			if r.URL.Query().Get("sig") != fmt.Sprint(current.Load()) {
				return upstreamtest.Fault{Status: http.StatusForbidden}
			}
			return upstreamtest.Fault{}
		}})
		defer u.Close()
		e := newEngine(t, u, 128<<10, 4)
		e.Drives = engine.NewDrives(nil)
		tgt, refresh, refreshes := signedLink(u, &current)
		span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
		streamOK(t, e, engine.Job{Target: tgt, Span: span, Refresh: refresh}, file)
		if refreshes.Load() == 0 {
			t.Error("the expired link was not resolved again")
		}
		for _, st := range e.Drives.States() {
			if st.Learned && st.Limit < 2 {
				t.Errorf("an expired link was taken for a limit of %d", st.Limit)
			}
		}
	})
}

func TestAKnownDriveStartsWithinItsLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(2 << 20)
		lim := &upstreamtest.DriveLimit{PerFile: 2, Refuse: http.StatusForbidden}
		u := drive(file, lim)
		defer u.Close()
		e := newEngine(t, u, 256<<10, 4)
		e.Drives = engine.NewDrives([]limit.Rule{{Suffix: "upstream.test", PerFile: 2}})
		limitedPlay(t, e, u, file, "film")
		if lim.Refused() != 0 || lim.MaxServing() != 2 {
			t.Errorf("a drive configured at 2: %d refusals, %d served at once", lim.Refused(), lim.MaxServing())
		}
	})
}

func TestASeekStormNeverPassesTheLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := upstreamtest.RandomFile(32 << 20)
		lim := &upstreamtest.DriveLimit{PerFile: 2, Refuse: http.StatusForbidden, BanAfter: 3, BanFor: time.Minute}
		u := drive(file, lim)
		defer u.Close()
		e := newEngine(t, u, 256<<10, 4)
		e.Drives = engine.NewDrives(nil)
		// A TV app scrubbing: 20 seeks in 10 s, each a new player request that reads a little and leaves.
		for i := range 20 {
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			start := int64(i) * (1 << 20)
			span := httprange.Span{Start: start, End: int64(len(file)) - 1}
			w := &limitWriter{left: 256 << 10}
			e.Stream(ctx, w, engine.Job{Target: target(u), Span: span, FileKey: "film"})
			cancel()
		}
		if n := lim.Refused(); n > 2 {
			t.Errorf("%d refused requests in a seek storm, want at most the 2 that taught the limit", n)
		}
		if n := lim.MaxServing(); n > 2 {
			t.Errorf("%d requests served at once in a seek storm, over the drive's 2", n)
		}
	})
}

// limitWriter takes left bytes, then fails as a player that went away.
type limitWriter struct{ left int }

func (w *limitWriter) Write(b []byte) (int, error) {
	if w.left <= 0 {
		return 0, fmt.Errorf("player left")
	}
	n := min(len(b), w.left)
	w.left -= n
	return n, nil
}
