// Package httprange reads the Range a player asks for and the Content-Range an upstream answers with.
package httprange

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Span is the inclusive byte range [Start, End] of a file.
type Span struct {
	Start int64 // first byte
	End   int64 // last byte, inclusive
}

// Len is the number of bytes in s.
func (s Span) Len() int64 { return s.End - s.Start + 1 }

// ContentRange is the Content-Range header for s within a file of size bytes.
func (s Span) ContentRange(size int64) string {
	return fmt.Sprintf("bytes %d-%d/%d", s.Start, s.End, size)
}

// Header is the Range request header asking for s.
func (s Span) Header() string { return fmt.Sprintf("bytes=%d-%d", s.Start, s.End) }

// Kind says how to answer a player's Range header.
type Kind int

const (
	Whole         Kind = iota // 200 with the whole file: no Range, or one mflow ignores
	Partial                   // 206 with the Span
	Unsatisfiable             // 416: the range starts past the end
)

// ParseRequest reads a player's Range header for a file of size bytes. Following RFC 9110, a header that is
// malformed, or asks for several ranges, is ignored (Whole); one starting past the end is Unsatisfiable.
func ParseRequest(header string, size int64) (Span, Kind) {
	whole := Span{0, size - 1}
	first, last, ok := splitRange(header)
	if !ok {
		return whole, Whole
	}
	if first == "" { // suffix: the last n bytes
		n, err := parseOffset(last)
		if err != nil {
			return whole, Whole
		}
		if n == 0 || size == 0 {
			return Span{}, Unsatisfiable
		}
		return Span{max(size-n, 0), size - 1}, Partial
	}
	start, err := parseOffset(first)
	if err != nil {
		return whole, Whole
	}
	end := int64(-1)
	if last != "" {
		if end, err = parseOffset(last); err != nil || end < start {
			return whole, Whole
		}
	}
	if start >= size {
		return Span{}, Unsatisfiable
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	return Span{start, end}, Partial
}

// splitRange cuts a single "bytes=first-last" range into its two sides; false for anything else.
func splitRange(header string) (first, last string, ok bool) {
	unit, spec, ok := strings.Cut(strings.TrimSpace(header), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") || strings.Contains(spec, ",") {
		return "", "", false
	}
	first, last, ok = strings.Cut(strings.TrimSpace(spec), "-")
	return strings.TrimSpace(first), strings.TrimSpace(last), ok
}

// Peek reads where a player's Range starts before the file's size is known, so the first request can go
// out with the probe: End is -1 for an open end. A header ParseRequest would ignore means the whole file,
// from 0; a suffix range (bytes=-N) cannot be placed without the size (false).
func Peek(header string) (Span, bool) {
	first, last, ok := splitRange(header)
	if !ok {
		return Span{0, -1}, true
	}
	if first == "" {
		return Span{}, false
	}
	start, err := parseOffset(first)
	if err != nil {
		return Span{0, -1}, true
	}
	if last == "" {
		return Span{start, -1}, true
	}
	end, err := parseOffset(last)
	if err != nil || end < start {
		return Span{0, -1}, true
	}
	return Span{start, end}, true
}

// parseOffset reads a non-negative decimal byte offset: digits only, no sign.
func parseOffset(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a byte offset")
	}
	return strconv.ParseInt(s, 10, 64)
}

// ContentRange is a parsed Content-Range header.
type ContentRange struct {
	Span       // the bytes the answer carries; zero when Unsatisfied
	Size int64 // the whole file's size, or -1 when the upstream wrote "*"
	// Unsatisfied marks "bytes */SIZE", the answer to a range past the end.
	Unsatisfied bool
}

// ParseContentRange reads "bytes a-b/size", "bytes a-b/*" or "bytes */size".
func ParseContentRange(header string) (ContentRange, error) {
	bad := fmt.Errorf("malformed Content-Range %q", header)
	unit, rest, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return ContentRange{}, bad
	}
	span, size, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return ContentRange{}, bad
	}
	cr := ContentRange{Size: -1}
	if size != "*" {
		n, err := parseOffset(size)
		if err != nil {
			return ContentRange{}, bad
		}
		cr.Size = n
	}
	if span == "*" {
		if cr.Size < 0 {
			return ContentRange{}, bad
		}
		cr.Unsatisfied = true
		return cr, nil
	}
	first, last, ok := strings.Cut(span, "-")
	if !ok {
		return ContentRange{}, bad
	}
	start, err1 := parseOffset(first)
	end, err2 := parseOffset(last)
	if err1 != nil || err2 != nil || end < start || (cr.Size >= 0 && end >= cr.Size) {
		return ContentRange{}, bad
	}
	cr.Span = Span{start, end}
	return cr, nil
}
