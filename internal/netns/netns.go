//go:build linux

// Package netns makes network namespaces for the tests and the benchmark: hosts of their own on this
// machine, with addresses nothing outside them sees, and a link between two of them that delays, loses
// and paces packets as a long path does (this kernel has no netem: the link is a TUN device in each
// namespace and a goroutine that carries the packets across). It needs root and iproute2's ip.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Available says why namespaces cannot be made here, or nil when they can.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("network namespaces need iproute2's ip (apt-get install iproute2)")
	}
	return nil
}

// Namespace is one network namespace, its loopback up.
type Namespace struct {
	Name string
}

// New makes a namespace whose name starts with prefix.
func New(prefix string) (*Namespace, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	var id [4]byte
	rand.Read(id[:])
	ns := &Namespace{Name: prefix + "-" + hex.EncodeToString(id[:])}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", ns.Name, err, strings.TrimSpace(string(out)))
	}
	if err := ns.IP("link", "set", "lo", "up"); err != nil {
		ns.Close()
		return nil, err
	}
	return ns, nil
}

// Close removes the namespace, and with it its devices and addresses.
func (ns *Namespace) Close() error {
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", ns.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// IP runs ip with args in the namespace (ip -n NAME args…).
func (ns *Namespace) IP(args ...string) error {
	if out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Sysctl sets a kernel setting of the namespace, such as net.ipv4.conf.all.route_localnet.
func (ns *Namespace) Sysctl(name, value string) error {
	return ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0o644)
	})
}

// Command is name with args run in the namespace (ip netns exec).
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs f on a thread of its own inside the namespace: the sockets and devices f makes belong to it. The
// thread is let go of with the goroutine (never unlocked, so the Go runtime ends it) and no other code ever
// runs in the namespace by mistake.
func (ns *Namespace) Do(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread ends with this goroutine
		fd, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- fmt.Errorf("opening namespace %s: %w", ns.Name, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("entering namespace %s: %w", ns.Name, err)
			return
		}
		done <- f()
	}()
	return <-done
}

// Listen listens on address inside the namespace.
func (ns *Namespace) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenTCP listens on address inside the namespace, its connections sending with the TCP congestion
// control named (cubic, bbr, reno): a server's choice shapes how a lossy path treats it, and the kernel's
// default may not be the one modelled.
func (ns *Namespace) ListenTCP(address, congestion string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, congestion)
		}); cerr != nil {
			return cerr
		}
		return err
	}}
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", address)
		return err
	})
	return ln, err
}

// Dialer dials from inside the namespace, from local when it is set (an address of the namespace): for an
// http.Transport's DialContext.
func (ns *Namespace) Dialer(local net.Addr) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var conn net.Conn
		err := ns.Do(func() error {
			var err error
			conn, err = (&net.Dialer{LocalAddr: local}).DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
}
