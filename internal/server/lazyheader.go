package server

import (
	"errors"
	"net/http"
	"os"
	"sync"
	"time"
)

// entityHeaders describe a stream's body; an error answered instead of it must not carry them.
var entityHeaders = []string{"Content-Range", "Content-Length", "Content-Disposition", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges"}

// lazyHeader sends the status line with the first byte of the body, and cuts a player that takes nothing
// for its idle time.
type lazyHeader struct {
	w      http.ResponseWriter
	r      *http.Request
	status int
	sent   bool
	// idle, when set, is how long a player may take no byte before it is cut (--player-timeout): a player
	// paused for long, or one that never reads, would otherwise hold its stream and its slot.
	idle time.Duration

	mu  sync.Mutex // protects cut, and the write deadline's setting
	cut bool       // the engine set a deadline to end the stream: no idle deadline replaces it
}

// idleStep is the most written under one idle deadline: a player reading slowly but steadily makes
// progress within each step and is never cut.
const idleStep = 64 << 10

func (l *lazyHeader) Write(b []byte) (int, error) {
	if !l.sent {
		l.sent = true
		l.w.WriteHeader(l.status)
	}
	if l.idle <= 0 {
		return l.w.Write(b)
	}
	written := 0
	for len(b) > 0 {
		step := b[:min(len(b), idleStep)]
		l.mu.Lock()
		if !l.cut {
			_ = http.NewResponseController(l.w).SetWriteDeadline(time.Now().Add(l.idle))
		}
		l.mu.Unlock()
		n, err := l.w.Write(step)
		written += n
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				resetOnClose(l.r) // drop what the kernel still holds for a player that took nothing
			}
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

// Flush sends what is buffered; a broken connection shows at the next Write.
func (l *lazyHeader) Flush() { _ = http.NewResponseController(l.w).Flush() }

// SetWriteDeadline lets the engine cut a write the player is slow to take when the stream must end. The
// connection is then reset, not closed: net/http closes it at once when the write fails.
func (l *lazyHeader) SetWriteDeadline(t time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !t.IsZero() {
		l.cut = true
		resetOnClose(l.r)
	}
	return http.NewResponseController(l.w).SetWriteDeadline(t)
}
