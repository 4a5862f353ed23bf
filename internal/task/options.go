package task

import (
	"strconv"
	"strings"

	"mflow/internal/bytesize"
)

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

// normalize checks options and keeps those mflow knows, as aria2 would report them back.
func normalize(in map[string]string) (map[string]string, error) {
	out := map[string]string{}
	total := 0
	for name, v := range in {
		if total += len(name) + len(v); total > maxOptionBytes {
			return nil, &OptionError{Name: name}
		}
		if name == "header" && strings.Count(v, "\n") >= maxHeaderLines {
			return nil, &OptionError{Name: name}
		}
		rule, ok := options[name]
		if !ok {
			continue
		}
		norm, ok := rule(v)
		if !ok {
			return nil, &OptionError{Name: name}
		}
		out[name] = norm
	}
	return out, nil
}

// Defaults are the per-task options a task that sets none reports, for getOption.
func (s *Store) Defaults() map[string]string {
	return map[string]string{
		"split":                     strconv.Itoa(s.settings.Connections),
		"max-connection-per-server": strconv.Itoa(min(s.settings.Connections, 16)),
		"min-split-size":            "20971520",
		"lowest-speed-limit":        strconv.FormatInt(s.settings.MinSpeed, 10),
		"user-agent":                s.settings.UserAgent,
		"dir":                       "",
	}
}

func atoi(v string) int {
	n, _ := strconv.Atoi(v)
	return n
}
