package rpc

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/semaphore"

	"mflow/internal/access"
)

// serveWebSocket answers calls arriving as text messages, one reply message each, and sends task events to
// the socket as aria2 notifications: when mflow has a secret, only once a call of this socket has brought
// it (a GID plays its task, so the events must not reach a socket that merely connected).
func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		w.WriteHeader(http.StatusUpgradeRequired)
		return
	}
	maxSockets := cmp.Or(h.MaxSockets, 64)
	h.socketsOnce.Do(func() { h.sockets = semaphore.NewWeighted(int64(maxSockets)) })
	if !h.sockets.TryAcquire(1) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, fmt.Sprintf("mflow: %d WebSockets are open, the most mflow keeps; close one", maxSockets), http.StatusServiceUnavailable)
		return
	}
	defer h.sockets.Release(1)
	// Allows already applied the origin rule to the upgrade.
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxBody)
	ctx, cancel := context.WithCancel(r.Context())
	authorized := new(atomic.Bool)
	authorized.Store(h.Secret == "")
	c := call{ctx: ctx, from: access.NetworkOf(r.RemoteAddr), origin: originOf(r), after: new([]func()), authorized: authorized}
	events, unsubscribe := h.Tasks.Subscribe()
	defer unsubscribe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-events:
				if !authorized.Load() {
					continue
				}
				note := fmt.Sprintf(`{"jsonrpc":"2.0","method":%q,"params":[{"gid":%q}]}`, eventNames[ev.Kind], ev.GID)
				if conn.Write(ctx, websocket.MessageText, []byte(note)) != nil {
					cancel()
					return
				}
			}
		}
	}()
	defer func() {
		cancel() // stops the notifier, then waits for it
		<-done
	}()
	for {
		msg, err := readMessage(ctx, conn, cmp.Or(h.FrameTimeout, 10*time.Second))
		if err != nil {
			return
		}
		out, _ := h.process(c, msg)
		if writeMessage(ctx, conn, out) != nil {
			return
		}
		c.runAfter()
	}
}

// readMessage reads the next message, waiting as long as the client likes for it to start but at most
// frameTimeout for the rest once it has.
func readMessage(ctx context.Context, conn *websocket.Conn, frameTimeout time.Duration) ([]byte, error) {
	_, rd, err := conn.Reader(ctx)
	if err != nil {
		return nil, err
	}
	cutSlow := time.AfterFunc(frameTimeout, func() { conn.CloseNow() })
	defer cutSlow.Stop()
	return io.ReadAll(rd)
}

// writeMessage sends out as one text message, part by part.
func writeMessage(ctx context.Context, conn *websocket.Conn, out *answer) error {
	wr, err := conn.Writer(ctx, websocket.MessageText)
	if err != nil {
		return err
	}
	if _, err := out.WriteTo(wr); err != nil {
		wr.Close()
		return err
	}
	return wr.Close()
}
