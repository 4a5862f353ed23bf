package netns

import "time"

// Path is what a Link does to the packets it carries, each way: a long path's delay (half its round trip),
// jitter, loss and, when set, a link's rate.
type Path struct {
	Delay  time.Duration // one way
	Jitter time.Duration // up to this much more, drawn per packet; packets keep their order
	Loss   float64       // the chance a packet is dropped, 0 to 1
	Rate   float64       // bytes/s of the link; 0 is no bound but the host's
	Seed   uint64        // makes the draws of jitter and loss repeatable
}
