package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"mflow/internal/access"
	"mflow/internal/httprange"
	"mflow/internal/openlist"
	"mflow/internal/play"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

// serveStream answers a request that plays, what named tells it names.
func (s *Server) serveStream(named func(http.ResponseWriter, *http.Request) (request, bool)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { s.stream(w, r, named) }
}

func (s *Server) stream(w http.ResponseWriter, r *http.Request, named func(http.ResponseWriter, *http.Request) (request, bool)) {
	if n := s.playing.Add(1); s.MaxStreams > 0 && n > int64(s.MaxStreams) {
		s.playing.Add(-1)
		w.Header().Set("Retry-After", "5")
		fail(w, http.StatusServiceUnavailable, fmt.Sprintf("%d streams are playing, the most mflow plays at once (--max-streams)", s.MaxStreams))
		return
	}
	defer s.playing.Add(-1)
	if viaMflow(r.Header.Values("Via")) {
		fail(w, http.StatusLoopDetected, "the request came through mflow already: a chain of mflows would multiply every request to the drive")
		return
	}
	req, ok := named(w, r)
	if !ok {
		return
	}
	if req.task != nil {
		defer req.task.End()
	}
	ranges := httprange.ParseRanges(r.Header.Get("Range"))
	req.First = firstRange(r, ranges)
	pb, err := s.Play.Open(req.ctx, req.Request)
	if err != nil {
		if r.Context().Err() == nil { // the player waits for an answer, whatever else ended the stream
			s.failPlay(w, r, req.Request, err)
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
	h.Set("Content-Type", file.ContentType)
	h.Set("Content-Disposition", file.Disposition)
	for _, v := range []struct{ name, value string }{{"ETag", file.Version.ETag}, {"Last-Modified", file.Version.LastModified}} {
		if v.value != "" {
			h.Set(v.name, v.value)
		}
	}
	version := validatorsOf(file.Version)
	switch precondition(r, version) {
	case http.StatusNotModified:
		// As ServeContent: no entity headers, and the date only when there is no ETag to go by.
		h.Del("Content-Type")
		if h.Get("ETag") != "" {
			h.Del("Last-Modified")
		}
		w.WriteHeader(http.StatusNotModified)
		return
	case http.StatusPreconditionFailed:
		h.Del("Content-Type")
		h.Del("Content-Disposition")
		fail(w, http.StatusPreconditionFailed, "the file is not the version the request names (If-Match or If-Unmodified-Since)")
		return
	}
	if size == 0 { // nothing to range over: servers that support Range answer 200 here too
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	if size < 0 { // relayed as it comes, ranges ignored
		h.Set("Accept-Ranges", "none")
		if r.Method == http.MethodHead {
			return
		}
		s.play(w, r, req, pb, http.StatusOK, nil, httprange.Span{Start: 0, End: -1})
		return
	}
	h.Set("Accept-Ranges", "bytes")
	if !version.rangeApplies(r.Header.Get("If-Range")) {
		ranges = httprange.Ranges{} // the whole file
	}
	spans, kind := ranges.Spans(size)
	status, length := http.StatusOK, size
	var parts *multipartBody
	switch kind {
	case httprange.Unsatisfiable:
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		fail(w, http.StatusRequestedRangeNotSatisfiable, fmt.Sprintf("range %q is past the end of the %d-byte file", r.Header.Get("Range"), size))
		return
	case httprange.Partial:
		status, length = http.StatusPartialContent, spans[0].Len()
		h.Set("Content-Range", spans[0].ContentRange(size))
	case httprange.Multipart:
		parts = newMultipartBody(spans, file.ContentType, size)
		status, length = http.StatusPartialContent, parts.length()
		h.Set("Content-Type", "multipart/byteranges; boundary="+parts.boundary)
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	s.play(w, r, req, pb, status, parts, spans...)
}

// firstRange is the player's first range as known before the file's size, for the probe to ask for its
// first bytes (play.Request.First). A HEAD, an If-Range (the whole file may be sent instead) and a suffix
// range (bytes=-N: where it starts needs the size) probe the first byte only (Start < 0).
func firstRange(r *http.Request, ranges httprange.Ranges) httprange.Span {
	none := httprange.Span{Start: -1, End: -1}
	if r.Method != http.MethodGet || r.Header.Get("If-Range") != "" {
		return none
	}
	sp, ok := ranges.First()
	if !ok {
		return none
	}
	return sp
}

// play plays spans with status, sent with the first byte, so a stream that fails before any byte still
// gets an error status; parts, when set, makes them the parts of a multipart answer. A stream that ends
// early after its first byte is cut, so the player cannot take part for whole.
func (s *Server) play(w http.ResponseWriter, r *http.Request, req request, pb *play.Playback, status int, parts *multipartBody, spans ...httprange.Span) {
	out := &lazyHeader{w: w, r: r, status: status, idle: s.PlayerTimeout}
	var body io.Writer = out
	if parts != nil {
		parts.w = out
		body = parts
	}
	res := pb.Play(req.ctx, body, r.RemoteAddr, spans...)
	// A stream that ended early may have cut the player's writes; what is still to be written must go out.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	switch {
	case res.Outcome == play.Done && parts != nil:
		if err := parts.close(); err != nil {
			cut(w, r)
		}
	case res.Outcome == play.Done:
	case !out.sent && res.Outcome != play.Left:
		for _, name := range entityHeaders {
			w.Header().Del(name) // they described the answer that is not coming
		}
		s.failPlay(w, r, req.Request, res.Err)
	default:
		if res.Outcome == play.UpstreamFailed {
			s.playFailed(r, req.Request, out.status, fmt.Sprintf("cut after %d bytes: %v", res.Stats.Bytes, res.Err))
		}
		cut(w, r)
	}
}

// cut ends an answer that cannot be finished by resetting its connection (linger 0): what the kernel still
// holds for the player is dropped rather than delivered, so a paused film stops at once and a player never
// takes a broken answer's end for the file's. An answer that cannot be hijacked (HTTP/2) is aborted.
func cut(w http.ResponseWriter, r *http.Request) {
	resetOnClose(r)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	conn.Close()
}

// connKey keeps a request's connection in its context (ConnContext).
type connKey struct{}

// ConnContext, as an http.Server's ConnContext, keeps each connection within reach of its requests, so
// that a stream cut short can reset it: net/http closes a connection whose write failed, and only a reset
// drops what its buffers still hold for the player.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// resetOnClose makes the closing of r's connection a reset (RST), not an orderly end after what is still
// buffered. Without ConnContext it does nothing.
func resetOnClose(r *http.Request) {
	if c, ok := r.Context().Value(connKey{}).(interface{ SetLinger(int) error }); ok {
		_ = c.SetLinger(0)
	}
}

// viaMflow reports whether a request's Via headers name mflow: it came through an mflow already.
func viaMflow(via []string) bool {
	for _, v := range via {
		for hop := range strings.SplitSeq(v, ",") {
			if fields := strings.Fields(hop); len(fields) >= 2 && fields[1] == upstream.ViaToken {
				return true
			}
		}
	}
	return false
}

// playFailed is the one WARN line of a play that failed: which link, what the player was told, and why;
// the status page lists it too.
func (s *Server) playFailed(r *http.Request, req play.Request, status int, reason string) {
	log := req.Logger
	if log == nil {
		log = s.logger()
	}
	var file string
	attrs := []any{"status", status, "why", reason}
	if req.Link.URL != "" {
		file = upstream.Redact(req.Link.URL)
		attrs = append([]any{"file", file}, attrs...)
	}
	log.Warn("play failed", attrs...)
	s.Play.Failed(play.FailedPlay{At: time.Now(), File: file, Task: req.Task, Player: r.RemoteAddr, Status: status, Reason: reason})
}

// refuse answers a play of task gid that cannot begin (unknown, paused), and logs it as a failed play.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, gid string, status int, reason string) {
	s.playFailed(r, play.Request{Task: gid, Logger: s.logger().With("gid", gid)}, status, reason)
	fail(w, status, reason)
}

// failPlay answers a play that failed before its first byte with the status and reason err means, and
// logs it.
func (s *Server) failPlay(w http.ResponseWriter, r *http.Request, req play.Request, err error) {
	status, reason := failure(err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	s.playFailed(r, req, status, reason)
	fail(w, status, reason)
}

// ErrShuttingDown ends the streams when mflow stops: give it as the cause of the base context's end.
var ErrShuttingDown = errors.New("mflow is shutting down")

// failure is the status and reason a player is told when its play fails: the upstream's own 4xx status,
// 403 for a refused target or an upstream without Range, 503 for a task paused or removed meanwhile or
// mflow stopping, 504 for a timeout, 502 for the rest.
func failure(err error) (int, string) {
	var api *openlist.APIError
	var unreachable *openlist.Unreachable
	switch {
	case errors.As(err, &api) && api.NotFound():
		return http.StatusNotFound, err.Error()
	case errors.As(err, &api) && api.Unauthorized():
		return http.StatusBadGateway, err.Error() + ": OpenList refused mflow's --openlist-token"
	case errors.As(err, &api), errors.As(err, &unreachable):
		return http.StatusBadGateway, err.Error()
	case errors.Is(err, play.ErrNoRanges):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, task.ErrStopped), errors.Is(err, ErrShuttingDown):
		return http.StatusServiceUnavailable, err.Error()
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
