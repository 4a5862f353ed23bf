package upstream

import (
	"errors"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"mflow/internal/access"
)

// Retry is the one policy for asking again after a failed request, for probes and chunks alike: how many
// times, how long to wait (exponential back-off with jitter, or longer when the upstream asked for it with
// Retry-After), and which failures are worth another try.
type Retry struct {
	// Max is how many times one request may be tried again.
	Max int
	// Base is the first back-off; it doubles with each retry up to MaxBackoff. Default 250 ms.
	Base time.Duration
}

// MaxBackoff caps the wait between two tries.
const MaxBackoff = 5 * time.Second

// Wait is the pause before retry n (from 1) after err: with jitter, so connections that failed together do
// not retry in step, and at least the Retry-After the upstream sent.
func (r Retry) Wait(n int, err error) time.Duration {
	base := r.Base
	if base <= 0 {
		base = 250 * time.Millisecond
	}
	d := min(base<<min(max(n-1, 0), 16), MaxBackoff)
	d = d/2 + rand.N(d/2+1)
	var status *StatusError
	if errors.As(err, &status) {
		d = max(d, status.RetryAfter)
	}
	return d
}

// Retryable reports whether asking again may succeed: a 429 or 5xx, no answer, an answer cut short or
// silent, or one with the wrong bytes. Another version of the file, a refusal (4xx), too many redirects, an
// impossible size, a name that does not exist and a network with no route are final.
func Retryable(err error) bool {
	var status *StatusError
	var netErr *NetError
	var refused *access.RefusedError
	switch {
	case errors.As(err, &refused), nowhere(err):
		return false
	case errors.As(err, &status):
		return status.Temporary()
	case errors.Is(err, ErrChanged), errors.Is(err, ErrTooManyRedirects), errors.Is(err, ErrTooBig):
		return false
	case errors.As(err, &netErr), errors.Is(err, ErrBadAnswer), errors.Is(err, ErrShortBody), errors.Is(err, ErrStalled):
		return true
	}
	return false
}

// nowhere reports whether err says the upstream cannot be reached at all: its name does not exist, or no
// route leads to its network. Asking again in a second finds the same.
func nowhere(err error) bool {
	var dns *net.DNSError
	return (errors.As(err, &dns) && dns.IsNotFound) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}
