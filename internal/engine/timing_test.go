package engine_test

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/upstreamtest"
)

// timedStream streams the whole file from an in-memory upstream inside a synctest bubble, where the
// upstream's throttling and stalls and the engine's timers all run on the bubble's clock. It returns the
// stream's stats, the time it took on that clock, and the Range of every request the upstream saw.
func timedStream(t *testing.T, file []byte, chunk int64, conns int, tune func(*engine.Engine), fault func(n int64, rng string) upstreamtest.Fault) (engine.Stats, time.Duration, []string) {
	var stats engine.Stats
	var took time.Duration
	var mu sync.Mutex
	var ranges []string
	synctest.Test(t, func(t *testing.T) {
		u := upstreamtest.NewInMemory(file, upstreamtest.Options{Fault: func(n int64, r *http.Request) upstreamtest.Fault {
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			mu.Unlock()
			return fault(n, r.Header.Get("Range"))
		}})
		e := newEngine(t, u, chunk, conns)
		if tune != nil {
			tune(e)
		}
		span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
		began := time.Now()
		got, s, err := stream(t, e, engine.Job{Target: target(u), Span: span})
		took, stats = time.Since(began), s
		u.Close()
		e.Client.CloseIdleConnections()
		if err != nil {
			t.Fatal(err)
		}
		checkBytes(t, got, file, span)
	})
	return stats, took, ranges
}

func TestStalledConnectionIsReplacedAfterTenSeconds(t *testing.T) {
	stats, took, _ := timedStream(t, upstreamtest.RandomFile(300_000), 1<<20, 1, nil, func(n int64, _ string) upstreamtest.Fault {
		if n == 1 {
			return upstreamtest.Fault{StallAfter: 1000}
		}
		return upstreamtest.Fault{}
	})
	if took < 10*time.Second || took > 12*time.Second {
		t.Errorf("took %v, want the 10 s stall timeout and little more", took)
	}
	if stats.Retries != 1 {
		t.Errorf("%d retries, want 1", stats.Retries)
	}
}

func TestSlowConnectionIsReplacedAfterThreeSamples(t *testing.T) {
	stats, took, ranges := timedStream(t, upstreamtest.RandomFile(1<<20), 1<<20, 1, func(e *engine.Engine) { e.MinSpeed = 100 << 10 },
		func(n int64, _ string) upstreamtest.Fault {
			if n == 1 {
				return upstreamtest.Fault{Rate: 10 << 10}
			}
			return upstreamtest.Fault{}
		})
	if took < 3*time.Second || took >= 4*time.Second {
		t.Errorf("took %v, want three one-second samples below --min-speed, then the rest at once", took)
	}
	if stats.Retries != 1 || len(ranges) != 2 || ranges[1] == ranges[0] {
		t.Errorf("%d retries, ranges %q: want one fresh request resuming where the slow one stopped", stats.Retries, ranges)
	}
}

func TestSlowConnectionIsKeptWithoutMinSpeed(t *testing.T) {
	stats, took, _ := timedStream(t, upstreamtest.RandomFile(100<<10), 1<<20, 1, nil, func(int64, string) upstreamtest.Fault {
		return upstreamtest.Fault{Rate: 20 << 10}
	})
	if stats.Retries != 0 || took < 4*time.Second {
		t.Errorf("%d retries in %v: a slow but steady connection must be kept when --min-speed is 0", stats.Retries, took)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	_, took, _ := timedStream(t, upstreamtest.RandomFile(100_000), 1<<20, 1, nil, func(n int64, _ string) upstreamtest.Fault {
		if n == 1 {
			return upstreamtest.Fault{Status: http.StatusServiceUnavailable, RetryAfter: "3"}
		}
		return upstreamtest.Fault{}
	})
	if took < 3*time.Second || took > 4*time.Second {
		t.Errorf("took %v, want the 3 s the upstream asked for", took)
	}
}

func TestLaggingHeadIsRacedOnAnotherConnection(t *testing.T) {
	var once sync.Once
	stats, took, ranges := timedStream(t, upstreamtest.RandomFile(1<<20), 256<<10, 2, func(e *engine.Engine) { e.StallTimeout = time.Minute },
		func(_ int64, rng string) upstreamtest.Fault {
			var f upstreamtest.Fault
			if strings.HasPrefix(rng, "bytes=0-") {
				once.Do(func() { f = upstreamtest.Fault{StallAfter: 1000} })
			}
			return f
		})
	if took > 5*time.Second {
		t.Errorf("took %v: the stalled head was not raced on another connection", took)
	}
	if !slices.Contains(ranges, "bytes=1000-262143") {
		t.Errorf("no request for the rest of the head in %q", ranges)
	}
	if stats.Retries != 0 {
		t.Errorf("%d retries; a race is not a retry", stats.Retries)
	}
}

func TestIdleConnectionTakesHalfOfASlowPiece(t *testing.T) {
	_, took, ranges := timedStream(t, upstreamtest.RandomFile(2<<20), 1<<20, 2, nil, func(_ int64, rng string) upstreamtest.Fault {
		if strings.HasPrefix(rng, "bytes=0-") {
			return upstreamtest.Fault{Rate: 128 << 10} // the first chunk's connection is slow throughout
		}
		return upstreamtest.Fault{}
	})
	// One connection alone would need 8 s for the first chunk; halving it again and again takes ~2 s.
	if took > 4*time.Second {
		t.Errorf("took %v: idle connections did not take over half of the slow piece", took)
	}
	split := 0
	for _, r := range ranges {
		if !strings.HasPrefix(r, "bytes=0-") && !strings.HasPrefix(r, "bytes=1048576-") {
			split++
		}
	}
	if split == 0 {
		t.Errorf("no request started inside a chunk: %q", ranges)
	}
}

func TestTheHeadsFailedRequestIsTriedOnAnIdleConnectionMeanwhile(t *testing.T) {
	for _, c := range []struct {
		fault  upstreamtest.Fault
		hedged bool
	}{
		{upstreamtest.Fault{Shift: -1}, true},                              // a wrong answer: another connection tries at once
		{upstreamtest.Fault{Status: http.StatusServiceUnavailable}, false}, // the upstream asked to wait: nobody hurries it
	} {
		var once sync.Once
		_, took, _ := timedStream(t, upstreamtest.RandomFile(512<<10), 256<<10, 2, func(e *engine.Engine) { e.RetryBase = 4 * time.Second },
			func(_ int64, rng string) upstreamtest.Fault {
				var f upstreamtest.Fault
				if strings.HasPrefix(rng, "bytes=262144-") {
					once.Do(func() { f = c.fault })
				}
				return f
			})
		if c.hedged && took > time.Second {
			t.Errorf("after a wrong answer the player waited %v: its piece waited out the back-off", took)
		}
		if !c.hedged && took < 2*time.Second {
			t.Errorf("after a 503 the piece was asked again after %v: the back-off was not waited out", took)
		}
	}
}
