package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"

	"mflow/internal/app"
	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/netns"
	"mflow/internal/server"
	"mflow/internal/upstreamtest"
)

// place is where a model's upstream, players, mflow and aria2c run: this process's loopback, where the
// latency of a drive model is the server's, or two network namespaces joined by a real path, where it is
// TCP's: slow start, slow start after idle, losses.
type place struct {
	name     string
	upstream func(content []byte, opts upstreamtest.Options) (*upstreamtest.Upstream, error)
	listen   func() (net.Listener, error) // where players reach mflow
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	command  func(ctx context.Context, name string, args ...string) *exec.Cmd
	close    func()
}

// loopback is this process's own.
func loopback() *place {
	return &place{
		name: "in-process",
		upstream: func(c []byte, o upstreamtest.Options) (*upstreamtest.Upstream, error) {
			return upstreamtest.New(c, o), nil
		},
		listen:  func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
		command: exec.CommandContext,
		close:   func() {},
	}
}

// overPath is two namespaces joined by a link with path: the drive in one, the players, mflow and aria2c in
// the other.
func overPath(path netns.Path) (*place, error) {
	players, err := netns.New("mflow-bench-players")
	if err != nil {
		return nil, err
	}
	drive, err := netns.New("mflow-bench-drive")
	if err != nil {
		players.Close()
		return nil, err
	}
	link, err := netns.Connect(players, drive, netip.MustParseAddr("127.77.0.1"), netip.MustParseAddr("127.77.0.2"), path)
	if err != nil {
		drive.Close()
		players.Close()
		return nil, err
	}
	return &place{
		name: "real path",
		upstream: func(c []byte, o upstreamtest.Options) (*upstreamtest.Upstream, error) {
			ln, err := drive.ListenTCP("127.77.0.2:0", "cubic") // as most servers send; this kernel's default may be BBR
			if err != nil {
				return nil, err
			}
			return upstreamtest.NewOn(ln, c, o), nil
		},
		listen:  func() (net.Listener, error) { return players.Listen("tcp", "127.0.0.1:0") },
		dial:    players.Dialer(nil),
		command: players.Command,
		close: func() {
			link.Close()
			drive.Close()
			players.Close()
		},
	}, nil
}

// mflowLog is where mflow logs: nowhere, unless -log names a file.
var mflowLog = slog.New(slog.DiscardHandler)

// player is a client where players are.
func (p *place) player() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableCompression: true, DialContext: p.dial}}
}

// proxy is mflow with the seed's defaults (and cache, nil for none), built as mflow is, serving where
// players are.
type proxy struct {
	url    string
	engine *engine.Engine
	stop   func()
}

func (p *place) proxy(cache *chunkcache.Memory) (*proxy, error) {
	mflow, err := app.New(app.Config{Connections: connections, ChunkSize: chunkSize, MaxMemory: maxMemory, Retry: 5, MaxRedirects: 3, HostConnections: 16, Memory: cache,
		Dial: p.dial, Version: "bench", Logger: mflowLog})
	if err != nil {
		return nil, err // New fails only on a task store, and the benchmark has none
	}
	ln, err := p.listen()
	if err != nil {
		mflow.Close()
		return nil, err
	}
	srv := &http.Server{Handler: mflow.Handler, ConnContext: server.ConnContext}
	go srv.Serve(ln)
	return &proxy{url: fmt.Sprintf("http://%s", ln.Addr()), engine: mflow.Engine, stop: func() { srv.Close(); mflow.Close() }}, nil
}
