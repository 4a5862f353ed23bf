package main

import (
	"math"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBoundPaysOneConnectionsCostOnEachConnection: the fastest a client reads within the connections is
// each connection paying what one connection pays besides its bytes, over its share of the file.
func TestBoundPaysOneConnectionsCostOnEachConnection(t *testing.T) {
	const size, perConn = 64 << 20, 2e6
	atCap := size / perConn // seconds one connection spends on the bytes alone
	for _, tc := range []struct {
		name      string
		one       float64 // one connection's speed, bytes/s
		perConn   float64
		wantRatio float64 // bound ÷ (connections × one)
	}{
		{"no cost besides the bytes", perConn, perConn, 1},
		{"one first-byte wait of 150 ms", size / (atCap + 0.15), perConn, (atCap + 0.15) / connections / (0.15 + atCap/connections)},
		// the real 150 ms path: connecting, the first byte and slow start cost one connection 0.76 s
		{"real 150 ms path", size / (atCap + 0.762), perConn, 0.9375},
		{"faster than the cap says: no negative cost", 1.01 * perConn, perConn, 1 / 1.01},
		{"no cap", perConn, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := bound(size, tc.one, tc.perConn) / (connections * tc.one)
			if math.Abs(got-tc.wantRatio) > 0.001 {
				t.Errorf("bound ÷ ideal = %.4f, want %.4f", got, tc.wantRatio)
			}
		})
	}
}
