// Package pace is the engine's speed policy. It learns, per stream, what the upstream gives (how long an
// answer takes, the best speed one request reached lately, one connection's usual speed) and how the player
// reads (how much it took, whether it waited), and answers with verdicts the engine applies: how many bytes
// a new request asks for, how far ahead of the player to read, which requests to race or replace, which
// have stalled. It holds no lock and does no I/O: the engine calls it under its own lock, with the clock
// passed in, so each rule is table-tested on series of samples.
package pace

import (
	"time"
)

// Config tunes a stream's policy.
type Config struct {
	Lanes      int           // requests the stream may have open at once (-c)
	Chunk      int64         // the chunk size (-s): a request asks for whole chunks, on their grid
	MaxAhead   int64         // the most bytes the stream reads ahead of its player
	MinSpeed   float64       // bytes/s below which a connection is replaced after SlowSamples seconds; 0 is off
	StallAfter time.Duration // a request that brings nothing for this long is replaced
}

const (
	// SampleEvery is how often each request's speed is sampled for MinSpeed and the stall rule.
	SampleEvery = time.Second
	// SlowSamples is how many samples in a row below MinSpeed replace a connection.
	SlowSamples = 3
	// RouteEvery is how often each request's speed is compared with the stream's best.
	RouteEvery = 100 * time.Millisecond
	// routeWindow is the longest window a request's steady speed is taken over: a server that paces in
	// bursts further apart than half of it still looks slower than it is. nginx's limit_rate bursts each
	// second: a window of one second may hold none of its bursts, or the tail of one.
	routeWindow = 2 * time.Second
	// routeSamples is how many comparisons in a row a request must lose, lagFactor times slower than the
	// stream's best lately, before it is replaced.
	routeSamples = 2
	// routeFade is how much of the stream's best speed is kept at each route check: half of it after a
	// second, so a drive that slows down as a whole is soon the new normal.
	routeFade = 0.933
	// lagFactor marks a request as on a slow route when it is this many times slower than the best.
	lagFactor = 4
	// minSplit is the smallest half an idle lane takes from a request.
	minSplit = 128 << 10
	// splitAfter is the least a request must still need before an idle lane takes half of it, and
	// splitWaits how many first-byte waits it must need at least: the new half comes after one wait (and a
	// new connection's slow start), so below that it costs more than it saves.
	splitAfter = 250 * time.Millisecond
	splitWaits = 4
	// graceWaits is how many first-byte waits a request runs before it is judged (see grace), and
	// flatGraceWaits how many where young requests do not ramp up.
	graceWaits     = 8
	flatGraceWaits = 2
	// rampRatio marks a request as ramping up when its first window brought less than this part of its
	// second's speed (TCP's slow start over 50 ms brings about half; a paced route as much or more).
	rampRatio = 0.7
	// maxReplaced bounds the fresh requests one request's bytes get for being slow; then it stays.
	maxReplaced = 3
)

// Pacer is the pacing policy of one stream: what it learned of its upstream and its player, and its verdicts.
type Pacer struct {
	cfg Config

	firstByte     time.Duration // the usual wait for an answer (a moving average); 0 until one came
	answers       int           // answers whose wait firstByte counts
	best          float64       // the best speed of one request lately, bytes/s (a fading maximum)
	bestBy        *Meter        // the request that reached best: never judged against itself
	connRate      float64       // one connection's usual speed, bytes/s (a moving average of samples)
	ramp          ramp          // whether a young request here is slower than it will be
	fastestSecond float64       // the best speed of a request's second window after its answer (see timeWindows)

	read         int64 // bytes the player took
	opened       bool  // the player took every byte of its first window: the read-ahead slides with it
	readAtGrowth int64 // read when the requests last grew
	done         int   // requests that brought all they claimed since the requests last grew
	ahead        int64 // how far ahead of the player the stream reads now
	extent       int64 // how many bytes a new request asks for now, at most
}

// SetLanes tells the policy the stream has n lanes from now on: a drive's limit lowered them, so each
// request's share of what is left grows.
func (s *Pacer) SetLanes(n int) { s.cfg.Lanes = max(n, 1) }

// New is a stream's policy at its start: requests of one chunk, its first window ahead.
func New(cfg Config) *Pacer {
	cfg.Lanes = max(cfg.Lanes, 1)
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = 10 * time.Second
	}
	s := &Pacer{cfg: cfg, extent: cfg.Chunk}
	s.ahead = s.firstWindow()
	s.opened = s.maxExtent() <= cfg.Chunk // requests that cannot grow slide on from the start
	return s
}

// Best is the best speed one request reached lately, bytes/s.
func (s *Pacer) Best() float64 { return s.best }

// Meter is what the policy knows of one request, one attempt of the engine's: made fresh for each.
type Meter struct {
	sent         time.Time     // when it went out
	answered     time.Time     // when its answer came; zero before
	via          Via           // how its answer came
	got          int64         // body bytes read
	lastByte     time.Time     // when its last bytes came
	sampled      int64         // got at the last one-second sample
	samples      int           // one-second samples taken
	rate         float64       // bytes/s over the last one-second sample
	quiet        time.Duration // how long it has brought nothing, in whole samples
	slowCount    int           // samples in a row below MinSpeed
	silence      time.Duration // the longest wait for bytes since its grace time: the server's pacing
	trail        trail         // what it had read at the last route checks
	routeRate    float64       // bytes/s over twice its longest silence: its steady speed
	measured     bool          // routeRate counts: it ran a whole such window past its grace time
	recentRate   float64       // bytes/s over the last route check's interval; 0 in a silence
	routeSlow    int           // route checks in a row it lost to the stream's best
	firstAt      time.Time     // when its first window after the answer ended (see timeWindows); zero before
	firstGot     int64         // got by then
	windowsTimed bool          // firstRate and secondRate are known
	firstRate    float64       // bytes/s over its first window
	secondRate   float64       // bytes/s over its second window
	rampTold     bool          // the stream learnt from its windows
}

// ramp is what a stream learnt of its young requests.
type ramp int

const (
	rampUnknown ramp = iota // no request ran two windows yet: judged as if they ramp
	rampNone                // requests ran at their route's speed from their first bytes
	rampSeen                // a request ran far slower in its first window than in its second: for good
)

// Sent is a new request's meter.
func (s *Pacer) Sent(now time.Time) *Meter { return &Meter{sent: now} }

// Via is how a request's answer came.
type Via int

const (
	ViaReused Via = iota // over a connection that brought an answer before
	ViaNew               // over a new connection: on a long path, in TCP's slow start
	ViaProbe             // the probe's: it waited for the stream, so its wait and first bytes tell nothing
)

// Answered records that r's answer came, and how.
func (s *Pacer) Answered(r *Meter, now time.Time, via Via) {
	r.answered, r.via = now, via
	if via == ViaProbe {
		return
	}
	wait := now.Sub(r.sent)
	if s.answers++; s.answers == 1 {
		s.firstByte = wait
	} else {
		s.firstByte = (3*s.firstByte + wait) / 4
	}
}

// Got records n more body bytes of r.
func (s *Pacer) Got(r *Meter, now time.Time, n int) {
	r.got += int64(n)
	r.quiet = 0
	r.lastByte = now
}

// Done records that r ended: one too short for a route check still tells what a good route gives. But
// not one over in less than RouteEvery: that may have been a single burst of a pacing server, far faster
// than its steady speed.
func (s *Pacer) Done(r *Meter, now time.Time) {
	if r.answered.IsZero() || r.got < 128<<10 {
		return
	}
	if d := now.Sub(r.answered); d >= RouteEvery {
		if speed := float64(r.got) / d.Seconds(); speed > s.best {
			s.best, s.bestBy = speed, r
		}
	}
}

// Bytes is what r has read.
func (r *Meter) Bytes() int64 { return r.got }

// Waiting is how long r has waited for its answer, 0 once it came.
func (r *Meter) Waiting(now time.Time) time.Duration {
	if !r.answered.IsZero() {
		return 0
	}
	return now.Sub(r.sent)
}

// Speed is r's speed for a person to read: over its last second, or since its answer when younger.
func (r *Meter) Speed(now time.Time) float64 {
	switch {
	case r.samples > 0:
		return r.rate
	case !r.answered.IsZero() && now.After(r.answered):
		return float64(r.got) / now.Sub(r.answered).Seconds()
	}
	return 0
}

// Answered reports whether r's answer came.
func (r *Meter) Answered() bool { return !r.answered.IsZero() }

// FirstByte is how long r waited for its answer; 0 before it came.
func (r *Meter) FirstByte() time.Duration {
	if r.answered.IsZero() {
		return 0
	}
	return r.answered.Sub(r.sent)
}

// speed is r's latest speed and whether it has been measured: over the last route check when there was a
// whole one, else over the last one-second sample.
func (r *Meter) speed() (float64, bool) {
	switch {
	case r.measured:
		return r.routeRate, true
	case r.samples > 0:
		return r.rate, true
	}
	return 0, false
}

// Lagging reports whether r brings far less than the stream's usual, measured on its steady speed: over
// twice its longest silence, so a server pacing in bursts is not lagging between two.
func (s *Pacer) Lagging(r *Meter) bool {
	return r.measured && r.routeRate*lagFactor < max(s.connRate, s.best)
}

// TimeLeft is how long r needs for left more bytes: at its own speed once measured, before at one
// connection's usual speed; 0 when neither is known.
func (s *Pacer) TimeLeft(r *Meter, left int64) time.Duration {
	rate, ok := r.speed()
	if !ok {
		if rate = s.connRate; rate <= 0 {
			return 0
		}
	}
	if rate == 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(float64(left) / rate * float64(time.Second))
}

// HandOver is which of reqs an idle lane takes half of, as aria2 does: the one that needs longest to
// bring the rest of its bytes, when that is over splitAfter and splitWaits first-byte waits and the rest
// holds two halves of minSplit;
// -1 for none. A request near its end keeps its bytes: a new request would cost more than it saves. And
// before the player read past its first window, only a request it waits on is handed over. A request is
// judged once it ran its grace time, as in Routes, and nothing before the stream knows its first-byte
// wait: on a long path a young request is in TCP's slow start, far slower than it will be, and the half
// an idle lane would take waits a handshake and a slow start of its own.
func (s *Pacer) HandOver(now time.Time, reqs []Judged) int {
	if s.answers == 0 {
		return -1
	}
	grace := s.grace()
	early := !s.opened // a seek's worth costs a request per chunk: only the player's wait is split
	longest, need := -1, time.Duration(0)
	for i, j := range reqs {
		if j.Raced || early && !j.Waited || !j.Req.Answered() || now.Sub(j.Req.answered) < grace {
			continue
		}
		if d := s.TimeLeft(j.Req, j.Left); d > need {
			longest, need = i, d
		}
	}
	if longest < 0 || need < max(splitAfter, splitWaits*s.firstByte) || reqs[longest].Left < 2*minSplit {
		return -1
	}
	return longest
}

// grace is how long a request runs after its answer before it is judged: graceWaits first-byte waits, so
// that TCP's slow start is over (about five round trips to reach 2 MB/s over 150 ms, from a new
// connection's ten packets), and RouteEvery at least. Where no request ramped up, flatGraceWaits: a slow
// route is then slow from its first bytes, and each moment it is kept costs its lane most of its speed.
func (s *Pacer) grace() time.Duration {
	waits := graceWaits
	if s.ramp == rampNone {
		waits = flatGraceWaits
	}
	return max(RouteEvery, time.Duration(waits)*s.firstByte)
}

// timeWindows takes r's speed over a first window after its answer (flatGraceWaits first-byte waits,
// RouteEvery at least) and over as long a window after it, once each is over.
func (s *Pacer) timeWindows(r *Meter, now time.Time) {
	if r.windowsTimed {
		return
	}
	if r.firstAt.IsZero() {
		if now.Sub(r.answered) >= max(RouteEvery, flatGraceWaits*s.firstByte) {
			r.firstAt, r.firstGot = now, r.got
		}
		return
	}
	first := r.firstAt.Sub(r.answered)
	if now.Sub(r.firstAt) < first {
		return
	}
	r.windowsTimed = true
	r.firstRate = float64(r.firstGot) / first.Seconds()
	r.secondRate = float64(r.got-r.firstGot) / now.Sub(r.firstAt).Seconds()
	s.fastestSecond = max(s.fastestSecond, r.secondRate)
}

// learnRamp compares the speeds of r's first two windows: a request in TCP's slow start brings far less in
// the first, one on a paced route as much or more. Once one ramped up, the stream judges young requests
// late for good: each of its new connections will ramp up too. Only a request over a new connection
// tells: one over a used connection starts at the speed its last one reached (the probe's answer too: its
// first bytes waited in the socket buffers for the stream to start). Nor one on a slow route, four times
// slower than the fastest second window or the stream's best: its server's pace, not TCP's, holds it from
// its first bytes, on any path.
func (s *Pacer) learnRamp(r *Meter) {
	if s.ramp == rampSeen || r.rampTold || !r.windowsTimed || r.via != ViaNew {
		return
	}
	r.rampTold = true
	switch {
	case r.firstRate < rampRatio*r.secondRate:
		s.ramp = rampSeen
	case r.secondRate*lagFactor >= max(s.best, s.connRate, s.fastestSecond):
		s.ramp = rampNone
	}
}

// Verdict is what the engine is to do with a request.
type Verdict int

const (
	Keep    Verdict = iota // go on
	Race                   // far slower than the stream's best: a fresh request on the same bytes, with a free lane
	Replace                // still that slow: cancel it; a fresh request asks for the rest
	TooSlow                // below MinSpeed for SlowSamples seconds: cancel it, ask again
	Stalled                // nothing for StallAfter: cancel it, ask again
)

// Judged is a request as a route check sees it.
type Judged struct {
	Req      *Meter
	Left     int64 // bytes it still has to bring
	Replaced int   // fresh requests its bytes already got for being slow
	Raced    bool  // a fresh request races it already
	Waited   bool  // the player waits on its bytes
}

// Routes compares each answered request's speed with the best one of this stream's requests reached lately,
// every RouteEvery. A request is judged once it ran its grace time, eight first-byte times (TCP's slow start
// on a distant drive is over by then) and at least RouteEvery, on its speed over the last check's interval
// while bytes come, and on its steady speed over twice its longest silence while they do not: a server
// that paces in bursts (nginx's limit_rate sends a second's worth at once) leaves silences no slow route
// explains, and is not taken for one. One lagFactor times slower, with more than a moment of work left, is
// raced by a fresh request when laneFree says a lane is free for one (drives route each request on their
// own: a fresh one usually lands on a good route); still that slow at the next check, it is replaced. With
// every lane busy it is replaced at once: a race would wait for a lane while the slow route holds one. The
// best is kept across requests, because a slow request often runs alone: the others finished and wait for it.
func (s *Pacer) Routes(now time.Time, reqs []Judged, laneFree bool) []Verdict {
	grace := s.grace()
	s.best *= routeFade
	for _, j := range reqs {
		r := j.Req
		if r.answered.IsZero() {
			continue
		}
		r.trail.add(now, r.got)
		s.timeWindows(r, now)
		start := r.answered.Add(grace) // never judged over its first round trips: slower on any route
		if now.Before(start) {
			continue
		}
		r.silence = max(r.silence, now.Sub(later(r.lastByte, start)))
		window := min(max(RouteEvery, 2*r.silence), routeWindow)
		whole := now.Sub(start) >= window
		if whole {
			if long := r.trail.rate(now, window, start); long > s.best {
				s.best, s.bestBy = long, r
			}
			r.routeRate, r.measured = r.trail.rate(now, window, start), true
		}
		r.recentRate = 0
		if now.Sub(start) >= RouteEvery {
			r.recentRate = r.trail.rate(now, RouteEvery, start)
		}
	}
	for _, j := range reqs { // once every request's windows of this check are timed: a slow route is told apart
		s.learnRamp(j.Req)
	}
	verdicts := make([]Verdict, len(reqs))
	for i, j := range reqs {
		r := j.Req
		if r.answered.IsZero() || now.Sub(r.answered) < grace+RouteEvery || s.bestBy == r { // never judged by its own past
			continue
		}
		rate := r.recentRate
		switch {
		case rate > 0 && r.silence < RouteEvery: // bytes come steadily: the last interval's speed tells
		case r.measured:
			rate = r.routeRate
		default:
			rate = float64(r.got) / now.Sub(r.answered).Seconds()
		}
		worth := rate == 0 || float64(j.Left)/rate > (2*RouteEvery).Seconds()
		if rate*lagFactor >= s.best || !worth || j.Left <= 0 {
			r.routeSlow = 0
			continue
		}
		switch r.routeSlow++; {
		case r.routeSlow == 1 && !j.Raced && j.Replaced < maxReplaced:
			verdicts[i] = Replace // no lane to race it on
			if laneFree {
				verdicts[i] = Race
			}
		case r.routeSlow >= routeSamples && (j.Raced || j.Replaced < maxReplaced):
			verdicts[i] = Replace
		}
	}
	return verdicts
}

// Sample takes one speed sample of each request, every SampleEvery: one below MinSpeed for SlowSamples
// samples in a row is too slow, one that brought nothing for StallAfter has stalled.
func (s *Pacer) Sample(now time.Time, reqs []*Meter) []Verdict {
	verdicts := make([]Verdict, len(reqs))
	for i, r := range reqs {
		delta := r.got - r.sampled
		r.sampled, r.rate = r.got, float64(delta)/SampleEvery.Seconds()
		r.samples++
		if delta == 0 {
			r.quiet += SampleEvery
		} else {
			s.connRate = 0.7*s.connRate + 0.3*r.rate
			if s.connRate < r.rate/2 { // the first samples, or a faster link than before
				s.connRate = r.rate
			}
		}
		switch {
		case r.quiet >= s.cfg.StallAfter:
			verdicts[i] = Stalled
		case s.cfg.MinSpeed > 0 && r.rate < s.cfg.MinSpeed:
			if r.slowCount++; r.slowCount >= SlowSamples {
				verdicts[i] = TooSlow
			}
		default:
			r.slowCount = 0
		}
	}
	return verdicts
}

// trail is what a request had read at its last route checks, enough to cover routeWindow.
type trail struct {
	at   [trailLen]time.Time
	got  [trailLen]int64
	next int // where the next sample goes
}

const trailLen = int(routeWindow/RouteEvery) + 2

func (t *trail) add(at time.Time, got int64) {
	t.at[t.next], t.got[t.next] = at, got
	t.next = (t.next + 1) % trailLen
}

// rate is the bytes per second read over the window before now: from the newest sample at least window
// old and not before since.
func (t *trail) rate(now time.Time, window time.Duration, since time.Time) float64 {
	fromAt, fromGot := time.Time{}, int64(0)
	newest := t.got[(t.next+trailLen-1)%trailLen]
	for i := range trailLen {
		if at := t.at[i]; !at.Before(since) && now.Sub(at) >= window && at.After(fromAt) {
			fromAt, fromGot = at, t.got[i]
		}
	}
	if fromAt.IsZero() { // no sample that old since: the oldest one since
		for i := range trailLen {
			if at := t.at[i]; !at.Before(since) && (fromAt.IsZero() || at.Before(fromAt)) {
				fromAt, fromGot = at, t.got[i]
			}
		}
	}
	d := now.Sub(fromAt)
	if d <= 0 {
		return 0
	}
	return float64(newest-fromGot) / d.Seconds()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Sent is when r went out.
func (r *Meter) Sent() time.Time { return r.sent }
