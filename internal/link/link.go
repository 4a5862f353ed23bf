// Package link knows what to fetch: a link's URL and headers, where its redirects lead, how big the file
// is and which version it is. It probes links, remembers probes for a short while, and probes again when a
// signed link expires.
package link

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/upstream"
)

// Link is what a player asked to stream.
type Link struct {
	URL string // as the user gave it, before redirects
	// Header is sent with every request for the link, redirects included: drives want their Cookie,
	// Referer and User-Agent on the CDN host too.
	Header http.Header
	// Name, when set, is the file name the player is told.
	Name string
	// Mirrors are other URLs of the same file, asked for with the same headers.
	Mirrors []string
}

// Meta is what a probe learned about a link.
type Meta struct {
	URL         string           // where the redirects led; chunk requests go there
	Version     upstream.Version // size (-1 when unknown) and validators
	Ranges      bool             // whether the upstream answers Range requests
	ContentType string           // the upstream's Content-Type, "" when it sent none
	Disposition string           // the upstream's Content-Disposition, "" when it sent none
	probed      time.Time        // when the probe answered
}

// FileKey names the file this probe found, for sharing and caching its chunks: identity names the link
// as the user gave it (or the task holding it), never a signed redirect target; the version's size and
// validators make a changed file another key.
func (m *Meta) FileKey(identity string) string {
	return fmt.Sprintf("%s\x00%d\x00%s\x00%s", identity, m.Version.Size, m.Version.ETag, m.Version.LastModified)
}

// Target is what the engine fetches for l, as this probe found it.
func (m *Meta) Target(l Link) engine.Target {
	return engine.Target{URL: m.URL, Header: l.Header, Version: m.Version}
}

// Resolver probes links. Its fields are set before first use.
type Resolver struct {
	// Client sends the probes.
	Client *upstream.Client
	// MaxRedirects bounds the redirects a probe follows.
	MaxRedirects int
	// TTL is how long a probe is reused, so that a player's burst of requests (mpv opens a file several
	// times while it finds the index) probes once. Default 30 s; negative turns reuse off.
	TTL time.Duration
	// Timeout bounds one probe, redirects included. Default 30 s.
	Timeout time.Duration

	group singleflight.Group // one probe at a time per link; the others wait for its answer
	mu    sync.Mutex         // guards probes
	probe map[string]*Meta   // recent probes by cacheKey
}

// maxCached bounds the probes kept; expired ones are dropped when it is reached.
const maxCached = 512

// Resolve returns what a recent probe of l found, or probes it.
func (r *Resolver) Resolve(ctx context.Context, l Link) (*Meta, error) {
	return r.resolve(ctx, l, false)
}

// Refresh probes l again, whatever is cached, and caches the answer.
func (r *Resolver) Refresh(ctx context.Context, l Link) (*Meta, error) {
	return r.resolve(ctx, l, true)
}

func (r *Resolver) resolve(ctx context.Context, l Link, fresh bool) (*Meta, error) {
	key := Identity(l)
	if m := r.cached(key); m != nil && !fresh {
		return m, nil
	}
	group := key
	if fresh {
		group = "fresh\x00" + key // a refresh never takes the answer of a probe that started before it
	}
	// The probe runs detached from the first caller, so that caller leaving does not fail the others.
	ch := r.group.DoChan(group, func() (any, error) {
		if m := r.cached(key); m != nil && !fresh {
			return m, nil // a probe that finished since this caller looked
		}
		timeout := r.Timeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		m, err := r.probeLink(pctx, l)
		if err != nil {
			return nil, err
		}
		r.store(key, m)
		return m, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Meta), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// cached is the probe of key, when it is recent enough to reuse.
func (r *Resolver) cached(key string) *Meta {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.probe[key]; m != nil && time.Since(m.probed) < r.ttl() {
		return m
	}
	return nil
}

// Size is the size of l's file, from a recent probe or a new one: the task store's background probe.
func (r *Resolver) Size(ctx context.Context, l Link) (int64, error) {
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
func (r *Resolver) Mirrors(ctx context.Context, l Link) func(primary *Meta) []engine.Target {
	type answer struct {
		i int
		m *Meta
	}
	answers := make(chan answer, len(l.Mirrors))
	for i, u := range l.Mirrors {
		mirror := Link{URL: u, Header: l.Header}
		go func() {
			m, _ := r.Resolve(ctx, mirror)
			answers <- answer{i, m}
		}()
	}
	return func(primary *Meta) []engine.Target {
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
		var targets []engine.Target
		for i, m := range found {
			if m != nil && m.Ranges && m.Version.Size == primary.Version.Size {
				targets = append(targets, m.Target(Link{URL: l.Mirrors[i], Header: l.Header}))
			}
		}
		return targets
	}
}

// Refresher is the engine's hook to resolve l again when its signed URL expires mid-stream.
func (r *Resolver) Refresher(l Link) func(context.Context) (engine.Target, error) {
	return func(ctx context.Context) (engine.Target, error) {
		m, err := r.Refresh(ctx, l)
		if err != nil {
			return engine.Target{}, err
		}
		return m.Target(l), nil
	}
}

func (r *Resolver) ttl() time.Duration {
	if r.TTL == 0 {
		return 30 * time.Second
	}
	return r.TTL
}

func (r *Resolver) store(key string, m *Meta) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.probe == nil {
		r.probe = map[string]*Meta{}
	}
	if len(r.probe) >= maxCached {
		for k, old := range r.probe {
			if time.Since(old.probed) >= r.ttl() {
				delete(r.probe, k)
			}
		}
	}
	if len(r.probe) < maxCached {
		r.probe[key] = m
	}
}

// Identity names a link by its URL and headers: the same URL with another Cookie may be another file.
func Identity(l Link) string {
	var b strings.Builder
	b.WriteString(l.URL)
	for _, name := range slices.Sorted(maps.Keys(l.Header)) {
		fmt.Fprintf(&b, "\n%s: %s", name, strings.Join(l.Header[name], ", "))
	}
	return b.String()
}

// probeLink asks for the first byte, not HEAD: presigned links often refuse HEAD, and the answer to a
// Range request tells at once whether the upstream supports Range.
func (r *Resolver) probeLink(ctx context.Context, l Link) (*Meta, error) {
	resp, final, err := r.Client.Get(ctx, l.URL, l.Header, httprange.Span{Start: 0, End: 0}.Header(), r.MaxRedirects)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := &Meta{
		URL: final,
		Version: upstream.Version{
			Size:         -1,
			ETag:         resp.Header.Get("ETag"),
			LastModified: resp.Header.Get("Last-Modified"),
		},
		ContentType: resp.Header.Get("Content-Type"),
		Disposition: resp.Header.Get("Content-Disposition"),
		probed:      time.Now(),
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := httprange.ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || cr.Unsatisfied || cr.Span != (httprange.Span{Start: 0, End: 0}) {
			return nil, fmt.Errorf("%w: %q for the probe's bytes=0-0", upstream.ErrBadAnswer, resp.Header.Get("Content-Range"))
		}
		m.Version.Size, m.Ranges = cr.Size, cr.Size >= 0
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	case http.StatusOK:
		m.Version.Size = resp.ContentLength
	case http.StatusRequestedRangeNotSatisfiable:
		// The only file where bytes=0-0 is past the end is an empty one.
		if cr, err := httprange.ParseContentRange(resp.Header.Get("Content-Range")); err == nil && cr.Unsatisfied && cr.Size == 0 {
			m.Version.Size, m.Ranges = 0, true
			return m, nil
		}
		return nil, upstream.CheckStatus(resp, final)
	default:
		return nil, upstream.CheckStatus(resp, final)
	}
	return m, nil
}

// hopHeaders are the hop-by-hop headers (RFC 9110, 7.6.1) and the ones mflow sets itself per request:
// a link's headers never carry them upstream.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Range", "Content-Length", "Accept-Encoding",
}

// CleanHeader drops the headers a link may not set (hopHeaders, and those a Connection header names) and
// canonicalizes the names of the rest.
func CleanHeader(h http.Header) http.Header {
	out := http.Header{}
	for name, values := range h {
		out[textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))] = values
	}
	for _, c := range out.Values("Connection") {
		for name := range strings.SplitSeq(c, ",") {
			out.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range hopHeaders {
		out.Del(name)
	}
	return out
}
