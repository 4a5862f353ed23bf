package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"mflow/internal/rpc"
)

// longTasks adds n tasks whose URIs fill the bound on one task with '<', which JSON escapes to six bytes:
// missing (failed, under tellStopped) or paused (under tellWaiting), as asked.
func longTasks(t *testing.T, r *rig, n int, state string) (gids []string) {
	t.Helper()
	const uris = 4
	for i := range n {
		list := make([]string, uris)
		for j := range list {
			list[j] = fmt.Sprintf("http://h/%s-%d-%d/", state, i, j) + strings.Repeat("<", 15_000)
		}
		opts := map[string]string{}
		if state == "paused" {
			opts["pause"] = "true"
		}
		var gid string
		r.call(t, &gid, "aria2.addUri", list, opts)
		gids = append(gids, gid)
	}
	return gids
}

// peakGrowth is how far the heap's objects grew above where they stood while f ran, the server's work
// included (it runs in this process), sampled every millisecond.
func peakGrowth(f func()) uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	runtime.GC()
	base, peak := read(), uint64(0)
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, read())
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	f()
	close(done)
	<-sampled
	peak = max(peak, read())
	return max(peak, base) - base
}

func TestEveryAnswerIsBoundedWhileItIsBuilt(t *testing.T) {
	r := newRig(t, "s3")
	failed := longTasks(t, r, 120, "missing")
	paused := longTasks(t, r, 40, "paused")
	waitFor(t, "the missing tasks to fail", func() bool {
		var stopped []any
		r.call(t, &stopped, "aria2.tellStopped", 0, 1000, []string{"gid"})
		return len(stopped) == len(failed)
	})
	active := paused[0]
	r.call(t, nil, "aria2.unpause", active)
	stream, err := r.store.Begin(t.Context(), active)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.End()

	batch := func(n int, method string, params ...any) string {
		calls := make([]string, n)
		for i := range calls {
			calls[i] = request(method, params...)
		}
		return "[" + strings.Join(calls, ",") + "]"
	}
	multicall := func(n int, method string, params ...any) string {
		calls := make([]map[string]any, n)
		for i := range calls {
			calls[i] = map[string]any{"methodName": method, "params": append([]any{"token:s3"}, params...)}
		}
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "m", "method": "system.multicall", "params": []any{calls}})
		return string(b)
	}
	for _, c := range []struct{ what, body string }{
		{"8 × tellStopped", batch(8, "aria2.tellStopped", 0, 1000)},
		{"8 × tellWaiting", batch(8, "aria2.tellWaiting", 0, 1000)},
		{"8 × tellWaiting from the end", batch(8, "aria2.tellWaiting", -1, 1000)},
		{"256 × tellActive", batch(256, "aria2.tellActive")},
		{"256 × tellStatus", batch(256, "aria2.tellStatus", failed[0])},
		{"256 × getUris", batch(256, "aria2.getUris", paused[1])},
		{"256 × getFiles", batch(256, "aria2.getFiles", failed[0])},
		{"multicall of 8 × tellStopped", multicall(8, "aria2.tellStopped", 0, 1000)},
		{"a batch of multicalls", "[" + multicall(4, "aria2.tellStopped", 0, 1000) + "," + multicall(4, "aria2.tellWaiting", 0, 1000) + "]"},
	} {
		var status int
		var out string
		grew := peakGrowth(func() { status, out = r.post(t, c.body) })
		if status != http.StatusBadRequest || !strings.Contains(out, "ask for fewer tasks or keys") || len(out) > 200 {
			t.Errorf("%s: %d %.200s, want aria2's error envelope saying how to ask", c.what, status, out)
		}
		t.Logf("%s: the heap grew %.1f MiB", c.what, float64(grew)/(1<<20))
		if grew > 50<<20 {
			t.Errorf("%s: the answer took %d MiB while it was built, over 50 MiB", c.what, grew>>20)
		}
	}
	// Within the bound, a list is answered whole, and as JSON.
	var stopped []map[string]any
	r.call(t, &stopped, "aria2.tellStopped", 0, 20)
	if len(stopped) != 20 || !strings.HasSuffix(stopped[0]["files"].([]any)[0].(map[string]any)["uris"].([]any)[0].(map[string]any)["uri"].(string), "<<<") {
		t.Errorf("tellStopped of 20 long tasks: %d answers", len(stopped))
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnknownGlobalOptionsAreIgnored(t *testing.T) {
	r := newRig(t, "s3")
	for i := range 100 {
		opts := map[string]string{fmt.Sprintf("no-such-option-%d", i): strings.Repeat("x", 10_000)}
		var ok string
		r.call(t, &ok, "aria2.changeGlobalOption", opts)
	}
	r.call(t, nil, "aria2.changeGlobalOption", map[string]string{"max-download-result": "5", "user-agent": "ua"})
	var global map[string]string
	r.call(t, &global, "aria2.getGlobalOption")
	if _, kept := global["no-such-option-1"]; kept {
		t.Error("an unknown global option was kept")
	}
	if global["max-download-result"] != "5" || global["user-agent"] != "ua" {
		t.Errorf("known global options not echoed: %v", global)
	}
	if msg := r.fails(t, "aria2.changeGlobalOption", map[string]string{"split": "abc"}); !strings.Contains(msg, "--split") {
		t.Errorf("a bad value of a known option: %q", msg)
	}
}

func dialSocket(t *testing.T, r *rig) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(r.URL, "http")+"/jsonrpc", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

// readWithin reads the next message, or returns nil when none came within d.
func readWithin(t *testing.T, ws *websocket.Conn, d time.Duration) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	_, msg, err := ws.Read(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(msg, &m); err != nil {
		t.Fatalf("%v: %s", err, msg)
	}
	return m
}

func TestASocketHearsNoEventBeforeItBroughtTheSecret(t *testing.T) {
	r := newRig(t, "s3")
	owner, stranger, guesser := dialSocket(t, r), dialSocket(t, r), dialSocket(t, r)
	// The owner's first call brings the secret; the guesser's a wrong one; the stranger only listens.
	if err := owner.Write(t.Context(), websocket.MessageText, []byte(request("aria2.getVersion"))); err != nil {
		t.Fatal(err)
	}
	if m := readWithin(t, owner, 5*time.Second); m["result"] == nil {
		t.Fatalf("getVersion: %v", m)
	}
	wrong := strings.Replace(request("aria2.getVersion"), "token:s3", "token:guess", 1)
	if err := guesser.Write(t.Context(), websocket.MessageText, []byte(wrong)); err != nil {
		t.Fatal(err)
	}
	if m := readWithin(t, guesser, 5*time.Second); m["error"] == nil {
		t.Fatalf("a wrong token: %v", m)
	}
	var gid string
	r.call(t, &gid, "aria2.addUri", []string{"http://h/film.mp4"}, map[string]string{"header": "Cookie: owner=1"})
	note := readWithin(t, owner, 5*time.Second)
	if note["method"] != "aria2.onDownloadStart" || !strings.Contains(fmt.Sprint(note["params"]), gid) {
		t.Fatalf("the owner's socket: %v", note)
	}
	// The event reached the owner; a socket that was sent it would have it within microseconds.
	for name, ws := range map[string]*websocket.Conn{"a socket that only connected": stranger, "a socket with a wrong secret": guesser} {
		if m := readWithin(t, ws, 300*time.Millisecond); m != nil {
			t.Errorf("%s was told %v", name, m)
		}
	}
}

func TestWebSocketsAreBounded(t *testing.T) {
	r := newRig(t, "s3", func(h *rpc.Handler) { h.MaxSockets, h.FrameTimeout = 3, 200*time.Millisecond })
	for range 3 {
		dialSocket(t, r)
	}
	_, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(r.URL, "http")+"/jsonrpc", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a fourth socket of at most three: %v %v", resp, err)
	}

	r = newRig(t, "s3", func(h *rpc.Handler) { h.FrameTimeout = 200 * time.Millisecond })
	ws := dialSocket(t, r)
	// Half a message: its first frame, then nothing.
	w, err := ws.Writer(t.Context(), websocket.MessageText)
	if err != nil {
		t.Fatal(err)
	}
	// More than the writer buffers, so that a frame goes out.
	w.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"aria2.getVersion","params":["token:s3","` + strings.Repeat("x", 64<<10)))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := ws.Read(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a socket that sent half a message and waited: %v, want it cut after the frame timeout", err)
	}

	// A message over 2 MiB closes the socket.
	big := dialSocket(t, r)
	big.Write(t.Context(), websocket.MessageText, []byte(`"`+strings.Repeat("x", 2<<20)+`"`))
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Closed as too big; or, when the close reaches a client still sending the rest, reset or ended: a
	// socket left open would block this read until its deadline.
	if _, _, err := big.Read(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a 2 MiB message: %v, want the socket closed", err)
	}
}
