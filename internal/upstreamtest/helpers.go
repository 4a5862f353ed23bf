package upstreamtest

import (
	"math/rand/v2"
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
