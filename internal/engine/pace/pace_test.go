package pace

import (
	"math"
	"testing"
	"time"
)

const mib = 1 << 20

var t0 = time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)

// feed is one request's bytes over time: how many it brings in each 10 ms step from its answer on.
type feed func(step int) int

// steady brings rate bytes/s evenly.
func steady(rate float64) feed {
	return func(int) int { return int(rate / 100) }
}

// bursts brings a second's worth of rate bytes at once, every second, as nginx's limit_rate does.
func bursts(rate float64) feed {
	return func(step int) int {
		if step%100 == 0 {
			return int(rate)
		}
		return 0
	}
}

// splitBursts is bursts whose last 16 KiB come a step later than the rest: after the route check that
// saw the rest, so that the next check sees only them come in its interval.
func splitBursts(rate float64) feed {
	const tail = 16 << 10
	return func(step int) int {
		switch step % 100 {
		case 4:
			return int(rate) - tail
		case 5:
			return tail
		}
		return 0
	}
}

// silent brings nothing.
func silent(int) int { return 0 }

// slowStart brings what TCP's slow start lets through a path with round trips of rtt: ten packets in the
// first, twice as many in each next one, up to rate.
func slowStart(rate float64, rtt time.Duration) feed {
	return func(step int) int {
		trips := int(time.Duration(step) * 10 * time.Millisecond / rtt)
		perSecond := min(rate, 14600*math.Pow(2, float64(trips))/rtt.Seconds())
		return int(perSecond / 100)
	}
}

// run plays reqs, each answered after 150 ms and fed by its feed, for d, checking routes every
// RouteEvery (with a lane free for a race, or none) and sampling every SampleEvery; it returns each
// request's route and sample verdicts in order (Keep left out), raced marking a request raced from its
// first Race verdict on.
func run(s *Pacer, feeds []feed, d time.Duration, laneFree bool) [][]Verdict {
	vias := make([]Via, len(feeds))
	for i := range vias {
		vias[i] = ViaNew
	}
	return runAnswered(s, feeds, vias, d, laneFree, 150*time.Millisecond)
}

// runAnswered is run with the answers after firstByte, each come as its vias says.
func runAnswered(s *Pacer, feeds []feed, vias []Via, d time.Duration, laneFree bool, firstByte time.Duration) [][]Verdict {
	const step = 10 * time.Millisecond
	answerStep := int(firstByte / step)
	reqs := make([]*Meter, len(feeds))
	raced := make([]bool, len(feeds))
	for i := range reqs {
		reqs[i] = s.Sent(t0)
	}
	got := make([][]Verdict, len(feeds))
	for n := 1; time.Duration(n)*step <= d; n++ {
		now := t0.Add(time.Duration(n) * step)
		for i, r := range reqs {
			if n == answerStep {
				s.Answered(r, now, vias[i])
			}
			if n > answerStep {
				if b := feeds[i](n - answerStep - 1); b > 0 {
					s.Got(r, now, b)
				}
			}
		}
		if n%int(RouteEvery/step) == 0 {
			judged := make([]Judged, len(reqs))
			for i, r := range reqs {
				judged[i] = Judged{Req: r, Left: 64 * mib, Raced: raced[i]}
			}
			for i, v := range s.Routes(now, judged, laneFree) {
				if v != Keep {
					got[i] = append(got[i], v)
					raced[i] = raced[i] || v == Race
				}
			}
		}
		if n%int(SampleEvery/step) == 0 {
			for i, v := range s.Sample(now, reqs) {
				if v != Keep {
					got[i] = append(got[i], v)
				}
			}
		}
	}
	return got
}

func TestBurstsGetNoVerdict(t *testing.T) {
	for name, paced := range map[string]feed{"whole": bursts(2e6), "split over two checks": splitBursts(2e6)} {
		for _, laneFree := range []bool{true, false} {
			s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
			got := run(s, []feed{steady(2e6), paced}, 10*time.Second, laneFree)
			for i, v := range got {
				if len(v) > 0 {
					t.Errorf("%s, lane free %v: request %d got verdicts %v; a server pacing in one-second bursts is not a slow route", name, laneFree, i, v)
				}
			}
		}
	}
}

func TestARouteFiveTimesSlowerIsRacedThenReplaced(t *testing.T) {
	s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	got := run(s, []feed{steady(2e6), steady(0.4e6)}, 3*time.Second, true)
	if len(got[0]) > 0 {
		t.Errorf("the fast request got verdicts %v", got[0])
	}
	if len(got[1]) < 2 || got[1][0] != Race || got[1][1] != Replace {
		t.Errorf("the slow request got %v, want Race then Replace", got[1])
	}
}

func TestARouteFiveTimesSlowerIsReplacedAtOnceWhenNoLaneIsFree(t *testing.T) {
	// Waiting for a lane to race it would keep the slow route holding one of them.
	s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	got := run(s, []feed{steady(2e6), steady(0.4e6)}, 3*time.Second, false)
	if len(got[0]) > 0 {
		t.Errorf("the fast request got verdicts %v", got[0])
	}
	if len(got[1]) == 0 || got[1][0] != Replace {
		t.Errorf("the slow request got %v, want Replace first", got[1])
	}
}

func TestWhereRequestsDoNotRampUpASlowRouteIsJudgedSooner(t *testing.T) {
	// A drive whose requests run at their route's speed from their first bytes: each moment a route ten
	// times slower is kept costs its lane nine tenths of its speed, so it is judged after two first-byte
	// waits, not eight.
	s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	got := run(s, []feed{steady(2e6), steady(0.2e6)}, time.Second, false)
	if len(got[0]) > 0 || len(got[1]) == 0 || got[1][0] != Replace {
		t.Errorf("a second in, the fast request got %v and the slow one %v; want the slow one replaced", got[0], got[1])
	}
	// Over a long path a young request is in TCP's slow start: once one ramped up, every request waits out
	// eight first-byte waits before it is judged.
	s = New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	got = run(s, []feed{slowStart(2e6, 150*time.Millisecond), steady(0.2e6)}, time.Second, false)
	if len(got[0]) > 0 || len(got[1]) > 0 {
		t.Errorf("a second in, beside a request in slow start, the requests got %v and %v; want none judged yet", got[0], got[1])
	}
	s = New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	got = run(s, []feed{slowStart(2e6, 150*time.Millisecond), steady(0.2e6)}, 2*time.Second, false)
	if len(got[1]) == 0 || got[1][0] != Replace {
		t.Errorf("past eight first-byte waits, the slow route got %v, want Replace", got[1])
	}
}

func TestARampIsLearntFromARequestsFirstTwoWindows(t *testing.T) {
	const rtt = 150 * time.Millisecond
	paced, ramping, slow := steady(2e6), slowStart(2e6, rtt), steady(0.2e6)
	cases := []struct {
		name      string
		firstByte time.Duration
		feeds     []feed
		vias      []Via
		want      ramp
	}{
		{"a paced route", rtt, []feed{paced, paced}, []Via{ViaNew, ViaNew}, rampNone},
		{"bursts", rtt, []feed{bursts(2e6)}, []Via{ViaNew}, rampNone},
		{"slow start over 150 ms", 2 * rtt, []feed{ramping}, []Via{ViaNew}, rampSeen},
		{"slow start over 50 ms", 100 * time.Millisecond, []feed{slowStart(2e6, 50*time.Millisecond)}, []Via{ViaNew}, rampSeen},
		{"one ramp among paced ones", rtt, []feed{paced, ramping, paced}, []Via{ViaNew, ViaNew, ViaNew}, rampSeen},
		{"a ramp beside a slow route", rtt, []feed{slow, ramping}, []Via{ViaNew, ViaNew}, rampSeen},
		// A used connection starts at the speed its last request reached, and the probe's first bytes
		// waited in the socket buffers: neither tells whether a new connection ramps up.
		{"used connections", rtt, []feed{paced}, []Via{ViaReused}, rampUnknown},
		{"the probe", 10 * time.Millisecond, []feed{paced}, []Via{ViaProbe}, rampUnknown},
		// A slow route is held by its server's pace from its first bytes, on a long path too.
		{"a slow route beside a used connection", rtt, []feed{paced, slow}, []Via{ViaReused, ViaNew}, rampUnknown},
	}
	for _, c := range cases {
		s := New(Config{Lanes: 4, Chunk: mib, MaxAhead: 64 * mib})
		runAnswered(s, c.feeds, c.vias, 3*time.Second, true, c.firstByte)
		if s.ramp != c.want {
			t.Errorf("%s: learnt %v, want %v", c.name, s.ramp, c.want)
		}
	}
	s := New(Config{Lanes: 4, Chunk: mib, MaxAhead: 64 * mib})
	if runAnswered(s, []feed{paced}, []Via{ViaNew}, 500*time.Millisecond, true, rtt); s.ramp != rampUnknown {
		t.Errorf("learnt %v from a request younger than its two windows", s.ramp)
	}
}

func TestARouteTwiceAsSlowIsKept(t *testing.T) {
	s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	got := run(s, []feed{steady(2e6), steady(1e6)}, 5*time.Second, true)
	if len(got[1]) > 0 {
		t.Errorf("a request at half the best speed got %v: only far slower routes are raced", got[1])
	}
}

func TestTenSilentSecondsAreAStall(t *testing.T) {
	s := New(Config{Lanes: 1, Chunk: mib, MaxAhead: 64 * mib})
	if got := run(s, []feed{silent}, 9500*time.Millisecond, true); len(got[0]) > 0 {
		t.Fatalf("verdicts before ten silent seconds: %v", got[0])
	}
	s = New(Config{Lanes: 1, Chunk: mib, MaxAhead: 64 * mib})
	if got := run(s, []feed{silent}, 10500*time.Millisecond, true); len(got[0]) != 1 || got[0][0] != Stalled {
		t.Errorf("ten silent seconds gave %v, want Stalled once", got[0])
	}
	s = New(Config{Lanes: 1, Chunk: mib, MaxAhead: 64 * mib})
	if got := run(s, []feed{bursts(2e6)}, 30*time.Second, true); len(got[0]) > 0 {
		t.Errorf("a request bringing bytes each second got %v", got[0])
	}
}

func TestBelowMinSpeedForThreeSamplesIsTooSlow(t *testing.T) {
	s := New(Config{Lanes: 1, Chunk: mib, MaxAhead: 64 * mib, MinSpeed: 1e6})
	got := run(s, []feed{steady(0.5e6)}, 3500*time.Millisecond, true)
	if len(got[0]) != 1 || got[0][0] != TooSlow {
		t.Errorf("3 s below --min-speed gave %v, want TooSlow once", got[0])
	}
	s = New(Config{Lanes: 1, Chunk: mib, MaxAhead: 64 * mib})
	if got := run(s, []feed{steady(0.5e6)}, 5*time.Second, true); len(got[0]) > 0 {
		t.Errorf("without --min-speed a slow lone request got %v", got[0])
	}
}

func TestTheProbesWaitIsNotTheUpstreams(t *testing.T) {
	s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	probe := s.Sent(t0)
	s.Answered(probe, t0.Add(2*time.Second), ViaProbe)
	if s.firstByte != 0 {
		t.Errorf("first-byte wait %v after the probe's answer alone", s.firstByte)
	}
	r := s.Sent(t0)
	s.Answered(r, t0.Add(200*time.Millisecond), ViaReused)
	r = s.Sent(t0)
	s.Answered(r, t0.Add(600*time.Millisecond), ViaReused)
	if got := s.firstByte; got != 300*time.Millisecond {
		t.Errorf("first-byte wait %v, want the moving average 300ms", got)
	}
}

// measuredStream is a stream of three requests answered after firstByte, then a second at 2 MB/s each.
func measuredStream(firstByte time.Duration) (*Pacer, []*Meter) {
	s := New(Config{Lanes: 3, Chunk: mib, MaxAhead: 64 * mib})
	reqs := make([]*Meter, 3)
	for i := range reqs {
		reqs[i] = s.Sent(t0)
		s.Answered(reqs[i], t0.Add(firstByte), ViaReused)
	}
	for step := range 100 {
		now := t0.Add(firstByte + time.Duration(step+1)*10*time.Millisecond)
		for _, r := range reqs {
			s.Got(r, now, 20000)
		}
	}
	s.Sample(t0.Add(firstByte+time.Second), reqs)
	return s, reqs
}

func TestAnIdleLaneTakesHalfOfTheRequestThatNeedsLongest(t *testing.T) {
	s, reqs := measuredStream(100 * time.Millisecond)
	t1 := t0.Add(1100 * time.Millisecond) // when measuredStream's requests have run a second
	if got := s.HandOver(t1, []Judged{{Req: reqs[0], Left: 8 * mib}}); got != -1 {
		t.Errorf("handed over %d before the player read past its first window", got)
	}
	if got := s.HandOver(t1, []Judged{{Req: reqs[0], Left: 8 * mib}, {Req: reqs[1], Left: 4 * mib, Waited: true}}); got != 1 {
		t.Errorf("handed over %d, want the one the player waits on", got)
	}
	s.Read(2 * mib)
	s.FirstWindowRead()
	cases := []struct {
		name string
		left [3]int64
		want int
	}{
		{"the longest rest", [3]int64{mib, 8 * mib, 4 * mib}, 1},
		{"near their ends", [3]int64{mib / 2, mib / 2, mib / 4}, -1}, // a quarter second each: under four first-byte waits
		{"over four first-byte waits", [3]int64{mib, 0, 0}, 0},       // half a second
	}
	for _, c := range cases {
		judged := make([]Judged, 3)
		for i, r := range reqs {
			judged[i] = Judged{Req: r, Left: c.left[i]}
		}
		if got := s.HandOver(t1, judged); got != c.want {
			t.Errorf("%s: hands over %d, want %d", c.name, got, c.want)
		}
	}
	judged := []Judged{{Req: reqs[0], Left: 8 * mib, Raced: true}}
	if got := s.HandOver(t1, judged); got != -1 {
		t.Errorf("a raced request was handed over (%d)", got)
	}
	// A drive that answers at once: a request needing over a quarter second is split, one needing less is not.
	s, reqs = measuredStream(time.Millisecond)
	t1 = t0.Add(time.Second)
	s.Read(2 * mib)
	s.FirstWindowRead()
	if got := s.HandOver(t1, []Judged{{Req: reqs[0], Left: mib / 2}}); got != 0 {
		t.Errorf("a request needing a quarter second, answered at once, was not handed over (%d)", got)
	}
	if got := s.HandOver(t1, []Judged{{Req: reqs[0], Left: mib / 3}}); got != -1 {
		t.Errorf("a request needing a sixth of a second was handed over (%d)", got)
	}
}

func TestAYoungRequestIsNotHandedOver(t *testing.T) {
	// A long path's first requests: the probe's answer in slow start, 300 KiB/s for a second, the player
	// waiting on it. A half taken now would wait a handshake and a slow start of its own.
	s := New(Config{Lanes: 4, Chunk: mib, MaxAhead: 64 * mib})
	probe := s.Sent(t0)
	s.Answered(probe, t0, ViaProbe)
	for i := 1; i <= 10; i++ {
		s.Got(probe, t0.Add(time.Duration(i)*100*time.Millisecond), 30<<10)
	}
	t1 := t0.Add(time.Second)
	s.Sample(t1, []*Meter{probe})
	waited := []Judged{{Req: probe, Left: 700 << 10, Waited: true}}
	if got := s.HandOver(t1, waited); got != -1 {
		t.Errorf("handed over %d before any request's first-byte wait was known", got)
	}
	other := s.Sent(t0)
	s.Answered(other, t0.Add(300*time.Millisecond), ViaReused)
	if got := s.HandOver(t1, waited); got != -1 {
		t.Errorf("handed over %d a second after its answer, within eight 300 ms first-byte waits", got)
	}
	if got := s.HandOver(t0.Add(2500*time.Millisecond), waited); got != 0 {
		t.Errorf("handed over %d past its grace time (a 2.3 s rest against four 300 ms waits), want the player's", got)
	}
}

func TestRequestsGrowWhileThePlayerReads(t *testing.T) {
	s := New(Config{Lanes: 4, Chunk: mib, MaxAhead: 64 * mib})
	if s.extent != mib || s.Ahead() != 3*mib {
		t.Fatalf("at the start: extent %d, ahead %d; want one chunk, a chunk per lane but one", s.extent, s.Ahead())
	}
	s.Finished()
	s.Finished()
	s.Read(2 * mib) // a seek's worth: mpv jumps on after a couple of MiB
	if s.extent != mib || s.Ahead() != mib {
		t.Errorf("grew to %d, %d ahead, for a player that read less than its first window; want its window to stay", s.extent, s.Ahead())
	}
	s.Read(mib)
	if s.extent != mib || s.Ahead() != 0 {
		t.Errorf("grew to %d, %d ahead, before the player read on past its first window", s.extent, s.Ahead())
	}
	s.FirstWindowRead()
	if s.extent != 4*mib || s.Ahead() != 20*mib {
		t.Errorf("past the first window: extent %d, ahead %d; want 4 MiB, 20 MiB", s.extent, s.Ahead())
	}
	for range 10 {
		s.Finished()
		s.Finished()
	}
	if s.extent != 4*mib {
		t.Errorf("grew to %d while the player stood still", s.extent)
	}
	s.Read(1)
	if s.extent != 15*mib || s.Ahead() != 64*mib {
		t.Errorf("fully grown: extent %d, ahead %d; want 15 MiB (the read-ahead bound less a chunk per lane, per lane), 64 MiB", s.extent, s.Ahead())
	}
	if one := New(Config{Lanes: 1, Chunk: mib, MaxAhead: 64 * mib}); one.Ahead() != 2*mib {
		t.Errorf("one lane reads %d ahead at the start, want two chunks", one.Ahead())
	}
	cases := []struct {
		distance, left, want int64
	}{
		{0, 64 * mib, mib},               // at the player: one chunk
		{10 * mib, 64 * mib, 5 * mib},    // half its distance ahead
		{11 * mib, 64 * mib, 6 * mib},    // in whole chunks
		{60 * mib, 400 * mib, 15 * mib},  // no longer than the extent
		{60 * mib, 12 * mib, 3 * mib},    // near the end, its lane's share of what is left
		{60 * mib, mib / 2, mib},         // never less than a chunk
		{40 * mib, 100 * mib, 15 * mib},  // far ahead
		{20 * mib, 100 * mib, 10 * mib},  //
		{2 * mib, 1 << 40, mib},          //
		{1 << 40, 1 << 40, 15 * mib},     // no overflow
		{mib + 1, 64 * mib, mib},         // never less than a chunk
		{5 * mib, 64 * mib, 3 * mib},     // 2.5 MiB: the nearest whole chunks, half up
		{30 * mib, 30 * mib, 8 * mib},    // 7.5 MiB
		{30 * mib, 4*mib + 4, mib},       // a share of just over a chunk: one, not two
		{30 * mib, 7 * mib, 2 * mib},     // a share of 1.75 MiB: two
		{30 * mib, 5 * mib, mib},         // a share of 1.25 MiB: one
		{30 * mib, 4 * mib, mib},         // a share of one chunk
		{30 * mib, 1, mib},               // the last byte
		{30 * mib, 0, mib},               //
		{-mib, 64 * mib, mib},            // behind the player (a cache-only chunk): one chunk
		{9 * mib, 36 * mib, 5 * mib},     // both rules give 4.5 MiB
		{100 * mib, 100 * mib, 15 * mib}, //
	}
	for _, c := range cases {
		if got := s.ExtentAt(c.distance, c.left); got != c.want {
			t.Errorf("ExtentAt(%d, %d) = %d, want %d", c.distance, c.left, got, c.want)
		}
	}
}

func TestAPlayThatReadsOnFromTheHeadSlidesAtOnceOverAChunkPerLane(t *testing.T) {
	s := New(Config{Lanes: 4, Chunk: mib, MaxAhead: 64 * mib})
	s.Read(64 << 10)
	s.ReadsOn()
	if !s.Opened() || s.Ahead() != 4*mib {
		t.Fatalf("reading on from the head: opened %v, %d ahead; want sliding, a chunk per lane", s.Opened(), s.Ahead())
	}
	s.Read(mib)
	if s.Ahead() != 4*mib {
		t.Errorf("%d ahead after the player read a chunk; want the window to slide with it", s.Ahead())
	}
	s.Finished()
	s.Finished()
	s.Read(1)
	if s.extent != 4*mib || s.Ahead() != 20*mib {
		t.Errorf("after a round of requests: extent %d, ahead %d; want 4 MiB, 20 MiB", s.extent, s.Ahead())
	}
	s.ReadsOn()
	if s.Ahead() != 20*mib {
		t.Errorf("told again: %d ahead; want the grown read-ahead kept", s.Ahead())
	}
}

func TestAStreamSettlesNoLongerThanARequestWouldCost(t *testing.T) {
	cases := []struct {
		name      string
		firstByte time.Duration // 0: no answer yet
		want      time.Duration
	}{
		{"no answer yet", 0, 20 * time.Millisecond},
		{"a long path", 150 * time.Millisecond, 20 * time.Millisecond},
		{"a drive answering at once", 2 * time.Millisecond, 2 * time.Millisecond},
	}
	for _, c := range cases {
		s := New(Config{Lanes: 4, Chunk: mib, MaxAhead: 64 * mib})
		if c.firstByte > 0 {
			s, _ = measuredStream(c.firstByte)
		}
		if got := s.Settle(); got != c.want {
			t.Errorf("%s: settles %v, want %v", c.name, got, c.want)
		}
	}
}

func TestABurstIsNotTheBestSpeed(t *testing.T) {
	s := New(Config{Lanes: 2, Chunk: mib, MaxAhead: 64 * mib})
	r := s.Sent(t0)
	s.Answered(r, t0.Add(5*time.Millisecond), ViaReused)
	s.Got(r, t0.Add(10*time.Millisecond), 256<<10) // a pacing server's burst: all at once
	s.Done(r, t0.Add(10*time.Millisecond))
	if s.Best() != 0 {
		t.Errorf("best %v after one burst of a request", s.Best())
	}
	r = s.Sent(t0)
	s.Answered(r, t0.Add(5*time.Millisecond), ViaReused)
	s.Got(r, t0.Add(505*time.Millisecond), mib)
	s.Done(r, t0.Add(505*time.Millisecond))
	if s.Best() != 2*mib {
		t.Errorf("best %v after a request of a MiB in half a second, want %d", s.Best(), 2*mib)
	}
}
