package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"mflow/internal/access"
	"mflow/internal/engine/limit"
	"mflow/internal/logging"
)

// intFlag is an integer flag with a range, so a bad value's message says what is accepted.
type intFlag struct {
	p        *int // where the value is stored
	min, max int  // the accepted range, inclusive
}

func newIntFlag(p *int, def, lo, hi int) intFlag {
	*p = def
	return intFlag{p: p, min: lo, max: hi}
}

func (f intFlag) String() string { return strconv.Itoa(*f.p) }
func (f intFlag) Type() string   { return "int" }

func (f intFlag) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < f.min || n > f.max {
		return fmt.Errorf("want a whole number from %d to %d", f.min, f.max)
	}
	*f.p = n
	return nil
}

// prefixFlag is --allow-target and --deny-target: comma-separated CIDRs.
type prefixFlag struct{ p *[]netip.Prefix }

func (f prefixFlag) String() string {
	var parts []string
	for _, p := range *f.p {
		parts = append(parts, p.String())
	}
	return strings.Join(parts, ",")
}

func (f prefixFlag) Type() string { return "CIDRs" }

func (f prefixFlag) Set(s string) error {
	p, err := access.ParsePrefixes(s)
	if err != nil {
		return err
	}
	*f.p = append(*f.p, p...)
	return nil
}

// levelFlag is --log-level: one of the seed's level names, in any case.
type levelFlag struct{ p *string }

func (f levelFlag) String() string { return *f.p }
func (f levelFlag) Type() string   { return "level" }

func (f levelFlag) Set(s string) error {
	if _, err := logging.ParseLevel(s); err != nil {
		return fmt.Errorf("want DEBUG, INFO, WARNING, ERROR or CRITICAL")
	}
	*f.p = strings.ToUpper(strings.TrimSpace(s))
	return nil
}

// choiceFlag is a flag that takes one of a few words, as --log-format.
type choiceFlag struct {
	p       *string  // where the value is stored
	choices []string // the words taken, in lower case
}

func (f choiceFlag) String() string { return *f.p }
func (f choiceFlag) Type() string   { return strings.Join(f.choices, "|") }

func (f choiceFlag) Set(s string) error {
	s = strings.ToLower(strings.TrimSpace(s))
	if !slices.Contains(f.choices, s) {
		return fmt.Errorf("want %s", strings.Join(f.choices, " or "))
	}
	*f.p = s
	return nil
}

// driveFlag reads --drive: DOMAIN=N rules, comma-separated or repeated.
type driveFlag struct{ rules *[]limit.Rule }

func (f driveFlag) String() string {
	var parts []string
	for _, r := range *f.rules {
		parts = append(parts, fmt.Sprintf("%s=%d", r.Suffix, r.PerFile))
	}
	return strings.Join(parts, ",")
}

func (f driveFlag) Type() string { return "DOMAIN=N" }

func (f driveFlag) Set(s string) error {
	for part := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		r, err := limit.ParseRule(part)
		if err != nil {
			return err
		}
		*f.rules = append(*f.rules, r)
	}
	return nil
}
