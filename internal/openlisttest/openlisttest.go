// Package openlisttest is a stand-in for OpenList in tests and the benchmark, written from its protocol
// (OpenList cannot be installed here): a storage whose "Download proxy URL" is set, with "Web proxy" on
// and the WebDAV policy "use proxy URL". It signs paths with its token, answers POST /api/fs/link in
// OpenList's envelope, redirects GET /d/PATH and its WebDAV share's GETs (/dav/PATH) to the proxy, and
// lists the share over WebDAV (PROPFIND) as OpenList does.
package openlisttest

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/webdav"

	"mflow/internal/openlist"
)

// Options shape the stand-in.
type Options struct {
	// Token is OpenList's token: it signs the redirects and must come with every API call.
	Token string
	// Files are the share's files, by OpenList path ("/films/a film.mkv"), and their sizes.
	Files map[string]int64
	// Link is where a file is now, as /api/fs/link answers: the drive's URL and the headers it wants.
	Link func(path string) (string, http.Header)
	// Expire, when set, is the signs' life (OpenList's "link expiration"); 0 signs never expire.
	Expire time.Duration
}

// Server is a running stand-in. SetProxyURL before a client follows a redirect.
type Server struct {
	*httptest.Server
	opts     Options
	proxyURL atomic.Pointer[string] // the storage's Download proxy URL: known once the proxy listens

	calls atomic.Int64 // API calls answered
	mu    sync.Mutex   // protects fail
	fail  map[string]apiAnswer
}

// apiAnswer is an error envelope for /api/fs/link.
type apiAnswer struct {
	Code    int
	Message string
}

// New starts a stand-in.
func New(opts Options) *Server {
	s := &Server{opts: opts, fail: map[string]apiAnswer{}}
	dav := &webdav.Handler{Prefix: "/dav", FileSystem: share(opts.Files), LockSystem: webdav.NewMemLS()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/fs/link", s.serveLink)
	mux.HandleFunc("GET /d/{path...}", s.serveRedirect("/d"))
	mux.Handle("/dav/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			if _, ok := opts.Files[strings.TrimPrefix(r.URL.Path, "/dav")]; ok {
				s.serveRedirect("/dav")(w, r)
				return
			}
		}
		dav.ServeHTTP(w, r)
	}))
	s.Server = httptest.NewServer(mux)
	return s
}

// SetProxyURL sets the storage's Download proxy URL, such as http://127.0.0.1:6800/openlist.
func (s *Server) SetProxyURL(u string) { s.proxyURL.Store(&u) }

// Calls is how many /api/fs/link calls were answered.
func (s *Server) Calls() int64 { return s.calls.Load() }

// Fail makes the API answer code and message for path from now on, as OpenList does for a file gone
// (500, "object not found") or a bad token (401).
func (s *Server) Fail(p string, code int, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[p] = apiAnswer{code, message}
}

// Sign signs p as OpenList does for its redirects.
func (s *Server) Sign(p string) string {
	var expire int64
	if s.opts.Expire > 0 {
		expire = time.Now().Add(s.opts.Expire).Unix()
	}
	return openlist.Sign(s.opts.Token, p, expire)
}

// ProxyLink is where OpenList redirects a client for p: the proxy URL, p with each segment
// percent-encoded, and the sign.
func (s *Server) ProxyLink(p string) string {
	base := ""
	if u := s.proxyURL.Load(); u != nil {
		base = *u
	}
	return base + EncodePath(p) + "?sign=" + url.QueryEscape(s.Sign(p))
}

// EncodePath percent-encodes each segment of p, as OpenList writes paths into links.
func EncodePath(p string) string {
	segments := strings.Split(p, "/")
	for i, seg := range segments {
		segments[i] = url.PathEscape(seg)
	}
	return strings.Join(segments, "/")
}

// serveRedirect answers a GET of a file under prefix with OpenList's 302 to the download proxy.
func (s *Server) serveRedirect(prefix string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, prefix)
		if _, ok := s.opts.Files[p]; !ok {
			http.Error(w, "object not found", http.StatusNotFound)
			return
		}
		http.Redirect(w, r, s.ProxyLink(p), http.StatusFound)
	}
}

// serveLink is POST /api/fs/link: {"path": P} with the raw token as Authorization.
func (s *Server) serveLink(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	answer := func(code int, message string, data any) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"code": code, "message": message, "data": data})
	}
	if r.Header.Get("Authorization") != s.opts.Token {
		answer(401, "token is invalidated", nil)
		return
	}
	var req struct {
		Path string `json:"path"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		answer(400, err.Error(), nil)
		return
	}
	s.mu.Lock()
	fail, failing := s.fail[req.Path]
	s.mu.Unlock()
	if failing {
		answer(fail.Code, fail.Message, nil)
		return
	}
	if _, ok := s.opts.Files[req.Path]; !ok {
		answer(500, "failed get link: object not found", nil)
		return
	}
	u, h := s.opts.Link(req.Path)
	answer(200, "success", map[string]any{"url": u, "header": h})
}

// share is the WebDAV listing of files: folders and sizes, read-only. Its files hold no bytes: their GETs
// are redirected before they reach it.
func share(files map[string]int64) webdav.FileSystem {
	fs := webdav.NewMemFS()
	ctx := context.Background()
	for _, p := range slices.Sorted(maps.Keys(files)) {
		// The folders, from the root down: Mkdir makes one level.
		parts := strings.Split(strings.Trim(path.Dir(p), "/"), "/")
		for i := range parts {
			_ = fs.Mkdir(ctx, "/"+strings.Join(parts[:i+1], "/"), 0o755)
		}
		f, err := fs.OpenFile(ctx, p, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			panic(err)
		}
		// A sparse stand-in of the size: the listing shows it, nobody reads it.
		if files[p] > 0 {
			if _, err := f.Seek(files[p]-1, 0); err == nil {
				f.Write([]byte{0})
			}
		}
		f.Close()
	}
	return fs
}
