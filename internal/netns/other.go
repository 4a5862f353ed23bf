//go:build !linux

// Package netns makes network namespaces for the tests and the benchmark; they exist on Linux only.
package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
)

// Available says that network namespaces cannot be made here.
func Available() error { return errors.New("network namespaces exist on Linux only") }

// Namespace is one network namespace; none can be made here.
type Namespace struct{ Name string }

// New fails: there are no namespaces here.
func New(string) (*Namespace, error) { return nil, Available() }

func (ns *Namespace) Close() error                                   { return Available() }
func (ns *Namespace) IP(...string) error                             { return Available() }
func (ns *Namespace) Sysctl(string, string) error                    { return Available() }
func (ns *Namespace) Do(func() error) error                          { return Available() }
func (ns *Namespace) Listen(string, string) (net.Listener, error)    { return nil, Available() }
func (ns *Namespace) ListenTCP(string, string) (net.Listener, error) { return nil, Available() }
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}
func (ns *Namespace) Dialer(net.Addr) func(context.Context, string, string) (net.Conn, error) {
	return func(context.Context, string, string) (net.Conn, error) { return nil, Available() }
}

// Wire would join two namespaces; there are none here.
type Wire struct{ A, B netip.Addr }

// Connect fails: there are no namespaces here.
func Connect(_, _ *Namespace, _, _ netip.Addr, _ Path) (*Wire, error) { return nil, Available() }

func (l *Wire) Close() error                        { return Available() }
func (l *Wire) Counts() (carried, dropped [2]int64) { return }
