// Package bytesize reads and writes the byte sizes and speeds mflow's flags take:
// 512K, 1M, 0.5M, 2G, with 1K = 1024 as aria2 counts.
package bytesize

import (
	"fmt"
	"strconv"
	"strings"

	units "github.com/docker/go-units"
)

// Form is the accepted form, for error messages.
const Form = "a number with an optional K, M or G suffix, such as 512K, 1M or 0.5M"

// Parse reads a size such as "1M" or "0.5M" in bytes (1K = 1024).
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" || strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%q is not %s", s, Form)
	}
	n, err := units.RAMInBytes(t)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not %s", s, Form)
	}
	return n, nil
}

// Format writes n the way Parse reads it, exactly where it can: 1048576 → "1M", 1536 → "1.5K".
func Format(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.size && n%(u.size/1024) == 0 {
			return strconv.FormatFloat(float64(n)/float64(u.size), 'f', -1, 64) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Human writes n for a person to read: "12.3MiB".
func Human(n float64) string {
	return units.BytesSize(n)
}

// Value is a flag value holding a size; it satisfies pflag.Value.
type Value struct {
	n *int64 // where the parsed size is stored
}

// NewValue stores def in *p and returns a flag value that sets *p.
func NewValue(p *int64, def int64) *Value {
	*p = def
	return &Value{n: p}
}

func (v *Value) String() string { return Format(*v.n) }

// Set parses s into the value.
func (v *Value) Set(s string) error {
	n, err := Parse(s)
	if err != nil {
		return err
	}
	*v.n = n
	return nil
}

// Type names the value in --help.
func (v *Value) Type() string { return "size" }
