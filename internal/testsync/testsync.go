// Package testsync holds what tests wait on and collect with: a poll for another process's state, a
// buffer goroutines write logs to.
package testsync

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// WaitFor polls cond until it holds, failing the test after 30 seconds. It is for conditions of another
// process or server, which no channel reports. The deadline is for a saturated machine (CI's, a user's
// with a film playing): a condition that holds returns at once, so only a failure waits that long.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
	}
}

// SyncBuffer collects what goroutines write (logs), safely read by the test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Stable is a WaitFor condition: true once get returned the same value twenty polls in a row, as the bytes
// an upstream served once a stream is blocked on its player.
func Stable(get func() int64) func() bool {
	last, same := int64(-1), 0
	return func() bool {
		if v := get(); v == last {
			same++
		} else {
			last, same = v, 0
		}
		return same >= 20
	}
}
