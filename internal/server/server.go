// Package server is mflow's HTTP edge: it reads what a player asks for, answers with the right status and
// headers, and hands the body to the engine.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mflow/internal/access"
	"mflow/internal/httprange"
	"mflow/internal/openlist"
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
	// OpenList, when set, makes /openlist/PATH?sign= OpenList's download proxy (--openlist): the sign
	// is checked, and the file played where OpenList says it is.
	OpenList *openlist.Client
	// RPC, when set, answers /jsonrpc.
	RPC http.Handler
	// Metrics, when set, answers /metrics; Status, when set, /status and /status.json. Both go through
	// Guard, the JSON-RPC's access rules; without a Guard they answer this machine only.
	Metrics http.Handler
	Status  http.Handler
	Guard   func(http.Handler) http.Handler
	// Login, when set, answers POST /login: the status page's form for the RPC secret.
	Login http.HandlerFunc
	// Version is shown on the index page.
	Version string
	// MaxStreams bounds the streams playing at once; one more is answered 503 with Retry-After. 0 is no
	// bound.
	MaxStreams int
	// Hosts are the names requests may carry in Host besides IP literals and localhost (this machine's
	// and --allow-host's); a request for any other name is refused, as a web page whose name was made to
	// resolve here would send it (DNS rebinding).
	Hosts access.Hosts
	// Proxies are the reverse proxies trusted to say who their client is (--trusted-proxy): a request from
	// one is judged, everywhere, by the client it forwards for.
	Proxies access.Proxies
	// Prefixes, when set, reports whether a request's client may name a task by a prefix of its GID (the
	// clients the JSON-RPC answers); for any other, a prefix is answered as an unknown GID. Nil: none may.
	Prefixes func(*http.Request) bool
	// PlayerTimeout, when set, cuts a player that takes no byte of its answer for that long, freeing its
	// stream (--player-timeout). A paused player that resumes later asks again with a Range.
	PlayerTimeout time.Duration
	// Logger receives the WARN line of every play that fails. Default slog.Default().
	Logger *slog.Logger

	playing atomic.Int64 // /stream requests being answered now
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	return s.recoverPanics(s.realClient(s.checkHost(s.routes())))
}

// realClient makes a request from a trusted proxy the request of the client it forwards for, for every
// route and every rule after it: who may use the JSON-RPC, what a player may reach, what the log says.
func (s *Server) realClient(next http.Handler) http.Handler {
	if !s.Proxies.Any() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if client := s.Proxies.ClientAddr(r); client != r.RemoteAddr {
			r = r.WithContext(r.Context())
			r.RemoteAddr = client
		}
		next.ServeHTTP(w, r)
	})
}

// checkHost refuses a request whose Host is not this machine's: a page of another site whose name was made
// to resolve to this machine would otherwise be "same origin", read the tasks' cookies and reach through
// /stream what listens on this machine.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Hosts.Allows(r.Host) {
			fail(w, http.StatusForbidden, fmt.Sprintf("Host %q is not a name of this machine; start mflow with --allow-host NAME to answer it (a guard against DNS rebinding)", r.Host))
			return
		}
		next.ServeHTTP(w, r)
	})
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
	if s.Login != nil {
		mux.Handle("POST /login", s.Login)
	}
	if s.Status != nil {
		mux.Handle("GET /status", s.guard(s.Status))
		mux.Handle("GET /status.json", s.guard(s.Status))
	}
	// /stream/NAME.EXT is /stream under a name of the holder's choosing: Kodi, Infuse and strm files pick
	// the player by the extension in the path.
	for _, route := range []string{"/stream", "/stream/{name...}"} {
		mux.HandleFunc("GET "+route, s.serveStream(s.streamRequest))
		mux.HandleFunc(route, getOrHead)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// An OpenList setting that ends in / doubles the path's slash; the mux would redirect such a path
		// to its clean form, one more round trip for each of a player's many requests.
		if strings.HasPrefix(r.URL.Path, "/openlist/") {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				getOrHead(w, r)
				return
			}
			s.serveStream(s.openListRequest)(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// getOrHead refuses a request of another method on a path that plays.
func getOrHead(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "GET, HEAD")
	fail(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed on %s; use GET or HEAD", r.Method, r.URL.Path))
}

// guard applies Guard, or answers this machine only.
func (s *Server) guard(next http.Handler) http.Handler {
	if s.Guard != nil {
		return s.Guard(next)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if access.NetworkOf(r.RemoteAddr) != access.Loopback {
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
GET|HEAD /stream/NAME.EXT?url=URL (or ?gid=GID)   the same, named for players that go by the extension
GET|HEAD /stream/GID/NAME.EXT   a task's play link, as tellStatus gives it in files[0].path
GET|HEAD /openlist/PATH?sign=SIGN   OpenList's download proxy (--openlist)
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
	task *task.Session
}

// streamRequest reads what a /stream request names, or answers why it cannot be played.
func (s *Server) streamRequest(w http.ResponseWriter, r *http.Request) (request, bool) {
	from := access.NetworkOf(r.RemoteAddr) // the player's reach, not a task adder's
	q := r.URL.Query()
	gid := q.Get("gid")
	if gid == "" && r.URL.RawQuery == "" {
		gid = pathGID(r.PathValue("name"))
	}
	if gid != "" {
		if s.Tasks == nil {
			fail(w, http.StatusNotFound, fmt.Sprintf("no task with gid %q: the JSON-RPC is off", gid))
			return request{}, false
		}
		if len(gid) < 16 && (s.Prefixes == nil || !s.Prefixes(r)) {
			// A GID is the capability to play its task: only the JSON-RPC's clients may look one up by a
			// prefix. Any other is told what an unknown GID is told, and nothing is asked of the drive.
			s.refuse(w, r, gid, http.StatusNotFound, (&task.Error{GID: gid, Err: task.ErrNotFound}).Error())
			return request{}, false
		}
		st, err := s.Tasks.Begin(r.Context(), gid)
		switch {
		case errors.Is(err, task.ErrPaused):
			w.Header().Set("Retry-After", "10")
			s.refuse(w, r, gid, http.StatusServiceUnavailable, err.Error()+"; unpause it to stream")
			return request{}, false
		case errors.Is(err, task.ErrUnavailable):
			w.Header().Set("Retry-After", "5")
			s.refuse(w, r, gid, http.StatusServiceUnavailable, err.Error())
			return request{}, false
		case err != nil:
			s.refuse(w, r, gid, http.StatusNotFound, err.Error())
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
	header, err := headerParams(q["header"])
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return request{}, false
	}
	l := source.Link{Location: source.Location{URL: u.String(), Header: header, From: from}, Name: nameParam(r)}
	return request{Request: play.Request{Link: l, Logger: s.logger()}, ctx: r.Context()}, true
}

// pathGID is the task a /stream/GID/NAME path names, "" when its first segment is not a whole GID: the
// play link tellStatus gives as a task's path, which AriaNg names by its last segment.
func pathGID(name string) string {
	first, rest, ok := strings.Cut(name, "/")
	if !ok || rest == "" || len(first) != 16 || strings.Trim(first, "0123456789abcdef") != "" {
		return ""
	}
	return first
}

// nameParam is the file name a /stream/NAME request names, "" for /stream.
func nameParam(r *http.Request) string {
	name := path.Base(r.PathValue("name"))
	if name == "." || name == "/" {
		return ""
	}
	return name
}

// maxHeaderParams bounds the header= parameters of one link.
const maxHeaderParams = 32

// headerParams reads a link's own upstream headers, header=Name:%20value parameters: what a strm file
// that no RPC call prepared carries (a drive's Cookie, Referer, User-Agent).
func headerParams(lines []string) (http.Header, error) {
	if len(lines) == 0 {
		return nil, nil
	}
	if len(lines) > maxHeaderParams {
		return nil, fmt.Errorf("%d header parameters; a link may carry at most %d", len(lines), maxHeaderParams)
	}
	h := http.Header{}
	for _, line := range lines {
		name, value, ok := strings.Cut(line, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || !validHeader(name, value) {
			return nil, fmt.Errorf("header parameter %q is not a header: want header=Name:%%20value", line)
		}
		h.Add(name, value)
	}
	return upstream.CleanHeader(h), nil
}

// validHeader reports whether name is an HTTP token and value holds no control character: a header that
// can go upstream as written.
func validHeader(name, value string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return !strings.ContainsFunc(value, func(c rune) bool { return c < ' ' && c != '\t' || c == 0x7f })
}

// openListRequest reads what an OpenList download proxy request names: /openlist/PATH?sign=SIGN, where
// PATH is OpenList's path of the file, signed with the token mflow shares with OpenList.
func (s *Server) openListRequest(w http.ResponseWriter, r *http.Request) (request, bool) {
	if s.OpenList == nil {
		fail(w, http.StatusNotFound, "this mflow is not an OpenList download proxy: start it with --openlist URL --openlist-token TOKEN")
		return request{}, false
	}
	file := "/" + strings.TrimLeft(strings.TrimPrefix(r.URL.Path, "/openlist"), "/")
	log := s.logger().With("openlist", file)
	req := play.Request{Logger: log}
	if err := s.OpenList.Check(file, r.URL.Query().Get("sign")); err != nil {
		status := http.StatusForbidden
		if se := (*openlist.SignError)(nil); errors.As(err, &se) && se.Garbled {
			status = http.StatusBadRequest
		}
		s.playFailed(r, req, status, err.Error())
		fail(w, status, err.Error())
		return request{}, false
	}
	from := access.NetworkOf(r.RemoteAddr)
	linkOf := func(d openlist.DriveLink) source.Link {
		// OpenList chose the link, not the player: it may lead where OpenList stands.
		return source.Link{Location: source.Location{URL: d.URL, Header: upstream.CleanHeader(d.Header), From: max(from, d.Reach)}, Name: path.Base(file)}
	}
	d, err := s.OpenList.Link(r.Context(), file)
	if err != nil {
		if r.Context().Err() == nil {
			s.failPlay(w, r, req, err)
		}
		return request{}, false
	}
	req.Link = linkOf(d)
	req.Identity = source.OpenListIdentity(file, from)
	req.Relink = func(ctx context.Context, stale source.Link) (source.Link, error) {
		d, err := s.OpenList.Renew(ctx, file, stale.URL)
		if err != nil {
			return source.Link{}, err
		}
		return linkOf(d), nil
	}
	return request{Request: req, ctx: r.Context()}, true
}

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
	req.First = s.firstRequest(r)
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
	rangeHeader := r.Header.Get("Range")
	if !version.rangeApplies(r.Header.Get("If-Range")) {
		rangeHeader = ""
	}
	spans, kind := httprange.ParseRequest(rangeHeader, size)
	status, length := http.StatusOK, size
	var parts *multipartBody
	switch kind {
	case httprange.Unsatisfiable:
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		fail(w, http.StatusRequestedRangeNotSatisfiable, fmt.Sprintf("range %q is past the end of the %d-byte file", rangeHeader, size))
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

// entityHeaders describe a stream's body; an error answered instead of it must not carry them.
var entityHeaders = []string{"Content-Range", "Content-Length", "Content-Disposition", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges"}

// lazyHeader sends the status line with the first byte of the body, and cuts a player that takes nothing
// for its idle time.
type lazyHeader struct {
	w      http.ResponseWriter
	r      *http.Request
	status int
	sent   bool
	// idle, when set, is how long a player may take no byte before it is cut (--player-timeout): a player
	// paused for long, or one that never reads, would otherwise hold its stream and its slot.
	idle time.Duration

	mu  sync.Mutex // protects cut, and the write deadline's setting
	cut bool       // the engine set a deadline to end the stream: no idle deadline replaces it
}

// idleStep is the most written under one idle deadline: a player reading slowly but steadily makes
// progress within each step and is never cut.
const idleStep = 64 << 10

func (l *lazyHeader) Write(b []byte) (int, error) {
	if !l.sent {
		l.sent = true
		l.w.WriteHeader(l.status)
	}
	if l.idle <= 0 {
		return l.w.Write(b)
	}
	written := 0
	for len(b) > 0 {
		step := b[:min(len(b), idleStep)]
		l.mu.Lock()
		if !l.cut {
			_ = http.NewResponseController(l.w).SetWriteDeadline(time.Now().Add(l.idle))
		}
		l.mu.Unlock()
		n, err := l.w.Write(step)
		written += n
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				resetOnClose(l.r) // drop what the kernel still holds for a player that took nothing
			}
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

// Flush sends what is buffered; a broken connection shows at the next Write.
func (l *lazyHeader) Flush() { _ = http.NewResponseController(l.w).Flush() }

// SetWriteDeadline lets the engine cut a write the player is slow to take when the stream must end. The
// connection is then reset, not closed: net/http closes it at once when the write fails.
func (l *lazyHeader) SetWriteDeadline(t time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !t.IsZero() {
		l.cut = true
		resetOnClose(l.r)
	}
	return http.NewResponseController(l.w).SetWriteDeadline(t)
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
