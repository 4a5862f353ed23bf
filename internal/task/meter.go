package task

import (
	"sync/atomic"
	"time"
)

// meter measures a rate over the last whole seconds. add runs on every write to a player, so it takes no
// lock: each slot packs the second it counts (low 16 bits of the Unix time) with its bytes.
type meter struct {
	slots [meterSlots]atomic.Uint64
}

const (
	meterSlots  = 4  // seconds kept: the window and the second being counted, and spare
	meterWindow = 2  // whole seconds a rate is taken over
	secondBits  = 16 // bits of a slot that say which second it counts
	bytesMask   = 1<<(64-secondBits) - 1
)

// add counts n bytes at now.
func (m *meter) add(now time.Time, n int64) {
	sec := uint64(now.Unix()) & (1<<secondBits - 1)
	slot := &m.slots[sec%meterSlots]
	for {
		old := slot.Load()
		next := sec<<(64-secondBits) | uint64(n)&bytesMask
		if old>>(64-secondBits) == sec {
			next = old + uint64(n)&bytesMask
		}
		if slot.CompareAndSwap(old, next) {
			return
		}
	}
}

// rate is the bytes per second counted over the meterWindow whole seconds before now.
func (m *meter) rate(now time.Time) int64 {
	var sum uint64
	for back := int64(1); back <= meterWindow; back++ {
		sec := uint64(now.Unix()-back) & (1<<secondBits - 1)
		if v := m.slots[sec%meterSlots].Load(); v>>(64-secondBits) == sec {
			sum += v & bytesMask
		}
	}
	return int64(sum / meterWindow)
}
