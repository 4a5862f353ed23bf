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

// Ranges is a player's Range header, read once: where it starts is known before the file's size is
// (First), so the first request can go out with the probe; the spans to send once it is (Spans). The zero
// Ranges asks for the whole file.
type Ranges struct {
	specs []rangeSpec // the ranges asked for, in order; nil for a header to ignore
}

// rangeSpec is one "first-last" of a Range header: start and end are -1 where the header leaves them out
// (bytes=N-: to the end; bytes=-N: the last end bytes, start -1).
type rangeSpec struct{ start, end int64 }

// ParseRanges reads a player's Range header. Following RFC 9110, a header that is malformed, or asks for
// more than MaxRanges ranges, is ignored: it asks for the whole file. Empty elements are skipped, as RFC
// 9110's list syntax allows.
func ParseRanges(header string) Ranges {
	unit, set, ok := strings.Cut(strings.TrimSpace(header), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return Ranges{}
	}
	var specs []rangeSpec
	for part := range strings.SplitSeq(set, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		spec, ok := parseSpec(part)
		if !ok || len(specs) == MaxRanges {
			return Ranges{}
		}
		specs = append(specs, spec)
	}
	return Ranges{specs: specs}
}

// parseSpec reads one "first-last"; false when it is malformed.
func parseSpec(part string) (rangeSpec, bool) {
	first, last, ok := strings.Cut(part, "-")
	if !ok {
		return rangeSpec{}, false
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	spec := rangeSpec{start: -1, end: -1}
	var err error
	if first != "" {
		if spec.start, err = parseOffset(first); err != nil {
			return rangeSpec{}, false
		}
	}
	if last != "" {
		if spec.end, err = parseOffset(last); err != nil {
			return rangeSpec{}, false
		}
	}
	switch {
	case first == "" && last == "": // "-"
		return rangeSpec{}, false
	case first != "" && last != "" && spec.end < spec.start:
		return rangeSpec{}, false
	}
	return spec, true
}

// First is where the ranges start, before the file's size is known: End is -1 for an open end. A header
// to ignore means the whole file, from 0; several ranges start where the first one does; a suffix range
// (bytes=-N) cannot be placed without the size (false).
func (r Ranges) First() (Span, bool) {
	if len(r.specs) == 0 {
		return Span{0, -1}, true
	}
	first := r.specs[0]
	if first.start < 0 {
		return Span{}, false
	}
	return Span{first.start, first.end}, true
}

// Spans are the spans to send of a file of size bytes, and the answer's shape. Ranges asking for more
// bytes than the file holds are ignored (Whole: the one span of the file), as are ranges asked again and
// again. Ranges starting past the end are left out; when none is left, the answer is Unsatisfiable. One
// range left is Partial, several Multipart.
func (r Ranges) Spans(size int64) ([]Span, Shape) {
	whole := []Span{{0, size - 1}}
	if len(r.specs) == 0 {
		return whole, Whole
	}
	var spans []Span
	var total int64
	for _, spec := range r.specs {
		sp, fits := spec.within(size)
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

// within is the span r asks of a file of size bytes (an end past the file is clipped), and whether it
// starts within the file (fits).
func (r rangeSpec) within(size int64) (span Span, fits bool) {
	if r.start < 0 { // suffix: the last r.end bytes
		if r.end == 0 || size == 0 {
			return Span{}, false
		}
		return Span{max(size-r.end, 0), size - 1}, true
	}
	if r.start >= size {
		return Span{}, false
	}
	end := r.end
	if end < 0 || end >= size {
		end = size - 1
	}
	return Span{r.start, end}, true
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
