package rpc

import (
	"net/url"
	"strconv"
	"strings"

	"mflow/internal/task"
)

func tellStatus(h *Handler, c call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	keys, err := p.keys(1)
	if err != nil {
		return nil, err
	}
	v, err := h.Tasks.Get(gid)
	if err != nil {
		return nil, err
	}
	return h.status(v, keys, c.origin), nil
}

func tellActive(h *Handler, c call, p params) (any, error) {
	keys, err := p.keys(0)
	if err != nil {
		return nil, err
	}
	active, _, _ := h.Tasks.Lists()
	return h.statuses(active, keys, c.origin), nil
}

// tellList answers tellWaiting and tellStopped: offset, num and keys over one of the store's lists. A
// negative offset counts from the end, and the list is then read backwards, as aria2 does.
func tellList(pick func(active, waiting, stopped []task.View) []task.View) method {
	return func(h *Handler, c call, p params) (any, error) {
		offset, err := p.integer(0)
		if err != nil {
			return nil, err
		}
		num, err := p.integer(1)
		if err != nil {
			return nil, err
		}
		keys, err := p.keys(2)
		if err != nil {
			return nil, err
		}
		list := pick(h.Tasks.Lists())
		var page []task.View
		if offset >= 0 {
			for i := offset; i < len(list) && len(page) < num; i++ {
				page = append(page, list[i])
			}
		} else {
			for i := len(list) + offset; i >= 0 && i < len(list) && len(page) < num; i-- {
				page = append(page, list[i])
			}
		}
		return h.statuses(page, keys, c.origin), nil
	}
}

// statuses is the tellStatus answers for views, written into the answer one task at a time.
func (h *Handler) statuses(views []task.View, keys []string, origin string) statusList {
	return statusList{h: h, views: views, keys: keys, origin: origin}
}

// statusList is a list of tasks' statuses, made as they are written.
type statusList struct {
	h      *Handler
	views  []task.View
	keys   []string
	origin string // where the client reached mflow (call.origin)
}

func (l statusList) writeTo(a *answer) error {
	return a.list(len(l.views), func(i int) error { return a.value(l.h.status(l.views[i], l.keys, l.origin)) })
}

// status is tellStatus's answer for v: every number a decimal string, as every client requires. origin
// is where the client reached mflow, for the task's play link.
func (h *Handler) status(v task.View, keys []string, origin string) map[string]any {
	size := max(v.Size, 0)
	piece := max(h.Defaults.PieceLength, 1)
	done := v.Delivered
	if v.Size >= 0 {
		done = min(done, v.Size)
	}
	m := map[string]any{
		"gid":             v.GID,
		"status":          statusNames[v.State],
		"totalLength":     itoa(size),
		"completedLength": itoa(done),
		"uploadLength":    "0",
		"uploadSpeed":     "0",
		"downloadSpeed":   itoa(v.Speed),
		"connections":     strconv.Itoa(h.connections(v)),
		"dir":             dirOf(v, h.Defaults),
		"pieceLength":     itoa(piece),
		"numPieces":       itoa((size + piece - 1) / piece),
		"files":           files(v, h.Defaults, origin),
	}
	switch v.State {
	case task.Failed:
		m["errorCode"], m["errorMessage"] = errorCode(v.Failure)
	case task.Removed:
		m["errorCode"], m["errorMessage"] = "31", ""
	}
	if len(keys) == 0 {
		return m
	}
	out := map[string]any{}
	for _, k := range keys {
		if val, ok := m[k]; ok {
			out[k] = val
		}
	}
	return out
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// files is the one-file list aria2 reports. Its path is where the file plays, origin/stream/GID/NAME:
// no file is ever written, and the path is what AriaNg shows, naming the task by its last segment, and
// what browser extensions show of a task. Without an origin (or a name) it is dir/out, as aria2's.
func files(v task.View, d Defaults, origin string) []map[string]any {
	size := max(v.Size, 0)
	p := v.Name
	switch dir := dirOf(v, d); {
	case origin != "" && p != "":
		p = origin + "/stream/" + v.GID + "/" + url.PathEscape(p)
	case dir != "" && p != "":
		p = strings.TrimSuffix(dir, "/") + "/" + p
	}
	return []map[string]any{{
		"index":           "1",
		"path":            p,
		"length":          itoa(size),
		"completedLength": itoa(min(v.Delivered, size)),
		"selected":        "true",
		"uris":            uris(v),
	}}
}

// dirOf is the folder a task is in: its dir option, else mflow's.
func dirOf(v task.View, d Defaults) string {
	if dir := v.Options["dir"]; dir != "" {
		return dir
	}
	return d.Dir
}

func uris(v task.View) []map[string]string {
	out := []map[string]string{}
	for i, u := range v.URIs {
		st := "waiting"
		if v.State == task.Active && i == 0 {
			st = "used"
		}
		out = append(out, map[string]string{"status": st, "uri": u})
	}
	return out
}

func getURIs(h *Handler, _ call, p params) (any, error) {
	v, err := viewOf(h, p)
	if err != nil {
		return nil, err
	}
	if v.State == task.Removed || v.State == task.Failed {
		return nil, wiref("No URI data is available for GID#%s", v.GID)
	}
	return uris(v), nil
}

func getFiles(h *Handler, c call, p params) (any, error) {
	v, err := viewOf(h, p)
	if err != nil {
		return nil, err
	}
	return files(v, h.Defaults, c.origin), nil
}

func viewOf(h *Handler, p params) (task.View, error) {
	gid, err := p.str(0)
	if err != nil {
		return task.View{}, err
	}
	return h.Tasks.Get(gid)
}

// Connection is one upstream request a task's players have open, for getServers.
type Connection struct {
	Mirror int     // which of the task's URIs it asks, from 0
	URL    string  // the URL it asks, after redirects
	Speed  float64 // bytes/s
}

// getServers answers, for a task being streamed, each open request's URI and speed in aria2's shape.
func getServers(h *Handler, _ call, p params) (any, error) {
	v, err := viewOf(h, p)
	if err != nil {
		return nil, err
	}
	if v.State != task.Active {
		return nil, wiref("No active download for GID#%s", v.GID)
	}
	servers := []map[string]string{}
	if h.Connections != nil {
		for _, c := range h.Connections(v.GID) {
			uri := v.URIs[min(max(c.Mirror, 0), len(v.URIs)-1)]
			servers = append(servers, map[string]string{"uri": uri, "currentUri": c.URL, "downloadSpeed": itoa(int64(c.Speed))})
		}
	}
	return []map[string]any{{"index": "1", "servers": servers}}, nil
}

func getPeers(_ *Handler, _ call, p params) (any, error) {
	if _, err := p.str(0); err != nil {
		return nil, err
	}
	return []any{}, nil // no BitTorrent, no peers
}

// connections is about how many upstream connections v's players hold now.
func (h *Handler) connections(v task.View) int {
	if v.State != task.Active {
		return 0
	}
	return v.Streams * h.Defaults.connections(v.Options)
}
