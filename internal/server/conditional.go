package server

import (
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"mflow/internal/source"
)

// The conditional requests of RFC 9110 §13, evaluated against the validators the probe found, in the
// order §13.2.2 gives and with the comparisons net/http's ServeContent makes, so that a player or a
// resuming download gets from mflow what it would get from the file's own server.

// cond is what one precondition says: absent, holds, or fails.
type cond int

const (
	condNone cond = iota
	condTrue
	condFalse
)

// validators are the version of a file as preconditions see it.
type validators struct {
	etag     string    // as the upstream sent it; "" when it sent none
	modified time.Time // Last-Modified, to the second; zero when none or unreadable
}

func validatorsOf(v source.Version) validators {
	val := validators{etag: v.ETag}
	if t, err := http.ParseTime(v.LastModified); err == nil {
		val.modified = t
	}
	return val
}

// precondition is the status a conditional request is answered with instead of the file: 412 when
// If-Match or If-Unmodified-Since fails, 304 when If-None-Match or If-Modified-Since says the player holds
// this version already; 0 when the file is to be sent.
func precondition(r *http.Request, v validators) int {
	c := v.ifMatch(r.Header.Get("If-Match"))
	if c == condNone {
		c = v.ifUnmodifiedSince(r.Header.Get("If-Unmodified-Since"))
	}
	if c == condFalse {
		return http.StatusPreconditionFailed
	}
	switch v.ifNoneMatch(r.Header.Get("If-None-Match")) {
	case condFalse:
		return http.StatusNotModified // /stream answers GET and HEAD only
	case condNone:
		if v.ifModifiedSince(r.Header.Get("If-Modified-Since")) == condFalse {
			return http.StatusNotModified
		}
	}
	return 0
}

// rangeApplies reports whether the Range of a request applies: it has no If-Range, or one naming this
// version (a strong ETag, or exactly the file's date). Otherwise the whole file is sent.
func (v validators) rangeApplies(ifRange string) bool {
	if ifRange == "" {
		return true
	}
	if etag, _ := scanETag(ifRange); etag != "" {
		return strongMatch(etag, v.etag)
	}
	t, err := http.ParseTime(ifRange)
	return err == nil && !v.modified.IsZero() && t.Unix() == v.modified.Unix()
}

func (v validators) ifMatch(header string) cond {
	if header == "" {
		return condNone
	}
	match := eachETag(header, func(etag string) bool { return etag == "*" || strongMatch(etag, v.etag) })
	if match {
		return condTrue
	}
	return condFalse
}

func (v validators) ifNoneMatch(header string) cond {
	if header == "" {
		return condNone
	}
	match := eachETag(header, func(etag string) bool { return etag == "*" || weakMatch(etag, v.etag) })
	if match {
		return condFalse
	}
	return condTrue
}

func (v validators) ifUnmodifiedSince(header string) cond {
	t, ok := v.dateOf(header)
	switch {
	case !ok:
		return condNone
	case !v.modified.After(t):
		return condTrue
	}
	return condFalse
}

func (v validators) ifModifiedSince(header string) cond {
	t, ok := v.dateOf(header)
	switch {
	case !ok:
		return condNone
	case !v.modified.After(t):
		return condFalse
	}
	return condTrue
}

// dateOf reads a precondition's date; false when there is none, it is unreadable, or the file has no date
// to compare it with (the precondition is then ignored, RFC 9110 §13.1.3).
func (v validators) dateOf(header string) (time.Time, bool) {
	if header == "" || v.modified.IsZero() {
		return time.Time{}, false
	}
	t, err := http.ParseTime(header)
	return t, err == nil
}

// eachETag calls match with each entity tag of a list (or "*"), until one matches; a malformed one ends
// the list.
func eachETag(list string, match func(etag string) bool) bool {
	for {
		list = textproto.TrimString(list)
		switch {
		case list == "":
			return false
		case list[0] == ',':
			list = list[1:]
			continue
		case list[0] == '*':
			return match("*")
		}
		etag, rest := scanETag(list)
		if etag == "" {
			return false
		}
		if match(etag) {
			return true
		}
		list = rest
	}
}

// scanETag reads the entity tag at the start of s, W/"…" or "…", and returns it and what follows; "" when
// s does not start with one.
func scanETag(s string) (etag, rest string) {
	s = textproto.TrimString(s)
	start := 0
	if strings.HasPrefix(s, "W/") {
		start = 2
	}
	if len(s[start:]) < 2 || s[start] != '"' {
		return "", ""
	}
	for i := start + 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == 0x21 || c >= 0x23 && c <= 0x7E || c >= 0x80:
		case c == '"':
			return s[:i+1], s[i+1:]
		default:
			return "", ""
		}
	}
	return "", ""
}

// strongMatch is RFC 9110's strong comparison: the same tag, and neither weak.
func strongMatch(a, b string) bool { return a == b && a != "" && a[0] == '"' }

// weakMatch is RFC 9110's weak comparison: the same tag, weak or not.
func weakMatch(a, b string) bool { return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/") }
