package engine

import (
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	"mflow/internal/engine/limit"
	"mflow/internal/upstream"
)

// Drives applies the drive-limit policy (package limit) for every stream: how many connections a stream of
// a file may open, what a refused request means, when a drive asked for quiet. Its lock is its own, taken
// after a file's where both are held, never the other way.
type Drives struct {
	// Share, when set, hears of every limit learned here and is told of those learned elsewhere
	// (--redis). Its Publish must not block.
	Share LimitShare

	mu     sync.Mutex    // protects limits
	limits *limit.Limits // the policy
}

// LimitShare carries learned limits between mflow instances.
type LimitShare interface {
	// Publish sends a limit learned here to the other instances, without blocking.
	Publish(limit.Fact)
}

// NewDrives is the policy with rules (the user's, then limit.Known).
func NewDrives(rules []limit.Rule) *Drives {
	return &Drives{limits: limit.New(append(append([]limit.Rule(nil), rules...), limit.Known...))}
}

// Learn takes a limit another instance learned.
func (d *Drives) Learn(f limit.Fact) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.limits.Learn(f)
}

// States is what is known of each drive, for the status page and the metrics.
func (d *Drives) States() []limit.DriveState {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limits.Drives()
}

// start is how many lanes a stream of file on host gets when it wants want, and the most requests the
// drive is known to allow the file, all streams together (0: nothing known; the lanes when probing).
// Limit is the most connections host's drive is known to allow one file (learned or a rule's); 0 when
// nothing is known.
func (d *Drives) Limit(host string) int {
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limits.Cap(host, "")
}

func (d *Drives) start(host, file string, want int) (lanes, fileLimit int, probing bool) {
	if d == nil {
		return want, 0, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	lanes, probing = d.limits.Start(host, file, want, time.Now())
	if probing {
		return lanes, lanes, true
	}
	return lanes, d.limits.Cap(host, file), false
}

func (d *Drives) refused(host, file string, r limit.Refusal) (limit.Verdict, int, bool) {
	if d == nil {
		return limit.NotALimit, 0, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limits.Refused(host, file, r, time.Now())
}

func (d *Drives) served(host, file string, n int) bool {
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limits.Served(host, file, n, time.Now())
}

func (d *Drives) withdraw(host, file string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.limits.Withdraw(host, file)
}

func (d *Drives) quietUntil(host string) time.Time {
	if d == nil {
		return time.Time{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limits.QuietUntil(host)
}

func (d *Drives) forget(file string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.limits.Forget(file, time.Now())
}

// share publishes what is known of host's drive, outside every lock.
func (d *Drives) share(host string) {
	if d == nil || d.Share == nil {
		return
	}
	d.mu.Lock()
	fact, ok := d.limits.FactOf(host)
	d.mu.Unlock()
	if ok {
		d.Share.Publish(fact)
	}
}

// errLimited ends a request the drive refused as one connection too many: the stream carries on over the
// ones it serves, which take over the refused one's bytes.
var errLimited = errors.New("refused as one connection too many; the stream carries on over the others")

// refusalOf reads a failed attempt as a refusal: a 403, 429 or 503 answer, or a connection reset (or
// closed) before any answer. false for every other failure.
func refusalOf(err error) (limit.Refusal, bool) {
	var status *upstream.StatusError
	switch {
	case errors.As(err, &status):
		return limit.Refusal{Status: status.Code, RetryAfter: status.RetryAfter}, true
	case errors.Is(err, upstream.ErrShortBody):
		return limit.Refusal{}, false // an answer came, and was cut later
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return limit.Refusal{}, true
	}
	return limit.Refusal{}, false
}
