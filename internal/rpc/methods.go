package rpc

import (
	"encoding/json"
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

// keys reads the optional key filter at i.
func (p params) keys(i int) ([]string, error) { return p.strings(i) }
