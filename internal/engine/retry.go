package engine

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"mflow/internal/engine/limit"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// slowDownAsked reports whether the upstream asked to be left alone for a while (429, 503): then no other
// connection hurries to the bytes while this one waits.
func slowDownAsked(err error) bool {
	var status *upstream.StatusError
	return errors.As(err, &status) && (status.Code == http.StatusTooManyRequests || status.Code == http.StatusServiceUnavailable)
}

// _targetOf is the target f's attempt asks: the link's, or its mirror's.
func (s *stream) _targetOf(f *fetch) source.Target {
	if f.mirror > 0 {
		return s.mirrors[f.mirror-1]
	}
	return s.target
}

// _pickTarget takes turns between the target and the mirrors not set aside: 0 is the target, n the nth
// mirror.
func (s *stream) _pickTarget() int {
	for range len(s.mirrors) + 1 {
		i := s.nextTarget % (len(s.mirrors) + 1)
		s.nextTarget++
		if i == 0 || !s.mirrorAside[i-1] {
			return i
		}
	}
	return 0
}

// retryPlan decides what follows a failed attempt: how long to wait before the next, or why the stream
// must fail.
func (s *stream) retryPlan(f *fetch, err error) (time.Duration, error) {
	if errors.Is(err, errSlowRoute) {
		s.countReplaced(f)
		return 0, nil
	}
	if r, ok := refusalOf(err); ok && f.mirror == 0 && s.limitedBy(f, r) {
		return 0, errLimited
	}
	retries := s.countRetry(f)
	where := s.rest(f)
	policy := upstream.Retry{Max: s.e.Retries, Base: s.e.RetryBase}
	if retries > policy.Max {
		return 0, fmt.Errorf("%s: gave up after %d retries in a row brought no byte: %w", where, policy.Max, err)
	}
	s.log.Debug("retrying", "range", where, "retry", retries, "err", err)
	if f.mirror > 0 && !errors.Is(err, errSlow) && !errors.Is(err, upstream.ErrStalled) {
		// A mirror that fails is dropped at once: the target and the other mirrors carry on.
		s.setMirrorAside(f.mirror)
		s.log.Info("mirror set aside", "mirror", upstream.Redact(s.mirrors[f.mirror-1].URL), "err", err)
		return 0, nil
	}
	var status *upstream.StatusError
	switch {
	case errors.As(err, &status) && status.Expired():
		if err := s.refreshTarget(f.gen, err); err != nil {
			return 0, fmt.Errorf("%s: %w", where, err)
		}
		return 0, nil
	case errors.Is(err, errSlow), errors.Is(err, upstream.ErrStalled):
		return 0, nil
	case !upstream.Retryable(err):
		return 0, fmt.Errorf("%s: %w", where, err)
	}
	return policy.Wait(max(retries, 1), err), nil
}

// countRetry counts a failed attempt of f, and returns how many of its attempts failed in a row with no
// new byte reaching the stream in between: bytes that arrived, to its claim or to another, show the
// upstream serving, so a try that moved the stream forward is progress, not a spent retry (-r).
func (s *stream) countRetry(f *fetch) int {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.received != f.failedAt {
		f.retries = 0
	}
	f.retries++
	f.failedAt = s.received
	s.retries++
	s.e.Remedies.Retries.Add(1)
	return f.retries
}

func (s *stream) countReplaced(f *fetch) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	f.replaced++
	s.replaced++
}

func (s *stream) setMirrorAside(mirror int) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.mirrorAside[mirror-1] = true
}

// refreshTarget resolves an expired link again, once for all the connections that found it expired with
// target generation gen, and checks that it still leads to the same version.
func (s *stream) refreshTarget(gen int, cause error) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	old, current := s.currentTarget()
	if current != gen {
		return nil // another connection already refreshed it
	}
	if s.refresh == nil {
		return fmt.Errorf("link expired and cannot be resolved again: %w", cause)
	}
	t, err := s.refresh(s.ctx)
	if err != nil {
		return fmt.Errorf("resolving the expired link again: %w", err)
	}
	if err := upstream.SameVersion(t.Version, old.Version); err != nil {
		return err
	}
	s.log.Info("signed link expired; resolved it again", "url", upstream.Redact(t.URL))
	if s.setTarget(t, gen) {
		// The refusals before it were the link expiring, one request after another, not the drive's limit.
		s.e.Drives.withdraw(source.HostOf(old.URL), s.limitKey)
		s.log.Info("the refusals were the link expiring, not the drive's limit: the stream's connections are back", "drive", limit.Drive(source.HostOf(old.URL)))
	}
	return nil
}

// lowered is what a drive's refusals changed in a stream, to be undone if they were a link expiring.
type lowered struct {
	gen       int // the target generation they were refused on
	lanes     int // the stream's lanes before
	fileLimit int // its file's limit before
}

func (s *stream) currentTarget() (source.Target, int) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return s.target, s.targetGen
}

// setTarget makes t the stream's target, replacing generation gen, and reports whether that undid lanes
// that refusals of gen's requests had lowered.
func (s *stream) setTarget(t source.Target, gen int) (restored bool) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.target = t
	s.targetGen++
	s.mostServed = 0
	if l := s.limited; l != nil && l.gen == gen {
		s.lanes, s.f.limit, s.limited = l.lanes, l.fileLimit, nil
		s.pace.SetLanes(s.lanes)
		s.f._broadcast()
		return true
	}
	return false
}
