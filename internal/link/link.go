// Package link knows what to fetch: a link's URL and headers, where its redirects lead, how big the file
// is and which version it is. It probes links, remembers probes for a short while, and probes again when a
// signed link expires.
package link

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"mflow/internal/httprange"
	"mflow/internal/link/probe"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// Meta is what a probe learned about a link.
type Meta struct {
	URL         string         // where the redirects led; chunk requests go there
	Version     source.Version // size (-1 when unknown) and validators
	Ranges      bool           // whether the upstream answers Range requests
	ContentType string         // the upstream's Content-Type, "" when it sent none
	Disposition string         // the upstream's Content-Disposition, "" when it sent none
}

// Target is what the engine fetches for l, as this probe found it.
func (m *Meta) Target(l source.Link) source.Target {
	return source.Target{Location: l.At(m.URL), Version: m.Version}
}

// Config sets up a Resolver. Zero fields take the defaults noted.
type Config struct {
	// Client sends the probes.
	Client *upstream.Client
	// TTL is how long a probe is reused, so that a player's burst of requests (mpv opens a file several
	// times while it finds the index) probes once. Default 30 s; negative turns reuse off.
	TTL time.Duration
	// Retry is the policy for a probe that failed, the same as for chunks.
	Retry upstream.Retry
	// Hedge is how many tries at once follow a failed one (a stream's connections); 0 or 1 tries once.
	Hedge int
	// DriveLimit, when set, is the most connections the drive of a host is known to allow a file (0:
	// nothing known); hedged tries never pass it.
	DriveLimit func(host string) int
	// Warm is how many connections to the link's host a play's probe opens ahead alongside its own, for
	// the stream's requests that follow it (see upstream.Client.Warm); 0 opens none.
	Warm int
	// StallTimeout bounds one try's wait for its answer, so a stalled probe costs about this and is tried
	// again. Default upstream.StallTimeout, as the engine's stall rule.
	StallTimeout time.Duration
	// Logger receives a DEBUG line per probe retry. Default slog.Default().
	Logger *slog.Logger
}

// Resolver probes links, one probe per link at a time, and reuses an answer for Config.TTL. Close ends the
// probes still running.
type Resolver struct {
	cfg    Config
	probes *probe.Group[*Meta]
}

// maxCached bounds the probes kept; expired ones are dropped when it is reached.
const maxCached = 512

// New returns a Resolver for cfg, its defaults applied.
func New(cfg Config) *Resolver {
	if cfg.TTL == 0 {
		cfg.TTL = 30 * time.Second
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = upstream.StallTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Resolver{cfg: cfg, probes: probe.New[*Meta](cfg.TTL, maxCached)}
}

// Close ends the probes still running, which no caller waits for, and waits for them.
func (r *Resolver) Close() { r.probes.Close() }

// Resolve returns what a recent probe of l found, or probes it.
func (r *Resolver) Resolve(ctx context.Context, l source.Link) (*Meta, error) {
	m, _, err := r.open(ctx, l, noHead, false)
	return m, err
}

// Open is Resolve for a player about to stream first: when it must probe, it asks for first (from
// engine.FirstRequest) and returns the open answer with those bytes, so the probe's round trip is also the
// first request's. The answer is nil when the probe was reused, shared, or found no such bytes; the
// caller must close it.
func (r *Resolver) Open(ctx context.Context, l source.Link, first httprange.Span) (*Meta, *http.Response, error) {
	return r.open(ctx, l, first, false)
}

// Refresh probes l again, whatever is cached, and caches the answer.
func (r *Resolver) Refresh(ctx context.Context, l source.Link) (*Meta, error) {
	m, _, err := r.open(ctx, l, noHead, true)
	return m, err
}

// noHead asks a probe for the first byte only.
var noHead = httprange.Span{Start: -1, End: -1}

// open probes l, or shares a probe of it: a refresh never takes the answer of a probe that started before
// it.
func (r *Resolver) open(ctx context.Context, l source.Link, first httprange.Span, fresh bool) (*Meta, *http.Response, error) {
	return r.probes.Do(ctx, l.Identity(), fresh, func(ctx context.Context) (*Meta, *http.Response, error) {
		return r.probeWithRetries(ctx, l, first)
	})
}

// Size is the size of l's file, from a recent probe or a new one: the task store's background probe.
func (r *Resolver) Size(ctx context.Context, l source.Link) (int64, error) {
	m, err := r.Resolve(ctx, l)
	if err != nil {
		return 0, err
	}
	return m.Version.Size, nil
}

// mirrorGrace is how long a stream waits for its mirrors' probes once the link's own has answered: a dead
// mirror must not hold up the first byte.
const mirrorGrace = time.Second

// Mirrors starts probing l's mirrors. The function it returns waits at most mirrorGrace more for their
// answers and gives the mirrors that answer Range requests for a file of primary's size.
func (r *Resolver) Mirrors(ctx context.Context, l source.Link) func(primary *Meta) []source.Target {
	type answer struct {
		i int
		m *Meta
	}
	answers := make(chan answer, len(l.Mirrors))
	for i, u := range l.Mirrors {
		mirror := source.Link{Location: l.At(u)}
		go func() {
			m, _ := r.Resolve(ctx, mirror)
			answers <- answer{i, m}
		}()
	}
	return func(primary *Meta) []source.Target {
		found := make([]*Meta, len(l.Mirrors))
		grace := time.NewTimer(mirrorGrace)
		defer grace.Stop()
	wait:
		for range l.Mirrors {
			select {
			case a := <-answers:
				found[a.i] = a.m
			case <-grace.C:
				break wait
			}
		}
		var targets []source.Target
		for i, m := range found {
			if m != nil && m.Ranges && m.Version.Size == primary.Version.Size {
				targets = append(targets, m.Target(source.Link{Location: l.At(l.Mirrors[i])}))
			}
		}
		return targets
	}
}

// probeWithRetries probes l, trying again under the Retry policy as a chunk would be. A 200 to the probe's
// Range from an upstream that takes ranges is such a failure too (CDNs answer so on a cache miss now and
// then); only an upstream that keeps answering so is taken to have no Range support. A try that failed is
// followed by Hedge tries at once, the first good answer winning, unless the upstream asked to be left alone
// (429, 503): on a flaky drive the player then waits for one good answer, not for a lucky one.
func (r *Resolver) probeWithRetries(ctx context.Context, l source.Link, first httprange.Span) (*Meta, *http.Response, error) {
	ranged := r.knownRanged(l)
	ignored := true // every answer so far ignored Range
	tries := 1
	for n := 1; ; n++ {
		m, resp, err := r.probeRound(ctx, l, first, ranged, tries)
		if err == nil {
			return m, resp, nil
		}
		if !upstream.Retryable(err) {
			return nil, nil, err
		}
		ignored = ignored && errors.Is(err, errRangeIgnored)
		if n > r.cfg.Retry.Max {
			if ignored {
				return m, nil, nil // it keeps ignoring Range: so be it
			}
			if r.cfg.Retry.Max > 0 {
				err = fmt.Errorf("probe gave up after %d retries: %w", r.cfg.Retry.Max, err)
			}
			return nil, nil, err
		}
		tries = max(r.cfg.Hedge, 1)
		if r.cfg.DriveLimit != nil {
			if n := r.cfg.DriveLimit(source.HostOf(l.URL)); n > 0 {
				tries = min(tries, n)
			}
		}
		var status *upstream.StatusError
		if errors.As(err, &status) && (status.Code == http.StatusTooManyRequests || status.Code == http.StatusServiceUnavailable) {
			tries = 1
		}
		wait := r.cfg.Retry.Wait(n, err)
		r.cfg.Logger.Debug("retrying the probe", "url", upstream.Redact(l.URL), "retry", n, "tries", tries, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, context.Cause(ctx)
		}
	}
}

// probeRound sends tries probes of l at once and returns the first good answer, closing the others. When
// none is good, the error is the first try's, and the Meta is one a 200 ignoring Range told.
func (r *Resolver) probeRound(ctx context.Context, l source.Link, first httprange.Span, ranged bool, tries int) (*Meta, *http.Response, error) {
	type answer struct {
		i    int
		m    *Meta
		resp *http.Response
		err  error
	}
	answers := make(chan answer, tries)
	cancels := make([]context.CancelCauseFunc, tries)
	for i := range tries {
		tryCtx, cancel := context.WithCancelCause(ctx)
		cancels[i] = cancel
		go func() {
			m, resp, err := r.probeOnce(tryCtx, l, first, ranged)
			answers <- answer{i, m, resp, err}
		}()
	}
	var won *answer
	var firstErr answer
	for range tries {
		a := <-answers
		switch {
		case a.err == nil && won == nil:
			won = &a
			for j, cancel := range cancels {
				if j != a.i {
					cancel(errProbeLost)
				}
			}
		case a.err == nil:
			if a.resp != nil {
				a.resp.Body.Close()
			}
		case firstErr.err == nil || a.i == 0:
			firstErr = a
		}
	}
	if won == nil {
		for _, cancel := range cancels {
			cancel(nil)
		}
		return firstErr.m, nil, firstErr.err
	}
	if won.resp == nil {
		cancels[won.i](nil)
	} else {
		won.resp.Body = &cancelOnClose{ReadCloser: won.resp.Body, cancel: cancels[won.i]}
	}
	return won.m, won.resp, nil
}

// errProbeLost ends a probe another try of the same round beat.
var errProbeLost = errors.New("another probe answered first")

// errRangeIgnored is a 200 with the whole file to a probe's Range, from an upstream that says it takes
// ranges or took them before.
var errRangeIgnored = fmt.Errorf("%w: 200 with the whole file to a Range request, from an upstream that takes ranges", upstream.ErrBadAnswer)

// knownRanged reports whether an earlier probe of l, however old, found that it takes ranges.
func (r *Resolver) knownRanged(l source.Link) bool {
	m, ok := r.probes.Recent(l.Identity())
	return ok && m.Ranges
}

// probeOnce asks for the first byte (or for first, when set), not HEAD: presigned links often refuse HEAD,
// and the answer to a Range request tells at once whether the upstream supports Range. A try that gets
// no answer within StallTimeout is abandoned as stalled.
func (r *Resolver) probeOnce(ctx context.Context, l source.Link, first httprange.Span, ranged bool) (*Meta, *http.Response, error) {
	want := httprange.Span{Start: 0, End: 0}
	if first.Start >= 0 {
		want = first
		if r.cfg.Warm > 0 {
			r.cfg.Client.Warm(l.Location, r.cfg.Warm)
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	stall := time.AfterFunc(r.cfg.StallTimeout, func() { cancel(upstream.ErrStalled) })
	resp, final, err := r.cfg.Client.Get(ctx, l.Location, want.Header())
	stall.Stop()
	if err != nil {
		cancel(nil)
		if context.Cause(ctx) == upstream.ErrStalled {
			err = fmt.Errorf("%w: no answer from %s in %v", upstream.ErrStalled, upstream.Redact(l.URL), r.cfg.StallTimeout)
		}
		return nil, nil, err
	}
	m, keep, err := readProbe(resp, final, want, first.Start >= 0, ranged)
	if !keep {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		cancel(nil)
		return m, nil, err
	}
	// The caller reads the rest; closing the body ends the request.
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return m, resp, nil
}

// readProbe learns what the answer to a probe for want says of the file, and whether its body holds
// want's bytes for the caller (only when head is set). A 200 from an upstream known to take ranges
// (ranged), or that says it does, is errRangeIgnored, with what it says of the file.
func readProbe(resp *http.Response, final string, want httprange.Span, head, ranged bool) (*Meta, bool, error) {
	m := &Meta{
		URL: final,
		Version: source.Version{
			Size:         -1,
			ETag:         resp.Header.Get("ETag"),
			LastModified: resp.Header.Get("Last-Modified"),
		},
		ContentType: resp.Header.Get("Content-Type"),
		Disposition: resp.Header.Get("Content-Disposition"),
	}
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		// Only a file that ends before want.Start answers so: an empty one for bytes=0-0.
		cr, err := httprange.ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || !cr.Unsatisfied || cr.Size > want.Start {
			return nil, false, upstream.CheckStatus(resp, final)
		}
		m.Version.Size, m.Ranges = cr.Size, true
		return m, false, nil
	}
	if err := upstream.CheckUsable(resp, final); err != nil {
		return nil, false, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := httprange.ParseContentRange(resp.Header.Get("Content-Range"))
		if err == nil {
			if err := upstream.CheckSize(cr.Size); err != nil {
				return nil, false, err
			}
		}
		// The answer must start where asked and end where asked, or at the end of a smaller file.
		if err != nil || cr.Unsatisfied || cr.Start != want.Start || (cr.End != want.End && cr.End != cr.Size-1) || cr.End > want.End {
			return nil, false, fmt.Errorf("%w: Content-Range %q for the probe's %s", upstream.ErrBadAnswer, resp.Header.Get("Content-Range"), want.Header())
		}
		m.Version.Size, m.Ranges = cr.Size, cr.Size >= 0
	default:
		m.Version.Size = resp.ContentLength
		if err := upstream.CheckSize(m.Version.Size); err != nil {
			return nil, false, err
		}
		if ranged || takesRanges(resp.Header) {
			return m, false, errRangeIgnored
		}
		return m, false, nil
	}
	if err := upstream.CheckSize(m.Version.Size); err != nil {
		return nil, false, err
	}
	return m, head && m.Ranges, nil
}

// takesRanges reports whether an answer's Accept-Ranges says the upstream takes byte ranges.
func takesRanges(h http.Header) bool {
	for _, v := range h.Values("Accept-Ranges") {
		for unit := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(unit), "bytes") {
				return true
			}
		}
	}
	return false
}

// cancelOnClose ends a probe's request when the caller that took its body closes it.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}
