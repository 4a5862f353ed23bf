//go:build linux

package netns

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Wire joins two namespaces with a point-to-point path: a TUN device in each, MTU 1500, and a goroutine per
// direction that carries each packet across as Path says. The addresses are in 127.0.0.0/8, made routable in
// both namespaces (route_localnet): no packet can leave them.
type Wire struct {
	A, B netip.Addr // the addresses of the two ends

	devices [2]*os.File
	wg      sync.WaitGroup
	mu      sync.Mutex // protects the following fields
	carried [2]int64   // packets carried a→b, b→a
	dropped [2]int64   // packets dropped a→b, b→a
}

// maxQueued bounds the bytes a direction holds in flight, as a router's buffer: past it a packet is
// dropped.
const maxQueued = 32 << 20

// Connect makes a Link between namespaces a and b, with addresses A and B in 127.0.0.0/8.
func Connect(a, b *Namespace, addrA, addrB netip.Addr, path Path) (*Wire, error) {
	l := &Wire{A: addrA, B: addrB}
	for i, end := range []struct {
		ns          *Namespace
		self, other netip.Addr
	}{{a, addrA, addrB}, {b, addrB, addrA}} {
		dev, err := end.ns.tun("mflow0")
		if err != nil {
			l.close()
			return nil, err
		}
		l.devices[i] = dev
		if err := end.ns.routable("mflow0", end.self, end.other); err != nil {
			l.close()
			return nil, err
		}
	}
	rng := rand.New(rand.NewPCG(path.Seed, 0x6d666c6f77))
	var rngMu sync.Mutex
	draw := func() float64 {
		rngMu.Lock()
		defer rngMu.Unlock()
		return rng.Float64()
	}
	for dir := range 2 {
		l.wg.Go(func() { l.carry(dir, path, draw) })
	}
	return l, nil
}

// tun makes a TUN device name in the namespace and opens it, its packets without a header.
func (ns *Namespace) tun(name string) (*os.File, error) {
	var dev *os.File
	err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("opening /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("making TUN device %s: %w", name, err)
		}
		dev = os.NewFile(uintptr(fd), name) // non-blocking: reads wait in Go's poller, and Close ends them
		return nil
	})
	return dev, err
}

// routable gives device dev address self, its peer other, MTU 1500, and lets addresses of 127.0.0.0/8 on
// it be routed: only 127.0.0.1 stays this namespace's own loopback address.
func (ns *Namespace) routable(dev string, self, other netip.Addr) error {
	for _, args := range [][]string{
		{"addr", "add", self.String(), "peer", other.String() + "/32", "dev", dev},
		{"link", "set", dev, "mtu", "1500", "up"},
		{"route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"}, // 127.0.0.1 keeps its own
	} {
		if err := ns.IP(args...); err != nil {
			return err
		}
	}
	for _, name := range []string{"net.ipv4.conf.all.route_localnet", "net.ipv4.conf." + dev + ".route_localnet"} {
		if err := ns.Sysctl(name, "1"); err != nil {
			return err
		}
	}
	return nil
}

// packet is one packet in flight, and when it arrives.
type packet struct {
	data []byte
	at   time.Time
}

// carry moves packets from one end's device to the other's: dir 0 from A to B, 1 from B to A.
func (l *Wire) carry(dir int, path Path, draw func() float64) {
	from, to := l.devices[dir], l.devices[1-dir]
	flight := make(chan packet, 1<<16)
	var queued sync.Mutex // guards bytes
	var bytes int
	delivered := make(chan struct{})
	go func() { // the far end: each packet as it arrives
		defer close(delivered)
		for p := range flight {
			if d := time.Until(p.at); d > 0 {
				time.Sleep(d)
			}
			to.Write(p.data) // a packet the far end cannot take is lost, as on a wire
			queued.Lock()
			bytes -= len(p.data)
			queued.Unlock()
		}
	}()
	defer func() { close(flight); <-delivered }()
	var last, free time.Time // the last packet's arrival; when the link is free to send the next
	buf := make([]byte, 65536)
	for {
		n, err := from.Read(buf)
		if err != nil {
			return // the device closed
		}
		if path.Loss > 0 && draw() < path.Loss {
			l.count(dir, false)
			continue
		}
		queued.Lock()
		full := bytes+n > maxQueued
		if !full {
			bytes += n
		}
		queued.Unlock()
		if full {
			l.count(dir, false)
			continue
		}
		at := time.Now() // when the packet leaves: at once, or once the link has sent what came before it
		if path.Rate > 0 {
			at = later(at, free)
			free = at.Add(time.Duration(float64(n) / path.Rate * float64(time.Second)))
			at = free
		}
		at = at.Add(path.Delay)
		if path.Jitter > 0 {
			at = at.Add(time.Duration(draw() * float64(path.Jitter)))
		}
		at = later(at, last) // packets keep their order
		last = at
		l.count(dir, true)
		flight <- packet{data: append([]byte(nil), buf[:n]...), at: at}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (l *Wire) count(dir int, carried bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if carried {
		l.carried[dir]++
	} else {
		l.dropped[dir]++
	}
}

// Counts are the packets the link carried and dropped so far, A to B and B to A.
func (l *Wire) Counts() (carried, dropped [2]int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.carried, l.dropped
}

// Close stops carrying packets. The devices go with their namespaces.
func (l *Wire) Close() error {
	err := l.close()
	l.wg.Wait()
	return err
}

func (l *Wire) close() error {
	var errs []error
	for _, d := range l.devices {
		if d != nil {
			errs = append(errs, d.Close())
		}
	}
	return errors.Join(errs...)
}
