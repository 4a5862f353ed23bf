package predial

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// listener accepts connections and counts them.
type listener struct {
	net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func listen(t *testing.T) *listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{Listener: ln}
	l.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			defer c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); l.wg.Wait() })
	return l
}

func TestConnectionsOpenedAheadServeTheDialsThatFollow(t *testing.T) {
	l := listen(t)
	d := New((&net.Dialer{}).DialContext, time.Second)
	defer d.CloseReady()
	addr := l.Addr().String()
	d.Warm(addr, 3)
	d.dialing.Wait() // the three are ready
	d.Warm(addr, 3)  // already open: no more
	d.dialing.Wait()
	for i := range 3 {
		c, err := d.DialContext(t.Context(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if n := l.accepted.Load(); n > 3 {
			t.Fatalf("dial %d made a connection of its own: %d accepted", i+1, n)
		}
	}
	c, err := d.DialContext(t.Context(), "tcp", addr) // none ready: dialled
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d.live[addr] != 3 {
		t.Errorf("%d connections counted open, want the three still open", d.live[addr])
	}
}

// pipeDial dials in memory: each dial is one end of a pipe, the other closed with the test.
func pipeDial(t *testing.T, dials *atomic.Int64) DialFunc {
	return func(context.Context, string, string) (net.Conn, error) {
		dials.Add(1)
		a, b := net.Pipe()
		t.Cleanup(func() { b.Close() })
		return a, nil
	}
}

func TestAConnectionNoRequestTakesIsClosedAfterItsWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dials atomic.Int64
		d := New(pipeDial(t, &dials), time.Second)
		d.Warm("a:80", 2)
		synctest.Wait()
		time.Sleep(warmFor + time.Millisecond) // servers drop silent connections: these are closed first
		synctest.Wait()
		if len(d.ready) != 0 || len(d.live) != 0 {
			t.Errorf("after warmFor: %d addresses with connections ready, %d counted open; want none", len(d.ready), len(d.live))
		}
		if _, err := d.DialContext(t.Context(), "tcp", "a:80"); err != nil || dials.Load() != 3 {
			t.Errorf("a dial after they expired: err %v, %d dials; want a third, fresh one", err, dials.Load())
		}
	})
}

func TestCloseReadyClosesWhatNoRequestTook(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dials atomic.Int64
		d := New(pipeDial(t, &dials), time.Second)
		d.Warm("a:80", 2)
		d.CloseReady()
		if len(d.ready) != 0 || len(d.live) != 0 {
			t.Errorf("%d addresses with connections ready, %d counted open after CloseReady; want none", len(d.ready), len(d.live))
		}
	})
}
