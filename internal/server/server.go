// Package server is mflow's HTTP edge: it reads what a player asks for, answers with the right status and
// headers, and hands the body to the engine.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"mflow/internal/access"
	"mflow/internal/bytesize"
	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/link"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

// Server answers GET / and GET or HEAD /stream. Its fields are set before it serves.
type Server struct {
	// Resolver probes the links players ask for.
	Resolver *link.Resolver
	// Engine streams their bytes.
	Engine *engine.Engine
	// Tasks holds the aria2 tasks /stream?gid= plays; nil knows no gid.
	Tasks *task.Store
	// RPC, when set, answers /jsonrpc.
	RPC http.Handler
	// RelayNoRange relays an upstream that ignores Range over one connection instead of refusing it.
	RelayNoRange bool
	// UserAgent is sent upstream for links that bring none.
	UserAgent string
	// Version is shown on the index page.
	Version string
	// MaxStreams bounds the streams playing at once; one more is answered 503 with Retry-After. 0 is no
	// bound.
	MaxStreams int
	// Logger receives a line per stream start and end. Default slog.Default().
	Logger *slog.Logger

	streams atomic.Int64 // numbers the streams in the log
	playing atomic.Int64 // /stream requests being answered now
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	return s.recoverPanics(s.routes())
}

// recoverPanics logs a handler's panic at ERROR with its stack and cuts that one answer; net/http would
// log it only to its error log, and the other streams carry on either way.
func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler {
					s.logger().Error("request panicked; cutting its answer", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				}
				panic(http.ErrAbortHandler)
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveIndex)
	if s.RPC != nil {
		mux.Handle("/jsonrpc", s.RPC)
	}
	mux.HandleFunc("GET /stream", s.serveStream)
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "GET, HEAD")
		fail(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on /stream; use GET or HEAD")
	})
	return mux
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, `mflow %s: a parallel chunked HTTP streaming proxy

Play a link through %d connections:
  mpv "http://%s/stream?url=https://example.com/video.mp4"

GET|HEAD /stream?url=URL   stream URL (percent-encoded, or as is when it is the only parameter)
GET|HEAD /stream?gid=GID   stream a task added over the aria2 JSON-RPC
`, s.Version, s.Engine.Connections, r.Host)
}

// fail answers with status and a one-line reason.
func fail(w http.ResponseWriter, status int, reason string) {
	http.Error(w, "mflow: "+reason, status)
}

// plan is what one /stream request streams, and how.
type plan struct {
	link        link.Link
	ctx         context.Context // ends with the player, or when the task is paused or removed
	connections int             // 0: the engine's
	minSpeed    int64           // 0: the engine's
	task        *task.Stream    // the aria2 task streamed, nil for ?url=
}

// planFor reads what a /stream request names, or answers why it cannot be streamed. A task's stream
// must be ended with task.End.
func (s *Server) planFor(w http.ResponseWriter, r *http.Request) (plan, bool) {
	q := r.URL.Query()
	if gid := q.Get("gid"); gid != "" {
		if s.Tasks == nil {
			fail(w, http.StatusNotFound, fmt.Sprintf("no task with gid %q: the JSON-RPC is off", gid))
			return plan{}, false
		}
		st, err := s.Tasks.Begin(r.Context(), gid)
		switch {
		case errors.Is(err, task.ErrPaused):
			w.Header().Set("Retry-After", "10")
			fail(w, http.StatusServiceUnavailable, err.Error())
			return plan{}, false
		case err != nil:
			fail(w, http.StatusNotFound, err.Error())
			return plan{}, false
		}
		ctx := st.Context
		if st.Proxy != nil {
			ctx = upstream.WithProxy(ctx, st.Proxy)
		}
		l := st.Link
		l.From = access.ClientOf(r.RemoteAddr) // the player's reach, not the task adder's
		return plan{link: l, ctx: ctx, connections: st.Connections, minSpeed: st.MinSpeed, task: st}, true
	}
	raw := q.Get("url")
	// A link pasted as is keeps its own query: "?url=https://host/f?a=1&b=2" means all of it.
	if rest, ok := strings.CutPrefix(r.URL.RawQuery, "url="); ok && (strings.HasPrefix(rest, "http://") || strings.HasPrefix(rest, "https://")) {
		raw = rest
	}
	if raw == "" {
		fail(w, http.StatusBadRequest, "missing url or gid parameter, as in /stream?url=https://example.com/video.mp4")
		return plan{}, false
	}
	u, err := url.Parse(raw)
	if err != nil {
		fail(w, http.StatusBadRequest, fmt.Sprintf("url parameter is not a URL: %v", err))
		return plan{}, false
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fail(w, http.StatusBadRequest, fmt.Sprintf("url must be an absolute http or https URL, not %q", raw))
		return plan{}, false
	}
	h := http.Header{}
	h.Set("User-Agent", s.UserAgent)
	return plan{link: link.Link{URL: u.String(), Header: h, From: access.ClientOf(r.RemoteAddr)}, ctx: r.Context()}, true
}

func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	if n := s.playing.Add(1); s.MaxStreams > 0 && n > int64(s.MaxStreams) {
		s.playing.Add(-1)
		w.Header().Set("Retry-After", "5")
		fail(w, http.StatusServiceUnavailable, fmt.Sprintf("%d streams are playing, the most mflow plays at once (--max-streams)", s.MaxStreams))
		return
	}
	defer s.playing.Add(-1)
	p, ok := s.planFor(w, r)
	if !ok {
		return
	}
	if p.task != nil {
		defer p.task.End()
	}
	l := p.link
	log := s.logger()
	if p.task != nil {
		log = log.With("gid", p.task.GID)
	}
	mirrors := s.Resolver.Mirrors(p.ctx, l) // probed alongside the link's own probe
	meta, head, err := s.Resolver.Open(p.ctx, l, s.firstRequest(r))
	if err != nil {
		if p.ctx.Err() == nil {
			if p.task != nil {
				p.task.Fail(err)
			}
			status, reason := upstreamFailure(err)
			failPlay(w, log, l, status, reason)
		}
		return
	}
	defer func() { closeBody(head) }() // unless the engine took it
	size := meta.Version.Size
	if p.task != nil {
		p.task.Sized(size)
	}
	h := w.Header()
	// The bytes are the user's film, never a page of mflow's origin: no sniffing, no script.
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	if size == 0 { // nothing to range over: servers that support Range answer 200 here too
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	if !meta.Ranges && !s.RelayNoRange {
		failPlay(w, log, l, http.StatusForbidden, "upstream does not support Range requests, so it cannot be fetched in parallel; start mflow with --relay-no-range to relay it over one connection")
		return
	}

	name := fileName(l, meta)
	h.Set("Content-Type", contentType(meta, name))
	h.Set("Content-Disposition", disposition(l, meta, name))
	for _, v := range []struct{ name, value string }{{"ETag", meta.Version.ETag}, {"Last-Modified", meta.Version.LastModified}} {
		if v.value != "" {
			h.Set(v.name, v.value)
		}
	}
	if size < 0 { // relayed as it comes, ranges ignored
		h.Set("Accept-Ranges", "none")
		if r.Method == http.MethodHead {
			return
		}
		s.run(w, r, p, log, meta, nil, nil, httprange.Span{Start: 0, End: -1}, http.StatusOK)
		return
	}
	h.Set("Accept-Ranges", "bytes")
	span, kind := httprange.ParseRequest(r.Header.Get("Range"), size)
	if kind != httprange.Whole && !ifRangeHolds(r.Header.Get("If-Range"), meta.Version) {
		span, kind = httprange.Span{Start: 0, End: size - 1}, httprange.Whole
	}
	status := http.StatusOK
	switch kind {
	case httprange.Unsatisfiable:
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		fail(w, http.StatusRequestedRangeNotSatisfiable, fmt.Sprintf("range %q is past the end of the %d-byte file", r.Header.Get("Range"), size))
		return
	case httprange.Partial:
		status = http.StatusPartialContent
		h.Set("Content-Range", span.ContentRange(size))
	}
	h.Set("Content-Length", strconv.FormatInt(span.Len(), 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	taken := head
	head = nil
	s.run(w, r, p, log, meta, taken, mirrors(meta), span, status)
}

// firstRequest is what a probe may ask for so that its answer is the stream's first bytes: the first
// piece of the player's range. A HEAD, an If-Range (the whole file may be sent instead) and a suffix range
// (bytes=-N: where it starts needs the size) probe the first byte only (Start < 0).
func (s *Server) firstRequest(r *http.Request) httprange.Span {
	none := httprange.Span{Start: -1, End: -1}
	if r.Method != http.MethodGet || r.Header.Get("If-Range") != "" {
		return none
	}
	sp, ok := httprange.Peek(r.Header.Get("Range"))
	if !ok {
		return none
	}
	return s.Engine.FirstRequest(sp)
}

func closeBody(resp *http.Response) {
	if resp != nil {
		resp.Body.Close()
	}
}

// playFailed is the one WARN line of a play that failed: which link, what the player was told, and why.
func playFailed(log *slog.Logger, l link.Link, status int, reason string) {
	log.Warn("play failed", "file", upstream.Redact(l.URL), "status", status, "why", reason)
}

// failPlay answers a play that failed before its first byte, and logs it.
func failPlay(w http.ResponseWriter, log *slog.Logger, l link.Link, status int, reason string) {
	playFailed(log, l, status, reason)
	fail(w, status, reason)
}

// ifRangeHolds reports whether an If-Range header (absent, or naming the current version) lets a Range
// apply; otherwise the whole file is sent.
func ifRangeHolds(ifRange string, v upstream.Version) bool {
	return ifRange == "" || (ifRange == v.ETag && !strings.HasPrefix(ifRange, "W/")) || ifRange == v.LastModified
}

// run streams span with status and logs the stream's start and end. The status line goes out with the
// first byte, so a stream that fails before any byte still gets an error status.
func (s *Server) run(w http.ResponseWriter, r *http.Request, p plan, log *slog.Logger, meta *link.Meta, head *http.Response, mirrors []engine.Target, span httprange.Span, status int) {
	id := s.streams.Add(1)
	log = log.With("stream", id)
	log.Info("stream start", "file", upstream.Redact(p.link.URL), "range", fmt.Sprintf("%d-%d/%d", span.Start, span.End, meta.Version.Size), "player", r.RemoteAddr)
	began := time.Now()
	out := &lazyHeader{w: w, status: status, task: p.task}
	var stats engine.Stats
	var err error
	if meta.Ranges {
		identity := link.Identity(p.link)
		if p.task != nil {
			identity = fmt.Sprintf("task %s %d", p.task.GID, p.link.From)
		}
		stats, err = s.Engine.Stream(p.ctx, out, engine.Request{Target: meta.Target(p.link), Head: head, FileKey: meta.FileKey(identity), Mirrors: mirrors, Span: span, Refresh: s.Resolver.Refresher(p.link),
			Connections: p.connections, MinSpeed: p.minSpeed, Logger: log, From: p.link.From})
	} else {
		stats, err = s.Engine.Relay(p.ctx, out, meta.Target(p.link), span, p.link.From)
	}
	// A stream that ended early may have cut the player's writes; what is still to be written must go out.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	took := time.Since(began)
	attrs := []any{"bytes", stats.Bytes, "took", took.Round(time.Millisecond), "speed", bytesize.Human(float64(stats.Bytes)/max(took.Seconds(), 1e-3)) + "/s", "retries", stats.Retries}
	if stats.Replaced > 0 {
		attrs = append(attrs, "replaced", stats.Replaced)
	}
	switch {
	case err == nil:
		log.Info("stream end", attrs...)
	case errors.Is(context.Cause(p.ctx), task.ErrStopped):
		log.Info("stream end: task paused or removed", attrs...)
		panic(http.ErrAbortHandler)
	case r.Context().Err() != nil, errors.Is(err, engine.ErrPlayerGone):
		log.Info("stream end: player left", attrs...)
	default:
		log.Info("stream end: failed", attrs...)
		if p.task != nil {
			p.task.Fail(err)
		}
		if !out.sent {
			for _, name := range entityHeaders {
				w.Header().Del(name) // they described the answer that is not coming
			}
			status, reason := upstreamFailure(err)
			failPlay(w, log, p.link, status, reason)
			return
		}
		playFailed(log, p.link, out.status, fmt.Sprintf("cut after %d bytes: %v", stats.Bytes, err))
		// The player has part of the answer: cut the connection, so it cannot take the rest for whole.
		panic(http.ErrAbortHandler)
	}
}

// entityHeaders describe a stream's body; an error answered instead of it must not carry them.
var entityHeaders = []string{"Content-Range", "Content-Length", "Content-Disposition", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges"}

// lazyHeader sends the status line with the first byte of the body, and counts the bytes a task's
// player takes.
type lazyHeader struct {
	w      http.ResponseWriter
	status int
	sent   bool
	task   *task.Stream // nil for ?url=
}

func (l *lazyHeader) Write(b []byte) (int, error) {
	if !l.sent {
		l.sent = true
		l.w.WriteHeader(l.status)
	}
	n, err := l.w.Write(b)
	if l.task != nil {
		l.task.Delivered(int64(n))
	}
	return n, err
}

// Flush sends what is buffered; a broken connection shows at the next Write.
func (l *lazyHeader) Flush() { _ = http.NewResponseController(l.w).Flush() }

// SetWriteDeadline lets the engine cut a write the player is slow to take when the stream must end.
func (l *lazyHeader) SetWriteDeadline(t time.Time) error {
	return http.NewResponseController(l.w).SetWriteDeadline(t)
}

// upstreamFailure is the status and reason for a player when the upstream fails: its own 4xx status,
// 504 for a timeout, 502 for the rest.
func upstreamFailure(err error) (int, string) {
	var status *upstream.StatusError
	var netErr *upstream.NetError
	var refused *access.RefusedError
	switch {
	case errors.As(err, &refused):
		return http.StatusForbidden, refused.Error()
	case errors.As(err, &status) && status.Code >= 400 && status.Code < 500:
		return status.Code, status.Error()
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "upstream timed out: " + err.Error()
	case errors.As(err, &netErr):
		return http.StatusBadGateway, "upstream unreachable: " + err.Error()
	default:
		return http.StatusBadGateway, err.Error()
	}
}

// fileName is the name the player is told: the task's, else the last path segment of the link, or of where
// it redirected when the link's own has no extension.
func fileName(l link.Link, meta *link.Meta) string {
	if l.Name != "" {
		return l.Name
	}
	name := baseName(l.URL)
	if path.Ext(name) == "" {
		if final := baseName(meta.URL); path.Ext(final) != "" {
			name = final
		}
	}
	return name
}

func baseName(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	name := path.Base(u.Path)
	if name == "/" || name == "." {
		return ""
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

func disposition(l link.Link, meta *link.Meta, name string) string {
	if meta.Disposition != "" && l.Name == "" {
		return meta.Disposition
	}
	if name == "" {
		return "inline"
	}
	return mime.FormatMediaType("inline", map[string]string{"filename": name})
}
