// Package server is mflow's HTTP edge: it reads what a player asks for, answers with the right status and
// headers, and hands the body to the engine.
package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"mflow/internal/access"
	"mflow/internal/openlist"
	"mflow/internal/play"
	"mflow/internal/task"
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
`, s.Version, s.Play.Connections(), r.Host)
}

// fail answers with status and a one-line reason.
func fail(w http.ResponseWriter, status int, reason string) {
	http.Error(w, "mflow: "+reason, status)
}
