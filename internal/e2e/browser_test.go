package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// browser is a headless Chromium driven over its DevTools protocol, as a person at a browser: it opens
// pages, types into forms, reads what is on screen and takes screenshots.
type browser struct {
	t    *testing.T
	conn *websocket.Conn
	id   atomic.Int64
}

// openBrowser starts Chromium with a window of width × height and returns it driven; it ends with the test.
func openBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	// A profile of its own, removed once every process of the browser is gone: Chromium's helpers still
	// write into it for a moment after the browser ends, which a test's TempDir would take for a failure.
	profile, err := os.MkdirTemp("", "mflow-chromium")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range chromiumSwitches(t) {
		if !strings.HasPrefix(a, "--user-data-dir=") {
			args = append(args, a)
		}
	}
	args = append(args, "--user-data-dir="+profile, "--remote-debugging-port=0", fmt.Sprintf("--window-size=%d,%d", width, height), "about:blank")
	cmd := exec.Command(tools["chromium"], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers with it, so all of them can be ended
	if err := cmd.Start(); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		deadline := time.Now().Add(30 * time.Second)
		for os.RemoveAll(profile) != nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	})
	// Chromium writes its port into the profile once it listens.
	var port string
	for deadline := time.Now().Add(30 * time.Second); port == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("chromium did not open its DevTools port within 30 s")
		}
		if f, err := os.Open(filepath.Join(profile, "DevToolsActivePort")); err == nil {
			sc := bufio.NewScanner(f)
			if sc.Scan() {
				port = strings.TrimSpace(sc.Text())
			}
			f.Close()
		}
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
	if err != nil {
		t.Fatal(err)
	}
	var targets []struct{ Type, WebSocketDebuggerURL string }
	json.NewDecoder(resp.Body).Decode(&targets)
	resp.Body.Close()
	for _, target := range targets {
		if target.Type == "page" {
			conn, _, err := websocket.Dial(t.Context(), target.WebSocketDebuggerURL, nil)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetReadLimit(64 << 20) // screenshots
			t.Cleanup(func() { conn.CloseNow() })
			return &browser{t: t, conn: conn}
		}
	}
	t.Fatalf("chromium has no page: %v", targets)
	return nil
}

// do sends one DevTools command and returns its result, skipping the events that come meanwhile.
func (b *browser) do(method string, params any, result any) {
	b.t.Helper()
	id := b.id.Add(1)
	ctx, cancel := context.WithTimeout(b.t.Context(), time.Minute)
	defer cancel()
	if err := wsjson.Write(ctx, b.conn, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		b.t.Fatalf("%s: %v", method, err)
	}
	for {
		var reply struct {
			ID     int64
			Result json.RawMessage
			Error  *struct{ Message string }
		}
		if err := wsjson.Read(ctx, b.conn, &reply); err != nil {
			b.t.Fatalf("%s: %v", method, err)
		}
		if reply.ID != id {
			continue
		}
		if reply.Error != nil {
			b.t.Fatalf("%s: %s", method, reply.Error.Message)
		}
		if result != nil {
			json.Unmarshal(reply.Result, result)
		}
		return
	}
}

// eval runs a script in the page and returns its value, as JSON would carry it.
func (b *browser) eval(script string) any {
	b.t.Helper()
	var out struct {
		Result struct {
			Value any
		}
		ExceptionDetails *struct{ Text string }
	}
	b.do("Runtime.evaluate", map[string]any{"expression": script, "returnByValue": true, "awaitPromise": true}, &out)
	if out.ExceptionDetails != nil {
		b.t.Fatalf("%s: %s", script, out.ExceptionDetails.Text)
	}
	return out.Result.Value
}

// open goes to u and waits for the page to be loaded.
func (b *browser) open(u string) {
	b.t.Helper()
	b.do("Page.navigate", map[string]any{"url": u}, nil)
	b.waitFor("the page at "+u, `document.readyState === "complete" && location.href !== "about:blank"`)
}

// waitFor waits until script is true in the page: what a person waits for, seen on screen.
func (b *browser) waitFor(what, script string) {
	b.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); b.eval(script) != true; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s; the page says: %.600v", what, b.eval("document.body ? document.body.innerText : ''"))
		}
	}
}

// screenshot is the page as a PNG.
func (b *browser) screenshot() []byte {
	b.t.Helper()
	var out struct{ Data string }
	b.do("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &out)
	png, err := base64.StdEncoding.DecodeString(out.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	return png
}
