// Package server is mflow's HTTP edge: it reads what a player asks for, answers with the right status and
// headers, and hands the body to the engine.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"mflow/internal/access"
	"mflow/internal/httprange"
	"mflow/internal/play"
	"mflow/internal/source"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

// Server answers GET / and GET or HEAD /stream. Its fields are set before it serves.
type Server struct {
	// Play plays what players ask for.
	Play *play.Service
	// Tasks holds the tasks /stream?gid= plays; nil knows no gid.
	Tasks *task.Registry
	// RPC, when set, answers /jsonrpc.
	RPC http.Handler
	// Metrics, when set, answers /metrics; Status, when set, /status and /status.json. Both go through
	// Guard, the JSON-RPC's access rules; without a Guard they answer this machine only.
	Metrics http.Handler
	Status  http.Handler
	Guard   func(http.Handler) http.Handler
	// Version is shown on the index page.
	Version string
	// MaxStreams bounds the streams playing at once; one more is answered 503 with Retry-After. 0 is no
	// bound.
	MaxStreams int
	// Logger receives the WARN line of every play that fails. Default slog.Default().
	Logger *slog.Logger

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
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.guard(s.Metrics))
	}
	if s.Status != nil {
		mux.Handle("GET /status", s.guard(s.Status))
		mux.Handle("GET /status.json", s.guard(s.Status))
	}
	mux.HandleFunc("GET /stream", s.serveStream)
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "GET, HEAD")
		fail(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on /stream; use GET or HEAD")
	})
	return mux
}

// guard applies Guard, or answers this machine only.
func (s *Server) guard(next http.Handler) http.Handler {
	if s.Guard != nil {
		return s.Guard(next)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if access.ClientOf(r.RemoteAddr) != access.Loopback {
			fail(w, http.StatusForbidden, "this page answers this machine only")
			return
		}
		next.ServeHTTP(w, r)
	})
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
GET /status                what plays now, the tasks, the cache (/status.json for programs)
GET /metrics               Prometheus metrics
`, s.Version, s.Play.Engine.Connections, r.Host)
}

// fail answers with status and a one-line reason.
func fail(w http.ResponseWriter, status int, reason string) {
	http.Error(w, "mflow: "+reason, status)
}

// request is what one /stream request plays: a play.Request, within ctx, and the task's stream for
// ?gid= (nil for ?url=), which must be ended.
type request struct {
	play.Request
	ctx  context.Context // ends with the player, or when the task is paused or removed
	task *task.Stream
}

// requestOf reads what a /stream request names, or answers why it cannot be played.
func (s *Server) requestOf(w http.ResponseWriter, r *http.Request) (request, bool) {
	from := access.ClientOf(r.RemoteAddr) // the player's reach, not a task adder's
	q := r.URL.Query()
	if gid := q.Get("gid"); gid != "" {
		if s.Tasks == nil {
			fail(w, http.StatusNotFound, fmt.Sprintf("no task with gid %q: the JSON-RPC is off", gid))
			return request{}, false
		}
		st, err := s.Tasks.Begin(r.Context(), gid)
		switch {
		case errors.Is(err, task.ErrPaused):
			w.Header().Set("Retry-After", "10")
			fail(w, http.StatusServiceUnavailable, err.Error()+"; unpause it to stream")
			return request{}, false
		case errors.Is(err, task.ErrUnavailable):
			w.Header().Set("Retry-After", "5")
			fail(w, http.StatusServiceUnavailable, err.Error())
			return request{}, false
		case err != nil:
			fail(w, http.StatusNotFound, err.Error())
			return request{}, false
		}
		l := st.Link
		l.From = from
		return request{
			Request: play.Request{Link: l, Identity: source.TaskIdentity(st.GID, from), Connections: st.Spec.Connections, MinSpeed: st.Spec.MinSpeed,
				Tally: st, Task: st.GID, Logger: s.logger().With("gid", st.GID)},
			ctx: st.Context, task: st,
		}, true
	}
	raw := q.Get("url")
	// A link pasted as is keeps its own query: "?url=https://host/f?a=1&b=2" means all of it.
	if rest, ok := strings.CutPrefix(r.URL.RawQuery, "url="); ok && (strings.HasPrefix(rest, "http://") || strings.HasPrefix(rest, "https://")) {
		raw = rest
	}
	if raw == "" {
		fail(w, http.StatusBadRequest, "missing url or gid parameter, as in /stream?url=https://example.com/video.mp4")
		return request{}, false
	}
	u, err := url.Parse(raw)
	if err != nil {
		fail(w, http.StatusBadRequest, fmt.Sprintf("url parameter is not a URL: %v", err))
		return request{}, false
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fail(w, http.StatusBadRequest, fmt.Sprintf("url must be an absolute http or https URL, not %q", raw))
		return request{}, false
	}
	l := source.Link{Location: source.Location{URL: u.String(), From: from}}
	return request{Request: play.Request{Link: l, Logger: s.logger()}, ctx: r.Context()}, true
}

func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	if n := s.playing.Add(1); s.MaxStreams > 0 && n > int64(s.MaxStreams) {
		s.playing.Add(-1)
		w.Header().Set("Retry-After", "5")
		fail(w, http.StatusServiceUnavailable, fmt.Sprintf("%d streams are playing, the most mflow plays at once (--max-streams)", s.MaxStreams))
		return
	}
	defer s.playing.Add(-1)
	req, ok := s.requestOf(w, r)
	if !ok {
		return
	}
	if req.task != nil {
		defer req.task.End()
	}
	req.First = s.firstRequest(r)
	pb, err := s.Play.Open(req.ctx, req.Request)
	if err != nil {
		if req.ctx.Err() == nil {
			status, reason := failure(err)
			s.failPlay(w, req.Request, status, reason)
		}
		return
	}
	defer pb.Close()
	file := pb.File
	size := file.Version.Size
	h := w.Header()
	// The bytes are the user's film, never a page of mflow's origin: no sniffing, no script.
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	if size == 0 { // nothing to range over: servers that support Range answer 200 here too
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", file.ContentType)
	h.Set("Content-Disposition", file.Disposition)
	for _, v := range []struct{ name, value string }{{"ETag", file.Version.ETag}, {"Last-Modified", file.Version.LastModified}} {
		if v.value != "" {
			h.Set(v.name, v.value)
		}
	}
	if size < 0 { // relayed as it comes, ranges ignored
		h.Set("Accept-Ranges", "none")
		if r.Method == http.MethodHead {
			return
		}
		s.play(w, r, req, pb, httprange.Span{Start: 0, End: -1}, http.StatusOK)
		return
	}
	h.Set("Accept-Ranges", "bytes")
	span, kind := httprange.ParseRequest(r.Header.Get("Range"), size)
	if kind != httprange.Whole && !ifRangeHolds(r.Header.Get("If-Range"), file.Version) {
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
	s.play(w, r, req, pb, span, status)
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
	return s.Play.Engine.FirstRequest(sp)
}

// play plays span with status, sent with the first byte, so a stream that fails before any byte still
// gets an error status; a stream that fails after it is cut, so the player cannot take part for whole.
func (s *Server) play(w http.ResponseWriter, r *http.Request, req request, pb *play.Playback, span httprange.Span, status int) {
	out := &lazyHeader{w: w, status: status}
	res := pb.Play(req.ctx, out, span, r.RemoteAddr)
	// A stream that ended early may have cut the player's writes; what is still to be written must go out.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	switch res.Outcome {
	case play.Stopped:
		panic(http.ErrAbortHandler)
	case play.Failed:
		if !out.sent {
			for _, name := range entityHeaders {
				w.Header().Del(name) // they described the answer that is not coming
			}
			status, reason := failure(res.Err)
			s.failPlay(w, req.Request, status, reason)
			return
		}
		s.playFailed(req.Request, out.status, fmt.Sprintf("cut after %d bytes: %v", res.Stats.Bytes, res.Err))
		panic(http.ErrAbortHandler)
	}
}

// playFailed is the one WARN line of a play that failed: which link, what the player was told, and why.
func (s *Server) playFailed(req play.Request, status int, reason string) {
	log := req.Logger
	if log == nil {
		log = s.logger()
	}
	log.Warn("play failed", "file", upstream.Redact(req.Link.URL), "status", status, "why", reason)
}

// failPlay answers a play that failed before its first byte, and logs it.
func (s *Server) failPlay(w http.ResponseWriter, req play.Request, status int, reason string) {
	s.playFailed(req, status, reason)
	fail(w, status, reason)
}

// ifRangeHolds reports whether an If-Range header (absent, or naming the current version) lets a Range
// apply; otherwise the whole file is sent.
func ifRangeHolds(ifRange string, v source.Version) bool {
	return ifRange == "" || (ifRange == v.ETag && !strings.HasPrefix(ifRange, "W/")) || ifRange == v.LastModified
}

// entityHeaders describe a stream's body; an error answered instead of it must not carry them.
var entityHeaders = []string{"Content-Range", "Content-Length", "Content-Disposition", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges"}

// lazyHeader sends the status line with the first byte of the body.
type lazyHeader struct {
	w      http.ResponseWriter
	status int
	sent   bool
}

func (l *lazyHeader) Write(b []byte) (int, error) {
	if !l.sent {
		l.sent = true
		l.w.WriteHeader(l.status)
	}
	return l.w.Write(b)
}

// Flush sends what is buffered; a broken connection shows at the next Write.
func (l *lazyHeader) Flush() { _ = http.NewResponseController(l.w).Flush() }

// SetWriteDeadline lets the engine cut a write the player is slow to take when the stream must end.
func (l *lazyHeader) SetWriteDeadline(t time.Time) error {
	return http.NewResponseController(l.w).SetWriteDeadline(t)
}

// failure is the status and reason a player is told when its play fails: the upstream's own 4xx status,
// 403 for a refused target or an upstream without Range, 504 for a timeout, 502 for the rest.
func failure(err error) (int, string) {
	if errors.Is(err, play.ErrNoRanges) {
		return http.StatusForbidden, err.Error()
	}
	f := upstream.Classify(err)
	switch {
	case f.Kind == upstream.KindRefused:
		var refused *access.RefusedError
		errors.As(err, &refused)
		return http.StatusForbidden, refused.Error()
	case f.Kind == upstream.KindStatus && f.Code >= 400 && f.Code < 500:
		var se *upstream.StatusError
		errors.As(err, &se)
		return f.Code, se.Error()
	case f.Kind == upstream.KindTimeout:
		return http.StatusGatewayTimeout, "upstream timed out: " + f.Message
	case f.Kind == upstream.KindUnreachable:
		return http.StatusBadGateway, "upstream unreachable: " + f.Message
	default:
		return http.StatusBadGateway, f.Message
	}
}
