//go:build linux

package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
	"mflow/internal/testskip"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair is two namespaces joined by a link with path, closed when the test ends; the test is skipped
// where namespaces cannot be made, and fails under CI.
func pair(t *testing.T, path Path) (a, b *Namespace, l *Wire) {
	t.Helper()
	available := Available()
	testskip.Unless(t, available == nil, fmt.Sprint(available, ", the namespace tests did not run (sudo go test ./internal/netns)"))
	a, err := New("mflow-test-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err = New("mflow-test-b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	l, err = Connect(a, b, netip.MustParseAddr("127.77.0.1"), netip.MustParseAddr("127.77.0.2"), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return a, b, l
}

func TestALinkCarriesTheBytesAfterItsDelay(t *testing.T) {
	a, b, l := pair(t, Path{Delay: 40 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.01, Seed: 1})
	ln, err := b.Listen("tcp", "127.77.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := make([]byte, 2<<20)
	rand.Read(data)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(data)
	}()
	began := time.Now()
	conn, err := a.Dialer(nil)(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if d := time.Since(began); d < 80*time.Millisecond {
		t.Errorf("the handshake took %v, less than the path's round trip of 80 ms", d)
	}
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v: want the 2 MiB sent, intact through the losses", len(got), err)
	}
	if carried, dropped := l.Counts(); carried[1] < 1000 || dropped[0]+dropped[1] == 0 {
		t.Errorf("carried %v, dropped %v: want the packets of 2 MiB, some lost", carried, dropped)
	}
	// Nothing but the link joins them: the other namespace's addresses are not this one's.
	if _, err := a.Dialer(nil)(t.Context(), "tcp", "127.0.0.1:"+portOf(ln.Addr())); err == nil {
		t.Error("b's listener answered on a's own loopback")
	}
}

func TestALinkThatLosesEverythingCarriesNothing(t *testing.T) {
	a, b, l := pair(t, Path{Loss: 1})
	ln, err := b.Listen("tcp", "127.77.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.Dialer(nil)(ctx, "tcp", ln.Addr().String()); err == nil {
		t.Fatal("connected over a link that drops every packet")
	}
	if carried, dropped := l.Counts(); carried[0] != 0 || dropped[0] == 0 {
		t.Errorf("carried %v, dropped %v", carried, dropped)
	}
}

func portOf(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return port
}
