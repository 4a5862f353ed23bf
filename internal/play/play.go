// Package play is one playback: a player's range of a link or of a task's link, resolved, streamed over
// several connections or relayed over one, and reported to whoever counts it. The HTTP edge opens a
// playback, learns what the file is, chooses the status and headers, then lets it play, and maps the
// typed result it gets back to what the player sees.
package play

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mflow/internal/bytesize"
	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/link"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// Service plays links. Its fields are set before the first Open and not changed after.
type Service struct {
	// Resolver probes the links played.
	Resolver *link.Resolver
	// Engine streams their bytes.
	Engine *engine.Engine
	// RelayNoRange relays an upstream that ignores Range over one connection instead of refusing it.
	RelayNoRange bool
	// Logger receives a line per stream start and end. Default slog.Default().
	Logger *slog.Logger

	// Counters are the playbacks' totals since mflow started, for metrics.
	Counters Counters

	streams atomic.Int64 // numbers the streams in the log

	mu      sync.Mutex         // protects playing
	playing map[int64]*playing // the streams playing now, by number

	failedMu sync.Mutex    // protects the following fields
	failed   []FailedPlay  // the last maxFailed plays that failed, oldest first
	byStatus map[int]int64 // plays that failed since mflow started, by the status their player got
}

// maxFailed is how many failed plays the status page lists.
const maxFailed = 50

// FailedPlay is a play that failed: what the player asked for, what it was told, and why.
type FailedPlay struct {
	At     time.Time `json:"at"`
	File   string    `json:"file"` // the link, without its query or credentials
	Task   string    `json:"gid,omitempty"`
	Player string    `json:"player"`
	Status int       `json:"status"` // what the player got; 2xx for a play cut after its first byte
	Reason string    `json:"reason"`
}

// Failed records a play that failed, for the status page and the metrics.
func (s *Service) Failed(f FailedPlay) {
	s.failedMu.Lock()
	defer s.failedMu.Unlock()
	if len(s.failed) == maxFailed {
		s.failed = slices.Delete(s.failed, 0, 1)
	}
	s.failed = append(s.failed, f)
	if s.byStatus == nil {
		s.byStatus = map[int]int64{}
	}
	s.byStatus[f.Status]++
}

// FailedPlays are the last plays that failed, newest first.
func (s *Service) FailedPlays() []FailedPlay {
	s.failedMu.Lock()
	defer s.failedMu.Unlock()
	out := slices.Clone(s.failed)
	slices.Reverse(out)
	return out
}

// FailedByStatus counts the plays that failed since mflow started, by the status their player got.
func (s *Service) FailedByStatus() map[int]int64 {
	s.failedMu.Lock()
	defer s.failedMu.Unlock()
	return maps.Clone(s.byStatus)
}

// Counters are a Service's totals, each read and written atomically.
type Counters struct {
	Started atomic.Int64 // streams started
	Active  atomic.Int64 // streams playing now
	Sent    atomic.Int64 // bytes written to players
}

// playing is one stream playing now, as the status page shows it.
type playing struct {
	NowPlaying
	live *engine.Live // nil for a relayed stream
	sent *atomic.Int64
}

// NowPlaying is a stream playing now.
type NowPlaying struct {
	ID       int64
	Name     string           // the file name the player was told
	URL      string           // the link, without its query or credentials
	Task     string           // the task's GID, "" for ?url=
	Player   string           // the player's address
	Spans    []httprange.Span // the ranges asked for, in the order asked
	Size     int64            // the file's size, -1 when unknown
	Started  time.Time
	Sent     int64           // bytes written to the player
	Progress engine.Progress // the engine's view: retries and open requests
}

// Tally is told what happens to a playback of a task: the task registry's stream counts its bytes and
// keeps its size and failures.
type Tally interface {
	Sized(size int64)  // the probe found the file's size
	Delivered(n int64) // the player took n more bytes
	Failed(err error)  // the upstream refused the file
}

// Request is one playback to open.
type Request struct {
	Link source.Link
	// Identity names the file for sharing downloads and the cache; "" is the link's own. A task's streams
	// share theirs whatever its signed URL is now.
	Identity string
	// First is the player's first range as known before the file's size (httprange.Ranges.First; End < 0
	// for an open end): the probe asks for the first request's part of it, so that its answer is the
	// stream's first bytes. Start < 0: nothing is known, the probe asks for the first byte only.
	First httprange.Span
	// Connections, when not zero, and MinSpeed, when set (0 turns the check off), replace the engine's.
	Connections int
	MinSpeed    *int64
	// Relink, when set, asks where the file is now, when its link stale has expired: an OpenList path's
	// link is asked of OpenList again, not probed again at the dead drive URL. Nil probes the link again.
	Relink func(ctx context.Context, stale source.Link) (source.Link, error)
	// Tally, when set, is told of the playback.
	Tally Tally
	// Task is the GID of the task played, "" for a link, for the status page.
	Task string
	// Logger, when set, carries the caller's attributes (a task's GID) into the stream's lines.
	Logger *slog.Logger
}

// ErrNoRanges refuses an upstream that ignores Range when mflow does not relay such upstreams.
var ErrNoRanges = errors.New("upstream does not support Range requests, so it cannot be fetched in parallel; start mflow with --relay-no-range to relay it over one connection")

// File is what a probe found, as the player is told it.
type File struct {
	Version     source.Version // the size (-1 when unknown) and validators
	Ranges      bool           // whether ranges can be served: false relays the whole file as it comes
	Name        string         // the file name, "" when none is known
	ContentType string
	Disposition string // a Content-Disposition value
}

// Playback is one opened playback. Call Close when done, whether it played or not.
type Playback struct {
	File File

	svc *Service
	req Request
	log *slog.Logger

	mu   sync.Mutex // protects the following fields, which an expired link's refresh replaces mid-stream
	link source.Link
	meta *link.Meta

	head    *http.Response                   // the probe's open answer for the first bytes, until taken
	mirrors func(*link.Meta) []source.Target // waits briefly for the mirrors' probes
}

// Connections is the most upstream requests one stream has open at once (-c), unless its task says.
func (s *Service) Connections() int { return s.Engine.Connections }

// Open resolves req's link. Its error is the upstream's (see upstream.Classify) or ErrNoRanges; a task's
// Tally hears of an upstream's refusal, but not of a target refused to this player only.
func (s *Service) Open(ctx context.Context, req Request) (*Playback, error) {
	log := req.Logger
	if log == nil {
		log = s.logger()
	}
	mirrors := s.Resolver.Mirrors(ctx, req.Link) // probed alongside the link's own probe
	first := req.First
	if first.Start >= 0 {
		first = s.Engine.FirstRequest(first)
	}
	meta, head, err := s.Resolver.Open(ctx, req.Link, first)
	if expired(err) && req.Relink != nil {
		// A link reused from an earlier request died since: ask where the file is now, once.
		var fresh source.Link
		if fresh, err = req.Relink(ctx, req.Link); err == nil {
			req.Link = fresh
			meta, head, err = s.Resolver.Open(ctx, req.Link, first)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			tellFailure(req.Tally, err)
		}
		return nil, err
	}
	if req.Tally != nil {
		req.Tally.Sized(meta.Version.Size)
	}
	p := &Playback{svc: s, req: req, log: log, link: req.Link, meta: meta, head: head, mirrors: mirrors}
	if meta.Version.Size != 0 && !meta.Ranges && !s.RelayNoRange {
		p.Close()
		return nil, ErrNoRanges
	}
	name := fileName(req.Link, meta)
	p.File = File{Version: meta.Version, Ranges: meta.Ranges, Name: name, ContentType: contentType(meta, name), Disposition: disposition(req.Link, meta, name)}
	return p, nil
}

// Close lets go of what an opened playback holds and did not use.
func (p *Playback) Close() {
	if p.head != nil {
		p.head.Body.Close()
		p.head = nil
	}
}

// Outcome is how a playback ended.
type Outcome int

const (
	Done           Outcome = iota // the player has every byte of its range
	Left                          // the player went away (or mflow is stopping): normal, not an error
	Stopped                       // ctx ended with another cause, such as the task paused or removed
	UpstreamFailed                // the upstream failed the stream; Result.Err says how
)

// Result is how a playback went.
type Result struct {
	Outcome Outcome
	Stats   engine.Stats
	Err     error // the stream's error, for Failed (and the cause for Stopped)
}

// Play writes spans of the file to w, one after the other (one span with End < 0: all of a relayed file),
// and logs the stream's start and end. player is the player's address, for the log. A stream that ends
// early may have cut w's writes with a deadline; the caller clears it.
func (p *Playback) Play(ctx context.Context, w io.Writer, player string, spans ...httprange.Span) Result {
	s := p.svc
	id := s.streams.Add(1)
	log := p.log.With("stream", id)
	log.Info("stream start", "file", upstream.Redact(p.req.Link.URL), "range", RangeText(spans, p.File.Version.Size), "player", player)
	began := time.Now()
	now := &playing{NowPlaying: NowPlaying{ID: id, Name: p.File.Name, URL: upstream.Redact(p.req.Link.URL), Task: p.req.Task, Player: player, Spans: spans, Size: p.File.Version.Size, Started: began},
		sent: new(atomic.Int64)}
	if p.meta.Ranges {
		now.live = new(engine.Live)
	}
	s.begin(now)
	defer s.end(now)
	w = &counting{Writer: w, tally: p.req.Tally, sent: now.sent, total: &s.Counters.Sent}
	var stats engine.Stats
	var err error
	for _, span := range spans {
		var part engine.Stats
		part, err = p.stream(ctx, w, span, now.live, log)
		stats.Bytes, stats.Retries, stats.Replaced = stats.Bytes+part.Bytes, stats.Retries+part.Retries, stats.Replaced+part.Replaced
		if err != nil {
			break
		}
	}
	took := time.Since(began)
	attrs := []any{"bytes", stats.Bytes, "took", took.Round(time.Millisecond), "speed", bytesize.Human(float64(stats.Bytes)/max(took.Seconds(), 1e-3)) + "/s", "retries", stats.Retries}
	if stats.Replaced > 0 {
		attrs = append(attrs, "replaced", stats.Replaced)
	}
	res := Result{Stats: stats, Err: err}
	cause := context.Cause(ctx)
	switch {
	case err == nil:
		res.Outcome = Done
		log.Info("stream end", attrs...)
	case ctx.Err() != nil && !errors.Is(cause, context.Canceled):
		res.Outcome, res.Err = Stopped, cause
		log.Info("stream end: stopped", append(attrs, "why", cause)...)
	case ctx.Err() != nil, errors.Is(err, engine.ErrPlayerGone):
		res.Outcome = Left
		log.Info("stream end: player left", attrs...)
	default:
		res.Outcome = UpstreamFailed
		log.Info("stream end: failed", attrs...)
		tellFailure(p.req.Tally, err)
	}
	return res
}

// stream plays one span: over several connections, or relayed over one when the upstream ignores Range.
func (p *Playback) stream(ctx context.Context, w io.Writer, span httprange.Span, live *engine.Live, log *slog.Logger) (engine.Stats, error) {
	s := p.svc
	p.mu.Lock()
	meta, l := p.meta, p.link
	p.mu.Unlock()
	target := meta.Target(l)
	if !meta.Ranges {
		return s.Engine.Relay(ctx, w, target, span)
	}
	identity := p.req.Identity
	if identity == "" {
		identity = l.Identity()
	}
	head := p.head
	p.head = nil // the engine closes it
	return s.Engine.Stream(ctx, w, engine.Job{Target: target, Head: head, FileKey: source.FileKey(identity, meta.Version),
		Mirrors: p.mirrors(meta), Span: span, Refresh: p.refresh,
		Connections: p.req.Connections, MinSpeed: p.req.MinSpeed, Logger: log, Live: live})
}

// refresh is the engine's hook for a link that expired mid-stream: the link is asked for again (Relink)
// or probed again, and what it leads to now replaces it for the spans that follow.
func (p *Playback) refresh(ctx context.Context) (source.Target, error) {
	p.mu.Lock()
	l := p.link
	p.mu.Unlock()
	if p.req.Relink != nil {
		fresh, err := p.req.Relink(ctx, l)
		if err != nil {
			return source.Target{}, err
		}
		l = fresh
	}
	m, err := p.svc.Resolver.Refresh(ctx, l)
	if err != nil {
		return source.Target{}, err
	}
	p.mu.Lock()
	p.link, p.meta = l, m
	p.mu.Unlock()
	return m.Target(l), nil
}

// expired reports whether err is an upstream's answer that the link has expired (see
// upstream.StatusError.Expired).
func expired(err error) bool {
	var status *upstream.StatusError
	return errors.As(err, &status) && status.Expired()
}

// tellFailure tells a task's Tally (nil for a link) that the upstream failed the file, unless the failure
// is this player's own: a target the policy refuses to this player may be one another player reaches.
func tellFailure(tally Tally, err error) {
	if tally != nil && upstream.Classify(err).Kind != upstream.KindRefused {
		tally.Failed(err)
	}
}

// RangeText is how the log and the status page show the spans played: first-last/size, comma-separated.
func RangeText(spans []httprange.Span, size int64) string {
	parts := make([]string, len(spans))
	for i, sp := range spans {
		parts[i] = fmt.Sprintf("%d-%d", sp.Start, sp.End)
	}
	return fmt.Sprintf("%s/%d", strings.Join(parts, ","), size)
}

// begin counts a stream in.
func (s *Service) begin(p *playing) {
	s.Counters.Started.Add(1)
	s.Counters.Active.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.playing == nil {
		s.playing = map[int64]*playing{}
	}
	s.playing[p.ID] = p
}

// end counts a stream out.
func (s *Service) end(p *playing) {
	s.Counters.Active.Add(-1)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.playing, p.ID)
}

// Playing returns the streams playing now, oldest first.
func (s *Service) Playing() []NowPlaying {
	var now []*playing
	func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, p := range s.playing {
			now = append(now, p)
		}
	}()
	out := make([]NowPlaying, 0, len(now))
	for _, p := range now { // each stream's progress takes its file's lock: not under ours
		np := p.NowPlaying
		np.Sent = p.sent.Load()
		if p.live != nil {
			np.Progress = p.live.Progress()
		}
		out = append(out, np)
	}
	slices.SortFunc(out, func(a, b NowPlaying) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func (s *Service) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// counting counts the bytes the player takes (for the stream, for all streams, and for a task's Tally).
type counting struct {
	io.Writer
	tally Tally         // nil for a link
	sent  *atomic.Int64 // this stream's
	total *atomic.Int64 // all streams'
}

func (c *counting) Write(b []byte) (int, error) {
	n, err := c.Writer.Write(b)
	c.sent.Add(int64(n))
	c.total.Add(int64(n))
	if c.tally != nil {
		c.tally.Delivered(int64(n))
	}
	return n, err
}

// Unwrap is the writer counted: the engine flushes it, and cuts its writes, through counting.
func (c *counting) Unwrap() io.Writer { return c.Writer }

// fileName is the name the player is told: the link's, else the last path segment of the link, or of
// where it redirected when the link's own has no extension.
func fileName(l source.Link, meta *link.Meta) string {
	if l.Name != "" {
		return l.Name
	}
	name := source.FileName(l.URL)
	if path.Ext(name) == "" {
		if final := source.FileName(meta.URL); path.Ext(final) != "" {
			name = final
		}
	}
	return name
}

// videoTypes covers the files players ask for that the system MIME table may lack.
var videoTypes = map[string]string{
	".mp4": "video/mp4", ".m4v": "video/x-m4v", ".mkv": "video/x-matroska", ".webm": "video/webm",
	".ts": "video/mp2t", ".m2ts": "video/mp2t", ".mov": "video/quicktime", ".avi": "video/x-msvideo",
	".flv": "video/x-flv", ".wmv": "video/x-ms-wmv", ".rmvb": "application/vnd.rn-realmedia-vbr",
	".mp3": "audio/mpeg", ".flac": "audio/flac", ".m4a": "audio/mp4", ".iso": "application/x-iso9660-image",
}

func contentType(meta *link.Meta, name string) string {
	if meta.ContentType != "" {
		return meta.ContentType
	}
	ext := strings.ToLower(path.Ext(name))
	if t, ok := videoTypes[ext]; ok {
		return t
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}

func disposition(l source.Link, meta *link.Meta, name string) string {
	if meta.Disposition != "" && l.Name == "" {
		return meta.Disposition
	}
	if name == "" {
		return "inline"
	}
	return mime.FormatMediaType("inline", map[string]string{"filename": name})
}
