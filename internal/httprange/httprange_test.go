package httprange

import (
	"fmt"
	"testing"
)

func TestParseRequest(t *testing.T) {
	const size = 1000
	for _, c := range []struct {
		header string
		kind   Kind
		span   Span
	}{
		{"", Whole, Span{0, 999}},
		{"bytes=0-", Partial, Span{0, 999}},
		{"bytes=0-0", Partial, Span{0, 0}},
		{"bytes=10-19", Partial, Span{10, 19}},
		{"bytes=500-5000", Partial, Span{500, 999}},
		{"bytes=999-", Partial, Span{999, 999}},
		{"bytes=-100", Partial, Span{900, 999}},
		{"bytes=-5000", Partial, Span{0, 999}},
		{"BYTES = 1-2", Partial, Span{1, 2}},
		{"bytes=1000-", Unsatisfiable, Span{}},
		{"bytes=5000-6000", Unsatisfiable, Span{}},
		{"bytes=-0", Unsatisfiable, Span{}},
		{"bytes=0-1,5-6", Whole, Span{0, 999}},
		{"bytes=20-10", Whole, Span{0, 999}},
		{"bytes=abc", Whole, Span{0, 999}},
		{"bytes=-", Whole, Span{0, 999}},
		{"bytes=+1-2", Whole, Span{0, 999}},
		{"items=0-1", Whole, Span{0, 999}},
		{"bytes=99999999999999999999-", Whole, Span{0, 999}},
	} {
		span, kind := ParseRequest(c.header, size)
		if kind != c.kind || (kind != Unsatisfiable && span != c.span) {
			t.Errorf("ParseRequest(%q) = %v, %v; want %v, %v", c.header, span, kind, c.span, c.kind)
		}
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

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=-5", "bytes=3-9", "bytes=0-1,2-3", "bytes=9-3"} {
		f.Add(s, int64(10))
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 1 {
			return
		}
		span, kind := ParseRequest(header, size)
		if kind == Unsatisfiable {
			return
		}
		if span.Start < 0 || span.End >= size || span.Start > span.End {
			t.Fatalf("ParseRequest(%q, %d) = %+v: outside the file", header, size, span)
		}
		if kind == Partial {
			again, kind2 := ParseRequest(span.Header(), size)
			if kind2 != Partial || again != span {
				t.Fatalf("round trip of %+v gave %+v %v", span, again, kind2)
			}
		}
		// Before the size is known, Peek must place the range where ParseRequest will: the probe asks for
		// those bytes, and the engine uses its answer only for the stream's first piece.
		if peek, ok := Peek(header); ok && peek.Start != span.Start {
			t.Fatalf("Peek(%q) starts at %d, ParseRequest(…, %d) at %d", header, peek.Start, size, span.Start)
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
