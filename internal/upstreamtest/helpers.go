package upstreamtest

import (
	"math/rand/v2"
	"testing"
	"time"
)

// RandomFile returns n random bytes, the same for the same n.
func RandomFile(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// WaitFor polls cond until it holds, failing the test after five seconds. It is for conditions of
// another process or server, which no channel reports.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
	}
}
