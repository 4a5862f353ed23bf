package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"

	"mflow/internal/access"
	"mflow/internal/openlist"
	"mflow/internal/play"
	"mflow/internal/source"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

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
