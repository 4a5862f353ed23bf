// Package logging sets up mflow's log: slog lines a person reads, coloured on a terminal (Windows consoles
// included), with the seed's level names; or JSON lines for a log collector.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
	"github.com/mattn/go-colorable"
	"github.com/mattn/go-isatty"
)

// LevelCritical is the seed's CRITICAL, above ERROR.
const LevelCritical = slog.LevelError + 4

// levels are the names --log-level takes, in any case.
var levels = map[string]slog.Level{
	"DEBUG": slog.LevelDebug, "INFO": slog.LevelInfo, "WARNING": slog.LevelWarn,
	"ERROR": slog.LevelError, "CRITICAL": LevelCritical,
}

// ParseLevel reads a --log-level value.
func ParseLevel(s string) (slog.Level, error) {
	if l, ok := levels[strings.ToUpper(strings.TrimSpace(s))]; ok {
		return l, nil
	}
	return 0, fmt.Errorf("%q is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL", s)
}

// Formats are the forms --log-format takes: lines a person reads, or one JSON object a line.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// timeFormat carries the date: a service's log is read days later, and journald is not the only reader.
const timeFormat = "2006-01-02 15:04:05.000"

// New returns a logger writing to f at level and above in format, coloured when it is text on a terminal.
func New(f *os.File, level slog.Level, format string) *slog.Logger {
	if format == FormatJSON {
		return NewTo(f, level, format, true)
	}
	color := isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
	var w io.Writer = f
	if color {
		w = colorable.NewColorable(f) // turns ANSI colours into console calls on old Windows consoles
	}
	return NewTo(w, level, format, !color)
}

// NewTo returns a logger writing to w at level and above in format (FormatText or FormatJSON).
func NewTo(w io.Writer, level slog.Level, format string, noColor bool) *slog.Logger {
	if format == FormatJSON {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: levelName}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{
		Level:      level,
		TimeFormat: timeFormat,
		NoColor:    noColor,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.LevelKey && len(groups) == 0 {
				if l, ok := a.Value.Any().(slog.Level); ok && l >= LevelCritical {
					return tint.Attr(9, slog.String(a.Key, "CRT"))
				}
			}
			return a
		},
	}))
}

// levelName names CRITICAL in JSON, which slog would call "ERROR+4".
func levelName(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.LevelKey && len(groups) == 0 {
		if l, ok := a.Value.Any().(slog.Level); ok && l >= LevelCritical {
			return slog.String(a.Key, "CRITICAL")
		}
	}
	return a
}
