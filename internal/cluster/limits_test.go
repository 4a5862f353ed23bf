package cluster

import (
	"testing"
	"time"

	"mflow/internal/engine/limit"
)

func TestALimitOneInstanceLearnedHoldsForAll(t *testing.T) {
	rs := startRedis(t)
	heard := func() (chan limit.Fact, *LimitShare) {
		ch := make(chan limit.Fact, 8)
		rdb := rs.client()
		t.Cleanup(func() { rdb.Close() })
		l := NewLimits(rdb, func(f limit.Fact) {
			select {
			case ch <- f:
			default: // heard enough
			}
		}, quiet())
		t.Cleanup(l.Close)
		return ch, l
	}
	next := func(ch chan limit.Fact) limit.Fact {
		t.Helper()
		select {
		case f := <-ch:
			return f
		case <-time.After(30 * time.Second):
			t.Fatal("no limit heard within 30 s")
			return limit.Fact{}
		}
	}
	_, a := heard()
	bHeard, _ := heard()
	// b subscribes in the background: publish until it hears, as a drive's refusals would come again.
	fact := limit.Fact{Drive: "115cdn.net", Limit: 2, Why: "refused a connection beyond 2 (403)", At: time.Now().Truncate(time.Second)}
	got := make(chan limit.Fact, 1)
	go func() { got <- next(bHeard) }()
	var f limit.Fact
	for tick := time.NewTicker(50 * time.Millisecond); ; {
		a.Publish(fact)
		select {
		case f = <-got:
		case <-tick.C:
			continue
		}
		tick.Stop()
		break
	}
	if f.Drive != "115cdn.net" || f.Limit != 2 {
		t.Errorf("the other instance heard %+v", f)
	}
	// An instance started later finds it kept.
	cHeard, _ := heard()
	if f := next(cHeard); f.Drive != "115cdn.net" || f.Limit != 2 || !f.At.Equal(fact.At) {
		t.Errorf("an instance started later learned %+v", f)
	}
}
