package httprange

import (
	"fmt"
	"slices"
	"testing"
)

func TestSpans(t *testing.T) {
	const size = 1000
	whole := []Span{{0, 999}}
	for _, c := range []struct {
		header string
		kind   Shape
		spans  []Span
	}{
		{"", Whole, whole},
		{"bytes=0-", Partial, []Span{{0, 999}}},
		{"bytes=0-0", Partial, []Span{{0, 0}}},
		{"bytes=10-19", Partial, []Span{{10, 19}}},
		{"bytes=500-5000", Partial, []Span{{500, 999}}},
		{"bytes=999-", Partial, []Span{{999, 999}}},
		{"bytes=-100", Partial, []Span{{900, 999}}},
		{"bytes=-5000", Partial, []Span{{0, 999}}},
		{"BYTES = 1-2", Partial, []Span{{1, 2}}},
		{"bytes=1000-", Unsatisfiable, nil},
		{"bytes=5000-6000", Unsatisfiable, nil},
		{"bytes=-0", Unsatisfiable, nil},
		{"bytes=0-1,5-6", Multipart, []Span{{0, 1}, {5, 6}}},
		{"bytes=500-599, 0-99", Multipart, []Span{{500, 599}, {0, 99}}}, // in the order asked
		{"bytes=0-1,,5-6,", Multipart, []Span{{0, 1}, {5, 6}}},          // empty elements skipped
		{"bytes=0-1,2000-3000", Partial, []Span{{0, 1}}},                // one past the end left out
		{"bytes=2000-,3000-", Unsatisfiable, nil},                       // all past the end
		{"bytes=0-99,50-149", Multipart, []Span{{0, 99}, {50, 149}}},    // overlapping, not more than the file
		{"bytes=0-499,400-999", Whole, whole},                           // overlapping, more than the file
		{"bytes=0-,0-", Whole, whole},                                   // twice the file
		{"bytes=0-1,x-2", Whole, whole},                                 // one malformed range
		{"bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8,9-9,10-10,11-11,12-12,13-13,14-14,15-15,16-16", Whole, whole}, // past MaxRanges
		{"bytes=20-10", Whole, whole},
		{"bytes=abc", Whole, whole},
		{"bytes=-", Whole, whole},
		{"bytes=+1-2", Whole, whole},
		{"items=0-1", Whole, whole},
		{"bytes=", Whole, whole},
		{"bytes=99999999999999999999-", Whole, whole},
	} {
		spans, kind := ParseRanges(c.header).Spans(size)
		if kind != c.kind || !slices.Equal(spans, c.spans) {
			t.Errorf("ParseRanges(%q).Spans = %v, %v; want %v, %v", c.header, spans, kind, c.spans, c.kind)
		}
	}
}

func TestFirst(t *testing.T) {
	for header, want := range map[string]Span{
		"":                    {0, -1},
		"bytes=100-":          {100, -1},
		"bytes=100-199":       {100, 199},
		"bytes=5000-5099,0-9": {5000, 5099}, // several: the first part's
		"bytes=junk":          {0, -1},
	} {
		if got, ok := ParseRanges(header).First(); !ok || got != want {
			t.Errorf("ParseRanges(%q).First() = %v, %v; want %v", header, got, ok, want)
		}
	}
	if _, ok := ParseRanges("bytes=-500").First(); ok {
		t.Error("First of a suffix range placed it without the size")
	}
}

func TestParseContentRange(t *testing.T) {
	for header, want := range map[string]ContentRange{
		"bytes 0-0/1000": {Span: Span{0, 0}, Size: 1000},
		"bytes 5-9/*":    {Span: Span{5, 9}, Size: -1},
		"bytes */1000":   {Size: 1000, Unsatisfied: true},
		" bytes 1-2/3 ":  {Span: Span{1, 2}, Size: 3},
	} {
		got, err := ParseContentRange(header)
		if err != nil || got != want {
			t.Errorf("ParseContentRange(%q) = %+v, %v; want %+v", header, got, err, want)
		}
	}
	for _, header := range []string{"", "bytes", "bytes 0-1", "bytes 2-1/10", "bytes 0-10/10", "bytes */*", "octets 0-1/2", "bytes -1-2/3"} {
		if got, err := ParseContentRange(header); err == nil {
			t.Errorf("ParseContentRange(%q) = %+v, want an error", header, got)
		}
	}
}

func FuzzRanges(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=-5", "bytes=3-9", "bytes=0-1,2-3", "bytes=9-3"} {
		f.Add(s, int64(10))
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 1 {
			return
		}
		spans, kind := ParseRanges(header).Spans(size)
		if kind == Unsatisfiable {
			return
		}
		var total int64
		for _, span := range spans {
			if span.Start < 0 || span.End >= size || span.Start > span.End {
				t.Fatalf("ParseRanges(%q).Spans(%d) = %+v: outside the file", header, size, span)
			}
			total += span.Len()
		}
		if len(spans) == 0 || len(spans) > MaxRanges || total > size || (kind == Multipart) != (len(spans) > 1) {
			t.Fatalf("ParseRanges(%q).Spans(%d) = %v, %v: more than asked, or the wrong kind", header, size, spans, kind)
		}
		if kind == Partial {
			again, kind2 := ParseRanges(spans[0].Header()).Spans(size)
			if kind2 != Partial || again[0] != spans[0] {
				t.Fatalf("round trip of %+v gave %+v %v", spans[0], again, kind2)
			}
		}
		// Before the size is known, First must place the range where Spans will: the probe asks for
		// those bytes, and the engine uses its answer only for the stream's first piece. Only a first range
		// past the end, left out, starts elsewhere.
		if peek, ok := ParseRanges(header).First(); ok && kind != Whole && peek.Start != spans[0].Start && peek.Start < size {
			t.Fatalf("First(%q) starts at %d, Spans(%d) at %d", header, peek.Start, size, spans[0].Start)
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes */9", "bytes 3-4/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		cr, err := ParseContentRange(header)
		if err != nil || cr.Unsatisfied {
			return
		}
		if cr.Start < 0 || cr.End < cr.Start || (cr.Size >= 0 && cr.End >= cr.Size) {
			t.Fatalf("ParseContentRange(%q) = %+v: impossible range", header, cr)
		}
		if cr.Size >= 0 {
			back, err := ParseContentRange(cr.ContentRange(cr.Size))
			if err != nil || back != cr {
				t.Fatal(fmt.Sprint("round trip: ", back, err))
			}
		}
	})
}
