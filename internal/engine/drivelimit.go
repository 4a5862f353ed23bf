package engine

import (
	"fmt"
	"time"

	"mflow/internal/engine/limit"
	"mflow/internal/engine/pace"
	"mflow/internal/source"
)

// waitForDrive waits out the Retry-After the stream's drive last sent: nothing goes to it before. false
// when the stream ended meanwhile.
func (s *stream) waitForDrive() bool {
	target, _ := s.currentTarget()
	if wait := time.Until(s.e.Drives.quietUntil(source.HostOf(target.URL))); wait > 0 {
		return s.pause(wait)
	}
	return true
}

// answered records that f's answer arrived, and how.
func (s *stream) answered(f *fetch, via pace.Via) {
	s.f.mu.Lock()
	s.pace.Answered(f.meter, time.Now(), via)
	host := source.HostOf(s._targetOf(f).URL)
	served, _ := s._served(nil)
	s.mostServed = max(s.mostServed, served)
	raised := s.e.Drives.served(host, s.limitKey, served)
	s.f._broadcast() // a refusal waiting to know whether the drive serves its others reads on
	s.f.mu.Unlock()
	if raised {
		s.log.Info("the drive served one connection more than its limit: the limit is raised", "drive", limit.Drive(host))
		s.e.Drives.share(host)
	}
}

// _served is how many of the stream's requests, besides except, have their answer and are being served,
// and how many are still waiting for theirs.
func (s *stream) _served(except *fetch) (served, waiting int) {
	for _, g := range s.fetches {
		switch {
		case g == except || g.meter == nil:
		case g.meter.Answered():
			served++
		default:
			waiting++
		}
	}
	return served, waiting
}

// servedBesides is how many of the stream's requests besides f the drive serves, once that is known: one
// still waiting for its answer may be served, or refused as f was (a link that expired), so the count
// waits for their answers (a round trip at most).
func (s *stream) servedBesides(f *fetch) int {
	for {
		s.f.mu.Lock()
		served, waiting := s._served(f)
		changed := s.f.changed
		s.f.mu.Unlock()
		if waiting == 0 {
			return served
		}
		select {
		case <-changed:
		case <-s.ctx.Done():
			return 0
		}
	}
}

// limitedBy reads a refusal of f's request: when the drive serves the stream's other requests to the file,
// it told its limit, and the stream keeps that many lanes (its file too). It reports whether it did.
func (s *stream) limitedBy(f *fetch, r limit.Refusal) bool {
	r.Served = s.servedBesides(f)
	s.f.mu.Lock()
	r.MostServed = s.mostServed
	host := source.HostOf(s._targetOf(f).URL)
	verdict, n, learned := s.e.Drives.refused(host, s.limitKey, r)
	if verdict == limit.Limited {
		if s.limited == nil || s.limited.gen != s.targetGen {
			s.limited = &lowered{gen: s.targetGen, lanes: s.lanes, fileLimit: s.f.limit}
		}
		s.lanes = min(s.lanes, n)
		s.pace.SetLanes(s.lanes)
		if s.f.limit == 0 || n < s.f.limit {
			s.f.limit = n
		}
		s.f._broadcast()
	}
	s.f.mu.Unlock()
	if learned {
		s.log.Info("drive limit learned", "drive", limit.Drive(host), "connections", n, "why", fmt.Sprintf("a request was refused (%s) while %d were served", limit.StatusText(r.Status), r.Served))
		s.e.Drives.share(host)
	}
	return verdict == limit.Limited
}
