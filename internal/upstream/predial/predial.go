// Package predial opens TCP connections ahead of the requests that will take them: on a long path a
// stream's first requests then skip the handshake, a round trip each.
package predial

import (
	"context"
	"net"
	"sync"
	"time"
)

// warmFor is how long a connection opened ahead waits for its request before it is closed: servers drop
// connections that send nothing (nginx after client_header_timeout), and one taken late would fail its
// request.
const warmFor = 5 * time.Second

// DialFunc is a transport's dialer.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dialer dials for transports, and keeps the TCP connections Warm opened ahead until a request dials
// their address. Close the connections no request took with CloseReady.
type Dialer struct {
	dial    DialFunc      // the network's dialer, the target policy in it
	timeout time.Duration // bounds a dial ahead

	mu      sync.Mutex            // protects the following fields
	ready   map[string][]warmConn // by address: connections opened ahead, oldest first
	live    map[string]int        // by address: connections this dialer opened (or is opening) and nobody closed
	dialing sync.WaitGroup        // dials ahead in flight
}

// warmConn is a connection opened ahead, and when.
type warmConn struct {
	conn   net.Conn
	opened time.Time
}

// New returns a Dialer that dials with dial, and gives a dial ahead timeout.
func New(dial DialFunc, timeout time.Duration) *Dialer {
	return &Dialer{dial: dial, timeout: timeout, ready: map[string][]warmConn{}, live: map[string]int{}}
}

// DialContext hands out a connection opened ahead for addr, else dials one.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network == "tcp" {
		if c := d.take(addr); c != nil {
			return c, nil
		}
	}
	conn, err := d.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.live[addr]++
	return d.tracked(addr, conn), nil
}

// take returns the youngest-enough connection opened ahead for addr, nil when there is none; stale ones
// are closed.
func (d *Dialer) take(addr string) net.Conn {
	var stale []net.Conn
	defer func() {
		for _, c := range stale {
			c.Close()
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.ready[addr]) > 0 {
		w := d.ready[addr][0]
		d.ready[addr] = d.ready[addr][1:]
		if time.Since(w.opened) < warmFor {
			d._forgetIfEmpty(addr)
			return w.conn
		}
		stale = append(stale, w.conn)
	}
	d._forgetIfEmpty(addr)
	return nil
}

func (d *Dialer) _forgetIfEmpty(addr string) {
	if len(d.ready[addr]) == 0 {
		delete(d.ready, addr)
	}
}

// Warm opens connections to addr in the background until this dialer has n open to it, each handed to
// the next request that dials addr within warmFor.
func (d *Dialer) Warm(addr string, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for ; d.live[addr] < n; d.live[addr]++ {
		d.dialing.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
			defer cancel()
			conn, err := d.dial(ctx, "tcp", addr)
			d.mu.Lock()
			defer d.mu.Unlock()
			if err != nil {
				d._closed(addr)
				return
			}
			conn = d.tracked(addr, conn)
			d.ready[addr] = append(d.ready[addr], warmConn{conn: conn, opened: time.Now()})
			time.AfterFunc(warmFor, func() { d.expire(addr, conn) })
		})
	}
}

// expire closes conn when it is still waiting for a request.
func (d *Dialer) expire(addr string, conn net.Conn) {
	if d.unready(addr, conn) {
		conn.Close()
	}
}

// unready takes conn from the connections opened ahead, and reports whether it was there.
func (d *Dialer) unready(addr string, conn net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, w := range d.ready[addr] {
		if w.conn == conn {
			d.ready[addr] = append(d.ready[addr][:i], d.ready[addr][i+1:]...)
			d._forgetIfEmpty(addr)
			return true
		}
	}
	return false
}

// CloseReady closes the connections opened ahead that no request took, once the dials in flight ended.
func (d *Dialer) CloseReady() {
	d.dialing.Wait()
	d.mu.Lock()
	ready := d.ready
	d.ready = map[string][]warmConn{}
	d.mu.Unlock()
	for _, conns := range ready {
		for _, w := range conns {
			w.conn.Close()
		}
	}
}

// _closed counts one connection to addr less.
func (d *Dialer) _closed(addr string) {
	if d.live[addr]--; d.live[addr] <= 0 {
		delete(d.live, addr)
	}
}

// tracked is conn, counted out of live when it is closed.
func (d *Dialer) tracked(addr string, conn net.Conn) net.Conn {
	return &trackedConn{Conn: conn, closed: sync.OnceFunc(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d._closed(addr)
	})}
}

// trackedConn tells its dialer when it is closed.
type trackedConn struct {
	net.Conn
	closed func()
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closed()
	return err
}
