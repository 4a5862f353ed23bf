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

// Shape says how to answer a player's Range header.
type Shape int

const (
	Whole         Shape = iota // 200 with the whole file: no Range, or one mflow ignores
	Partial                    // 206 with one span
	Multipart                  // 206 multipart/byteranges, a part per span, in the order asked
	Unsatisfiable              // 416: every range starts past the end
)

// MaxRanges bounds the ranges one request may ask for, as nginx's max_ranges does: a request for more is
// answered with the whole file, as is one whose ranges add up to more than the file (overlapping ranges
// asked again and again would make mflow send the file many times over).
const MaxRanges = 16

// ParseRequest reads a player's Range header for a file of size bytes, and returns the spans to send.
// Following RFC 9110, a header that is malformed, or asks for more than MaxRanges ranges or more bytes
// than the file holds, is ignored (Whole: the one span of the file). Ranges starting past the end are left
// out; when none is left, the answer is Unsatisfiable. One range left is Partial, several Multipart.
func ParseRequest(header string, size int64) ([]Span, Shape) {
	whole := []Span{{0, size - 1}}
	specs, ok := splitRanges(header)
	if !ok || len(specs) > MaxRanges {
		return whole, Whole
	}
	var spans []Span
	var total int64
	for _, spec := range specs {
		sp, fits, ok := parseSpec(spec, size)
		if !ok {
			return whole, Whole
		}
		if !fits {
			continue
		}
		if sp.Len() > size-total {
			return whole, Whole
		}
		total += sp.Len()
		spans = append(spans, sp)
	}
	switch len(spans) {
	case 0:
		return nil, Unsatisfiable
	case 1:
		return spans, Partial
	}
	return spans, Multipart
}

// rangeSpec is one "first-last" of a Range header, its sides trimmed.
type rangeSpec struct{ first, last string }

// splitRanges cuts "bytes=first-last, …" into its ranges; false for anything else. Empty elements are
// skipped, as RFC 9110's list syntax allows.
func splitRanges(header string) ([]rangeSpec, bool) {
	unit, set, ok := strings.Cut(strings.TrimSpace(header), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return nil, false
	}
	var specs []rangeSpec
	for part := range strings.SplitSeq(set, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		first, last, ok := strings.Cut(part, "-")
		if !ok || len(specs) > MaxRanges {
			return nil, false
		}
		specs = append(specs, rangeSpec{strings.TrimSpace(first), strings.TrimSpace(last)})
	}
	return specs, len(specs) > 0
}

// parseSpec reads one range for a file of size bytes: the span it asks for (an end past the file is
// clipped), whether it starts within the file (fits), and whether it is well formed (ok).
func parseSpec(r rangeSpec, size int64) (span Span, fits, ok bool) {
	if r.first == "" { // suffix: the last n bytes
		n, err := parseOffset(r.last)
		if err != nil {
			return Span{}, false, false
		}
		if n == 0 || size == 0 {
			return Span{}, false, true
		}
		return Span{max(size-n, 0), size - 1}, true, true
	}
	start, err := parseOffset(r.first)
	if err != nil {
		return Span{}, false, false
	}
	end := int64(-1)
	if r.last != "" {
		if end, err = parseOffset(r.last); err != nil || end < start {
			return Span{}, false, false
		}
	}
	if start >= size {
		return Span{}, false, true
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	return Span{start, end}, true, true
}

// Peek reads where a player's Range starts before the file's size is known, so the first request can go
// out with the probe: End is -1 for an open end. A header ParseRequest would ignore means the whole file,
// from 0; several ranges start where the first one does; a suffix range (bytes=-N) cannot be placed
// without the size (false).
func Peek(header string) (Span, bool) {
	specs, ok := splitRanges(header)
	if !ok || len(specs) > MaxRanges {
		return Span{0, -1}, true
	}
	first := specs[0]
	if first.first == "" {
		return Span{}, false
	}
	start, err := parseOffset(first.first)
	if err != nil {
		return Span{0, -1}, true
	}
	if first.last == "" {
		return Span{start, -1}, true
	}
	end, err := parseOffset(first.last)
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
