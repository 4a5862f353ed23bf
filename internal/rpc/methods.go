package rpc

import (
	"encoding/json"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"mflow/internal/task"
)

// method is one RPC method; params come without the token.
type method func(h *Handler, c call, p params) (any, error)

// methods are the calls mflow answers, by name.
var methods map[string]method

func init() {
	byGID := func(f func(r *task.Registry, gid string) (string, error)) method {
		return func(h *Handler, _ call, p params) (any, error) {
			gid, err := p.str(0)
			if err != nil {
				return nil, err
			}
			return f(h.Tasks, gid)
		}
	}
	all := func(f func(r *task.Registry) error) method {
		return func(h *Handler, _ call, _ params) (any, error) {
			if err := f(h.Tasks); err != nil {
				return nil, err
			}
			return "OK", nil
		}
	}
	methods = map[string]method{
		"aria2.addUri":               addURI,
		"aria2.remove":               byGID((*task.Registry).Remove),
		"aria2.forceRemove":          byGID((*task.Registry).Remove),
		"aria2.pause":                byGID((*task.Registry).Pause),
		"aria2.forcePause":           byGID((*task.Registry).Pause),
		"aria2.unpause":              byGID((*task.Registry).Unpause),
		"aria2.pauseAll":             all((*task.Registry).PauseAll),
		"aria2.forcePauseAll":        all((*task.Registry).PauseAll),
		"aria2.unpauseAll":           all((*task.Registry).UnpauseAll),
		"aria2.tellStatus":           tellStatus,
		"aria2.tellActive":           tellActive,
		"aria2.tellWaiting":          tellList(func(_, waiting, _ []task.View) []task.View { return waiting }),
		"aria2.tellStopped":          tellList(func(_, _, stopped []task.View) []task.View { return stopped }),
		"aria2.getUris":              getURIs,
		"aria2.getFiles":             getFiles,
		"aria2.getOption":            getOption,
		"aria2.changeOption":         changeOption,
		"aria2.getGlobalOption":      getGlobalOption,
		"aria2.changeGlobalOption":   changeGlobalOption,
		"aria2.getGlobalStat":        getGlobalStat,
		"aria2.getVersion":           getVersion,
		"aria2.getSessionInfo":       getSessionInfo,
		"aria2.removeDownloadResult": removeDownloadResult,
		"aria2.purgeDownloadResult":  all((*task.Registry).PurgeResults),
		"aria2.changePosition":       changePosition,
		"aria2.changeUri":            changeURI,
		"aria2.getServers":           getServers,
		"aria2.getPeers":             getPeers,
		"aria2.saveSession":          saveSession,
		"aria2.shutdown":             shutdown(false),
		"aria2.forceShutdown":        shutdown(true),
		"aria2.addTorrent":           notHTTP("torrent"),
		"aria2.addMetalink":          notHTTP("Metalink document"),
		"system.multicall":           multicall,
		"system.listMethods":         listMethods,
		"system.listNotifications":   listNotifications,
	}
}

// params are a call's parameters, read the way aria2 reads them.
type params []json.RawMessage

func missing(i int) error   { return wiref("The parameter at %d is required but missing.", i) }
func wrongType(i int) error { return wiref("The parameter at %d has wrong type.", i) }

func (p params) has(i int) bool { return i < len(p) && string(p[i]) != "null" }

// str reads a required string parameter.
func (p params) str(i int) (string, error) {
	if !p.has(i) {
		return "", missing(i)
	}
	var s string
	if json.Unmarshal(p[i], &s) != nil {
		return "", wrongType(i)
	}
	return s, nil
}

// integer reads a required integer parameter.
func (p params) integer(i int) (int, error) {
	if !p.has(i) {
		return 0, missing(i)
	}
	var n int
	if json.Unmarshal(p[i], &n) != nil {
		return 0, wrongType(i)
	}
	return n, nil
}

// strings reads an optional array parameter, keeping its strings and ignoring the rest, as aria2.
func (p params) strings(i int) ([]string, error) {
	if !p.has(i) {
		return nil, nil
	}
	var raw []json.RawMessage
	if json.Unmarshal(p[i], &raw) != nil {
		return nil, wrongType(i)
	}
	out := []string{}
	for _, r := range raw {
		var s string
		if json.Unmarshal(r, &s) == nil {
			out = append(out, s)
		}
	}
	return out, nil
}

// options reads an optional aria2 options object. Values must be strings (others are ignored, as aria2
// does), except header, which may also be an array of strings; it is kept newline-joined.
func (p params) options(i int) (map[string]string, error) {
	out := map[string]string{}
	if !p.has(i) {
		return out, nil
	}
	var raw map[string]json.RawMessage
	if json.Unmarshal(p[i], &raw) != nil {
		return nil, wrongType(i)
	}
	for name, v := range raw {
		var s string
		if json.Unmarshal(v, &s) == nil {
			if name == "header" {
				s = strings.TrimSuffix(s, "\n") + "\n"
			}
			out[name] = s
			continue
		}
		var list []string
		if name == "header" && json.Unmarshal(v, &list) == nil {
			out[name] = strings.Join(list, "\n") + "\n"
		}
	}
	return out, nil
}

func addURI(h *Handler, c call, p params) (any, error) {
	if p.has(0) {
		var raw []json.RawMessage
		if json.Unmarshal(p[0], &raw) != nil {
			return nil, wrongType(0)
		}
	}
	uris, err := p.strings(0)
	if err != nil {
		return nil, err
	}
	if len(uris) == 0 {
		return nil, wireError("URI is not provided.")
	}
	opts, err := p.options(1)
	if err != nil {
		return nil, err
	}
	position := -1
	if p.has(2) {
		if position, err = p.integer(2); err != nil {
			return nil, err
		}
		if position < 0 {
			return nil, wireError("Position must be greater than or equal to 0.")
		}
	}
	opts, err = normalize(opts)
	if err != nil {
		return nil, err
	}
	a := task.Addition{URIs: uris, Position: position, Paused: opts["pause"] == "true", GID: opts["gid"], From: c.from}
	delete(opts, "pause") // aria2 keeps neither per task
	delete(opts, "gid")
	a.Options = opts
	return h.Tasks.Add(a)
}

// keys reads the optional key filter at i.
func (p params) keys(i int) ([]string, error) { return p.strings(i) }

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

func getOption(h *Handler, _ call, p params) (any, error) {
	v, err := viewOf(h, p)
	if err != nil {
		return nil, err
	}
	out := h.Defaults.optionsShown()
	maps.Copy(out, v.Options)
	return out, nil
}

func changeOption(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	opts, err := p.options(1)
	if err != nil {
		return nil, err
	}
	opts, err = normalize(opts)
	if err != nil {
		return nil, err
	}
	delete(opts, "pause")
	delete(opts, "gid")
	err = h.Tasks.ChangeOptions(gid, func(old map[string]string) (map[string]string, error) {
		maps.Copy(old, opts)
		return normalize(old) // together they may be over the bounds
	})
	if err != nil {
		return nil, err
	}
	return "OK", nil
}

func getGlobalOption(h *Handler, _ call, _ params) (any, error) {
	out := h.globalShown()
	maps.Copy(out, h.globalOptions())
	return out, nil
}

// positions are changePosition's words for where an offset counts from.
var positions = map[string]int{"POS_SET": io.SeekStart, "POS_CUR": io.SeekCurrent, "POS_END": io.SeekEnd}

func changePosition(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	offset, err := p.integer(1)
	if err != nil {
		return nil, err
	}
	how, err := p.str(2)
	if err != nil {
		return nil, err
	}
	whence, ok := positions[how]
	if !ok {
		return nil, wireError("Illegal argument.")
	}
	return h.Tasks.Move(gid, offset, whence)
}

// changeURI removes delUris from a task's URIs (each once), then adds the http and https ones of addUris,
// at position or last, and answers how many it removed and added.
func changeURI(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	index, err := p.integer(1)
	if err != nil {
		return nil, err
	}
	if index < 1 {
		return nil, wireError("The integer parameter at 1 has invalid value: the value must be greater than or equal to 1.")
	}
	if index > 1 {
		return nil, wireError("fileIndex is out of range")
	}
	del, err := p.strings(2)
	if err != nil {
		return nil, err
	}
	add, err := p.strings(3)
	if err != nil {
		return nil, err
	}
	position := -1
	if p.has(4) {
		if position, err = p.integer(4); err != nil {
			return nil, err
		}
	}
	var deleted, added int
	err = h.Tasks.ChangeURIs(gid, func(uris []string) []string {
		deleted, added = 0, 0
		for _, d := range del {
			if i := slices.Index(uris, d); i >= 0 {
				uris = slices.Delete(uris, i, i+1)
				deleted++
			}
		}
		var fresh []string
		for _, a := range add {
			if u, err := url.Parse(a); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
				fresh = append(fresh, a)
			}
		}
		at := len(uris)
		if position >= 0 {
			at = min(position, len(uris))
		}
		added = len(fresh)
		return slices.Insert(uris, at, fresh...)
	})
	if err != nil {
		return nil, err
	}
	return []int{deleted, added}, nil
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

func saveSession(h *Handler, _ call, _ params) (any, error) {
	if err := h.Tasks.Sync(); err != nil {
		return nil, err
	}
	return "OK", nil
}

// shutdown answers "OK", then stops mflow as on SIGTERM (force: at once).
func shutdown(force bool) method {
	return func(h *Handler, c call, _ params) (any, error) {
		if h.Shutdown == nil {
			return nil, wireError("This mflow cannot be stopped over the JSON-RPC.")
		}
		c.later(func() { h.Shutdown(force) })
		return "OK", nil
	}
}

// notHTTP answers addTorrent and addMetalink in aria2's error envelope: mflow streams links.
func notHTTP(what string) method {
	return func(_ *Handler, _ call, p params) (any, error) {
		if !p.has(0) {
			return nil, missing(0)
		}
		return nil, wiref("mflow streams http and https links; it takes no %s: add the link with aria2.addUri.", what)
	}
}

// changeGlobalOption keeps, to echo them, the options getGlobalOption reports, checked as a task's; the
// rest are ignored, as aria2c ignores names it does not know, so calls cannot make mflow hold more.
func changeGlobalOption(h *Handler, _ call, p params) (any, error) {
	opts, err := p.options(0)
	if err != nil {
		return nil, err
	}
	shown := h.globalShown()
	opts, err = check(opts, func(name string) (optionRule, bool) {
		if rule, ok := options[name]; ok {
			return rule, true
		}
		_, ok := shown[name]
		return anyString, ok
	})
	if err != nil {
		return nil, err
	}
	h.changeGlobalOptions(opts)
	return "OK", nil
}

func getGlobalStat(h *Handler, _ call, _ params) (any, error) {
	active, waiting, stopped := h.Tasks.Lists()
	var speed int64
	for _, v := range active {
		speed += v.Speed
	}
	return map[string]string{
		"downloadSpeed":   itoa(speed),
		"uploadSpeed":     "0",
		"numActive":       strconv.Itoa(len(active)),
		"numWaiting":      strconv.Itoa(len(waiting)),
		"numStopped":      strconv.Itoa(len(stopped)),
		"numStoppedTotal": strconv.Itoa(h.Tasks.StoppedTotal()),
	}, nil
}

func getVersion(h *Handler, _ call, _ params) (any, error) {
	return map[string]any{"enabledFeatures": []string{"Async DNS", "GZip", "HTTPS", "mflow " + h.Version}, "version": "1.36.0"}, nil
}

func getSessionInfo(h *Handler, _ call, _ params) (any, error) {
	return map[string]string{"sessionId": h.session()}, nil
}

func removeDownloadResult(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	if err := h.Tasks.RemoveResult(gid); err != nil {
		return nil, err
	}
	return "OK", nil
}

// multicall runs each {methodName, params} in turn: a success comes back wrapped in an array, an error
// bare, as aria2 answers. Each call carries its own token.
func multicall(h *Handler, c call, p params) (any, error) {
	var calls []json.RawMessage
	if !p.has(0) || json.Unmarshal(p[0], &calls) != nil {
		return nil, wrongType(0)
	}
	if len(calls) > maxCalls {
		return nil, wiref("Too many calls in one system.multicall: %d, at most %d.", len(calls), maxCalls)
	}
	out := []any{}
	for _, raw := range calls {
		var m struct {
			MethodName *string           `json:"methodName"`
			Params     []json.RawMessage `json:"params"`
		}
		var probe map[string]json.RawMessage
		switch {
		case json.Unmarshal(raw, &probe) != nil:
			out = append(out, rpcError{1, "system.multicall expected struct."})
		case json.Unmarshal(raw, &m) != nil || m.MethodName == nil:
			out = append(out, rpcError{1, "Missing methodName."})
		case *m.MethodName == "system.multicall":
			out = append(out, rpcError{1, "Recursive system.multicall forbidden."})
		default:
			result, err := h.call(c, *m.MethodName, m.Params)
			if err != nil {
				out = append(out, rpcError{1, ariaMessage(err)})
			} else {
				out = append(out, []any{result})
			}
		}
	}
	return out, nil
}

func listMethods(_ *Handler, _ call, _ params) (any, error) {
	return methodNames, nil
}

func listNotifications(_ *Handler, _ call, _ params) (any, error) {
	return notifications, nil
}

// connections is about how many upstream connections v's players hold now.
func (h *Handler) connections(v task.View) int {
	if v.State != task.Active {
		return 0
	}
	return v.Streams * h.Defaults.connections(v.Options)
}
