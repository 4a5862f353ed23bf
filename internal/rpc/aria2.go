package rpc

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"mflow/internal/bytesize"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

// This file holds aria2's words: option names and their checks, status and event names, error messages
// and error codes. The task registry knows none of them.

// Defaults are mflow's settings for a task that sets no option, as getOption reports them.
type Defaults struct {
	Connections int    // per stream (-c)
	MinSpeed    int64  // bytes/s (--min-speed), 0 = off
	UserAgent   string // what mflow sends when a task sets none
	PieceLength int64  // the chunk size (-s), reported as each task's pieceLength
	Dir         string // the folder a task without a dir option is in: mflow's working folder, as aria2's

	// mflow's settings that getGlobalOption reports under aria2's names.
	Retries    int    // -r
	MaxStreams int    // --max-streams
	MaxStopped int    // --max-download-result
	Port       int    // --port
	Insecure   bool   // --insecure
	ConfPath   string // the configuration file read, "" for none
}

// optionRule checks one aria2 option's value and returns it as aria2 keeps it.
type optionRule func(v string) (string, bool)

func anyString(v string) (string, bool) { return v, true }

func intIn(lo, hi int) optionRule {
	return func(v string) (string, bool) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		return strconv.Itoa(n), err == nil && n >= lo && n <= hi
	}
}

func sizeIn(lo, hi int64) optionRule {
	return func(v string) (string, bool) {
		n, err := bytesize.Parse(v)
		return strconv.FormatInt(n, 10), err == nil && n >= lo && n <= hi
	}
}

// options are the aria2 options a task takes, with their checks; others are ignored, as aria2 ignores
// the names it does not know.
var options = map[string]optionRule{
	"header":                    anyString,
	"user-agent":                anyString,
	"referer":                   anyString,
	"out":                       anyString,
	"dir":                       anyString,
	"split":                     intIn(1, 1<<20),
	"max-connection-per-server": intIn(1, 16),
	"min-split-size":            sizeIn(1<<20, 1<<30),
	"lowest-speed-limit":        sizeIn(0, 1<<40),
	"all-proxy": func(v string) (string, bool) {
		return v, proxyURL(v, "", "") != nil
	},
	"all-proxy-user":   anyString,
	"all-proxy-passwd": anyString,
	"pause": func(v string) (string, bool) {
		return v, v == "true" || v == "false"
	},
	"gid": func(v string) (string, bool) {
		return v, len(v) == 16 && strings.Trim(v, "0123456789abcdef") == "" && v != "0000000000000000"
	},
}

// Bounds on what one task's options may hold: a drive's cookies are a few KiB; more is an attempt to fill
// mflow's memory and its store.
const (
	maxOptionBytes = 16 << 10
	maxHeaderLines = 50
)

// optionError is a bad value for an aria2 option.
type optionError struct{ name string }

func (e *optionError) Error() string {
	return fmt.Sprintf("We encountered a problem while processing the option '--%s'.", e.name)
}

// normalize checks a task's options and keeps those mflow knows, as aria2 would report them back.
func normalize(in map[string]string) (map[string]string, error) {
	return check(in, func(name string) (optionRule, bool) { rule, ok := options[name]; return rule, ok })
}

// check checks options within the bounds and keeps those ruleOf knows, as their rule returns them.
func check(in map[string]string, ruleOf func(name string) (optionRule, bool)) (map[string]string, error) {
	out := map[string]string{}
	total := 0
	for name, v := range in {
		if total += len(name) + len(v); total > maxOptionBytes {
			return nil, &optionError{name}
		}
		if name == "header" && strings.Count(v, "\n") >= maxHeaderLines {
			return nil, &optionError{name}
		}
		rule, ok := ruleOf(name)
		if !ok {
			continue
		}
		norm, ok := rule(v)
		if !ok {
			return nil, &optionError{name}
		}
		out[name] = norm
	}
	return out, nil
}

// optionsShown are the per-task options getOption reports for a task that sets none.
func (d Defaults) optionsShown() map[string]string {
	return map[string]string{
		"split":                     strconv.Itoa(d.Connections),
		"max-connection-per-server": strconv.Itoa(min(d.Connections, 16)),
		"min-split-size":            "20971520",
		"lowest-speed-limit":        strconv.FormatInt(d.MinSpeed, 10),
		"user-agent":                d.UserAgent,
		"dir":                       d.Dir,
		"max-tries":                 strconv.Itoa(d.Retries + 1),
		"piece-length":              strconv.FormatInt(d.PieceLength, 10),
		"check-certificate":         strconv.FormatBool(!d.Insecure),
		"connect-timeout":           "10",
		"timeout":                   "20",
		"all-proxy":                 "",
	}
}

// globalShown are the global options getGlobalOption reports: the per-task defaults and mflow's own
// settings under aria2's names.
func (h *Handler) globalShown() map[string]string {
	d := h.Defaults
	out := d.optionsShown()
	for k, v := range map[string]string{
		"max-concurrent-downloads": strconv.Itoa(max(d.MaxStreams, 1)),
		"max-download-result":      strconv.Itoa(d.MaxStopped),
		"rpc-listen-port":          strconv.Itoa(d.Port),
		"rpc-listen-all":           strconv.FormatBool(h.ListenAll || h.Secret != ""),
		"rpc-allow-origin-all":     strconv.FormatBool(h.AllowOriginAll),
		"rpc-max-request-size":     strconv.Itoa(maxBody),
		"enable-rpc":               "true",
		"conf-path":                d.ConfPath,
	} {
		out[k] = v
	}
	return out
}

// Interpret says what a task's aria2 options mean (task.Config.Interpret): its headers, file name,
// connections, lowest speed and proxy.
func (d Defaults) Interpret(uris []string, opts map[string]string) (task.Spec, error) {
	h := http.Header{}
	if ua := opts["user-agent"]; ua != "" {
		h.Set("User-Agent", ua)
	}
	if ref := opts["referer"]; ref == "*" {
		h.Set("Referer", uris[0])
	} else if ref != "" {
		h.Set("Referer", ref)
	}
	for line := range strings.SplitSeq(opts["header"], "\n") {
		name, value, ok := strings.Cut(strings.TrimRight(line, "\r"), ":")
		if ok && strings.TrimSpace(name) != "" {
			h.Set(strings.TrimSpace(name), strings.TrimSpace(value)) // a header line replaces the default
		}
	}
	spec := task.Spec{Header: upstream.CleanHeader(h), Name: opts["out"], Connections: d.connections(opts)}
	if v, ok := opts["lowest-speed-limit"]; ok {
		n, _ := strconv.ParseInt(v, 10, 64) // 0 is off, as in aria2
		spec.MinSpeed = &n
	}
	if p := opts["all-proxy"]; p != "" {
		spec.Proxy = proxyURL(p, opts["all-proxy-user"], opts["all-proxy-passwd"])
	}
	return spec, nil
}

// connections is a task's connection count per stream: the smaller of its split and
// max-connection-per-server when it sets them, else mflow's.
func (d Defaults) connections(opts map[string]string) int {
	n := 0
	for _, name := range []string{"split", "max-connection-per-server"} {
		if v, ok := opts[name]; ok {
			if c, err := strconv.Atoi(v); err == nil && (n == 0 || c < n) {
				n = c
			}
		}
	}
	if n <= 0 {
		return d.Connections
	}
	return min(n, 64)
}

// proxyURL reads aria2's proxy form, [http://][USER:PASSWORD@]HOST[:PORT], with the separate user and
// password options; nil when it is not one.
func proxyURL(p, user, pass string) *url.URL {
	if !strings.Contains(p, "://") {
		p = "http://" + p
	}
	u, err := url.Parse(p)
	if err != nil || u.Host == "" {
		return nil
	}
	if user != "" {
		u.User = url.UserPassword(user, pass)
	}
	return u
}

// methodNames are the methods system.listMethods lists, in aria2c 1.36's order: every one of its methods.
var methodNames = []string{
	"aria2.addUri", "aria2.addTorrent", "aria2.getPeers", "aria2.addMetalink", "aria2.remove", "aria2.pause",
	"aria2.forcePause", "aria2.pauseAll", "aria2.forcePauseAll", "aria2.unpause", "aria2.unpauseAll",
	"aria2.forceRemove", "aria2.changePosition", "aria2.tellStatus", "aria2.getUris", "aria2.getFiles",
	"aria2.getServers", "aria2.tellActive", "aria2.tellWaiting", "aria2.tellStopped", "aria2.getOption",
	"aria2.changeUri", "aria2.changeOption", "aria2.getGlobalOption", "aria2.changeGlobalOption",
	"aria2.purgeDownloadResult", "aria2.removeDownloadResult", "aria2.getVersion", "aria2.getSessionInfo",
	"aria2.shutdown", "aria2.forceShutdown", "aria2.getGlobalStat", "aria2.saveSession", "system.multicall",
	"system.listMethods", "system.listNotifications",
}

// statusNames are aria2's words for task states.
var statusNames = map[task.State]string{
	task.Waiting: "waiting",
	task.Active:  "active",
	task.Paused:  "paused",
	task.Removed: "removed",
	task.Failed:  "error",
}

// StatusWord is aria2's word for a task's state, as tellStatus gives it: the status page uses the same.
func StatusWord(s task.State) string { return statusNames[s] }

// eventNames are aria2's WebSocket notifications for task events.
var eventNames = map[task.EventKind]string{
	task.EventStarted: "aria2.onDownloadStart",
	task.EventPaused:  "aria2.onDownloadPause",
	task.EventStopped: "aria2.onDownloadStop",
	task.EventFailed:  "aria2.onDownloadError",
}

// notifications are the notifications system.listNotifications lists: those mflow sends and those of
// aria2 it never has reason to.
var notifications = []string{
	eventNames[task.EventStarted], eventNames[task.EventPaused], eventNames[task.EventStopped],
	"aria2.onDownloadComplete", eventNames[task.EventFailed], "aria2.onBtDownloadComplete",
}

// errorCode is aria2's error code and message for an upstream failure, as aria2c 1.36 reports them for
// the same HTTP statuses; nil (a failure from an earlier mflow) is code 1.
func errorCode(f *upstream.Failure) (string, string) {
	if f == nil {
		return "1", ""
	}
	switch f.Kind {
	case upstream.KindStatus:
		switch f.Code {
		case http.StatusNotFound:
			return "3", "Resource not found"
		case http.StatusUnauthorized:
			return "24", "Authorization failed."
		case http.StatusServiceUnavailable:
			return "29", fmt.Sprintf("The response status is not successful. status=%d", f.Code)
		}
		return "22", fmt.Sprintf("The response status is not successful. status=%d", f.Code)
	case upstream.KindTimeout:
		return "2", "Timeout: " + f.Message
	case upstream.KindUnreachable:
		return "6", "Network problem: " + f.Message
	}
	return "1", f.Message
}

// ariaMessage is what aria2 answers for a task error; other errors keep their own text.
func ariaMessage(err error) string {
	var te *task.Error
	if !errors.As(err, &te) {
		return err.Error()
	}
	switch te.Err {
	default:
		return ariaMessage(te.Err) // an option error's own text
	case task.ErrNotFound, task.ErrPaused:
		return fmt.Sprintf("GID %s is not found", te.GID)
	case task.ErrAmbiguous:
		return fmt.Sprintf("GID %s is not unique", te.GID)
	case task.ErrBadGID, task.ErrZeroGID:
		return "Invalid GID " + te.GID
	case task.ErrBadURI, task.ErrGIDTaken:
		return "No URI to download."
	case task.ErrNotPausable:
		return fmt.Sprintf("GID#%s cannot be paused now", te.GID)
	case task.ErrNotPaused:
		return fmt.Sprintf("GID#%s cannot be unpaused now", te.GID)
	case task.ErrNotRunning:
		return "Active Download not found for GID#" + te.GID
	case task.ErrNotStopped:
		return "Could not remove download result of GID#" + te.GID
	case task.ErrTooMany:
		return fmt.Sprintf("Too many tasks waiting: at most %d; remove some, or start mflow with a larger --max-waiting", te.Limit)
	case task.ErrNotQueued:
		return fmt.Sprintf("GID#%s not found in the waiting queue.", te.GID)
	}
}
