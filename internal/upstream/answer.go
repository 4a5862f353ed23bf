package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"mflow/internal/access"
	"mflow/internal/httprange"
	"mflow/internal/source"
)

// StatusError is an upstream answer whose status mflow cannot use.
type StatusError struct {
	Code       int           // the HTTP status code
	Status     string        // the status line, such as "404 Not Found"
	URL        string        // the redacted URL that answered
	RetryAfter time.Duration // the wait a 429 or 503 asked for, 0 when none
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("upstream answered %s for %s", e.Status, e.URL)
}

// Temporary reports whether trying again later may succeed: 429 and 5xx.
func (e *StatusError) Temporary() bool {
	return e.Code == http.StatusTooManyRequests || e.Code >= 500
}

// Expired reports whether the answer means a signed link has expired: the link must be resolved again.
func (e *StatusError) Expired() bool {
	return e.Code == http.StatusForbidden || e.Code == http.StatusGone
}

// NetError is a request that got no answer: refused, reset, timed out.
type NetError struct {
	URL string // the redacted URL asked
	Err error  // what went wrong
}

func (e *NetError) Error() string { return fmt.Sprintf("upstream %s: %v", e.URL, e.Err) }
func (e *NetError) Unwrap() error { return e.Err }

// Timeout reports whether the request timed out (as opposed to being refused or cancelled).
func (e *NetError) Timeout() bool {
	var ne net.Error
	return (errors.As(e.Err, &ne) && ne.Timeout()) || errors.Is(e.Err, context.DeadlineExceeded)
}

var (
	// ErrChanged means the file is not the version first seen: the answer must be abandoned, not spliced.
	ErrChanged = errors.New("upstream file changed")
	// ErrBadAnswer is an answer that does not carry exactly the bytes asked; asking again may fix it.
	ErrBadAnswer = errors.New("upstream answered with the wrong bytes")
	// ErrTooBig is a file larger than MaxSize: a size no real file has, so a lie or a broken server.
	ErrTooBig = errors.New("upstream claims a file larger than mflow handles")
	// ErrShortBody is an answer that ended before the bytes it announced.
	ErrShortBody = errors.New("upstream answer ended early")
	// ErrStalled is a request that got nothing (no answer, or no byte of its body) for the stall timeout.
	ErrStalled = errors.New("upstream stalled")
)

// StallTimeout is how long a request may bring nothing, no answer or no byte of its body, before it counts
// as stalled (ErrStalled) and is asked again, unless the stream or the probe is told otherwise.
const StallTimeout = 10 * time.Second

// MaxSize is the largest file mflow streams, 2^53 bytes (8 PiB): every offset and every sum of a size and
// a chunk stays far from overflowing an int64, and exact in a float64.
const MaxSize int64 = 1 << 53

// CheckSize refuses a size above MaxSize.
func CheckSize(size int64) error {
	if size > MaxSize {
		return fmt.Errorf("%w: %d bytes, more than 2^53", ErrTooBig, size)
	}
	return nil
}

// checkIdentity refuses an answer whose body is not the file's bytes as stored: a Content-Encoding other
// than identity (gzip, br…) has other bytes at other offsets, even when its Content-Range looks right.
func checkIdentity(h http.Header) error {
	for _, enc := range h.Values("Content-Encoding") {
		if e := strings.TrimSpace(enc); e != "" && !strings.EqualFold(e, "identity") {
			return fmt.Errorf("%w: Content-Encoding %s, not the file's own bytes", ErrBadAnswer, e)
		}
	}
	return nil
}

// CheckUsable returns a *StatusError for an answer that is neither 200 nor 206, and ErrBadAnswer for one
// whose body is encoded.
func CheckUsable(resp *http.Response, rawURL string) error {
	if err := CheckStatus(resp, rawURL); err != nil {
		return err
	}
	return checkIdentity(resp.Header)
}

// CheckStatus returns a *StatusError for an answer that is neither 200 nor 206.
func CheckStatus(resp *http.Response, rawURL string) error {
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
		return nil
	}
	return &StatusError{Code: resp.StatusCode, Status: resp.Status, URL: Redact(rawURL), RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
}

// CheckPartial checks that resp is the answer to a request for span of version v: status 206, a
// Content-Range of exactly span over v.Size, and the same validators. An ErrChanged error means another
// version of the file; an ErrBadAnswer error means this answer cannot be used but another may be.
func CheckPartial(resp *http.Response, rawURL string, span httprange.Span, v source.Version) error {
	if err := CheckUsable(resp, rawURL); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("%w: %s instead of 206 for %s", ErrBadAnswer, resp.Status, span.Header())
	}
	if err := sameVersion(resp.Header, v); err != nil {
		return err
	}
	cr, err := httprange.ParseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	if cr.Size >= 0 && cr.Size != v.Size {
		return fmt.Errorf("%w: size %d, was %d", ErrChanged, cr.Size, v.Size)
	}
	if cr.Unsatisfied || cr.Span != span {
		return fmt.Errorf("%w: Content-Range %q for %s", ErrBadAnswer, resp.Header.Get("Content-Range"), span.Header())
	}
	return nil
}

// sameVersion compares the validators of an answer with those first seen. A validator the upstream sent
// at first must be sent again, unchanged.
func sameVersion(h http.Header, v source.Version) error {
	if etag := h.Get("ETag"); v.ETag != "" && etag != v.ETag {
		return fmt.Errorf("%w: ETag %q, was %q", ErrChanged, etag, v.ETag)
	}
	if lm := h.Get("Last-Modified"); v.LastModified != "" && lm != v.LastModified {
		return fmt.Errorf("%w: Last-Modified %q, was %q", ErrChanged, lm, v.LastModified)
	}
	return nil
}

// SameVersion checks that a fresh probe found the version first seen.
func SameVersion(now, was source.Version) error {
	if now.Size != was.Size {
		return fmt.Errorf("%w: size %d, was %d", ErrChanged, now.Size, was.Size)
	}
	h := http.Header{}
	h.Set("ETag", now.ETag)
	h.Set("Last-Modified", now.LastModified)
	return sameVersion(h, was)
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date. Waits are capped at a minute.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.Atoi(v); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), time.Minute)
}

// CheckWhole checks that resp is a 200 answer with the whole of version v.
func CheckWhole(resp *http.Response, rawURL string, v source.Version) error {
	if err := CheckUsable(resp, rawURL); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s instead of 200 for the whole file", ErrBadAnswer, resp.Status)
	}
	if v.Size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != v.Size {
		return fmt.Errorf("%w: size %d, was %d", ErrChanged, resp.ContentLength, v.Size)
	}
	return sameVersion(resp.Header, v)
}

// Kind is what went wrong with an upstream, as those who report a failure need to know it: a player is
// told a status, an aria2 client an error code.
type Kind int

const (
	KindOther       Kind = iota // a bad or changed answer, a file too big, anything else
	KindRefused                 // the target policy refused the address
	KindStatus                  // the upstream answered a status mflow cannot use
	KindTimeout                 // no answer in time
	KindUnreachable             // no answer at all: refused, reset, no such host
)

// Failure is an upstream failure classified once, for every layer that reports it.
type Failure struct {
	Kind    Kind   `json:"kind"`
	Code    int    `json:"code,omitempty"` // the HTTP status, for KindStatus
	Message string `json:"message"`        // the error's text
}

// Classify says what kind of failure err is.
func Classify(err error) Failure {
	f := Failure{Message: err.Error()}
	var status *StatusError
	var netErr *NetError
	var refused *access.RefusedError
	switch {
	case errors.As(err, &refused):
		f.Kind = KindRefused
	case errors.As(err, &status):
		f.Kind, f.Code = KindStatus, status.Code
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, context.DeadlineExceeded):
		f.Kind = KindTimeout
	case errors.As(err, &netErr):
		f.Kind = KindUnreachable
	}
	return f
}
