package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"mflow/internal/app"
	"mflow/internal/testsync"
	"mflow/internal/upstreamtest"
)

// instance is one mflow on rs, as the command wires it: tasks and the connection budget in Redis.
type instance struct {
	*httptest.Server
	t *testing.T
}

func newInstance(t *testing.T, rs *redisServer) *instance {
	t.Helper()
	rdb := rs.client()
	t.Cleanup(func() { rdb.Close() })
	budget := NewBudget(rdb, 16, 0, quiet())
	t.Cleanup(budget.Close)
	mflow, err := app.New(app.Config{Connections: 2, ChunkSize: 256 << 10, Retry: 3, MaxRedirects: 3, HostConnections: 16,
		Shared: budget, Tasks: NewTasks(rdb, quiet()), Version: "test", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mflow.Handler)
	t.Cleanup(func() {
		srv.Close()
		mflow.Close()
		http.DefaultClient.CloseIdleConnections()
	})
	return &instance{Server: srv, t: t}
}

// call makes a JSON-RPC call and returns its result, or its error message.
func (in *instance) call(method string, params ...any) (result json.RawMessage, errMsg string) {
	in.t.Helper()
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "1", "method": method, "params": params})
	resp, err := http.Post(in.URL+"/jsonrpc", "application/json", bytes.NewReader(body))
	if err != nil {
		in.t.Fatal(err)
	}
	defer resp.Body.Close()
	var reply struct {
		Result json.RawMessage
		Error  *struct {
			Code    int
			Message string
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
		in.t.Fatalf("%s: %v", method, err)
	}
	if reply.Error != nil {
		return nil, reply.Error.Message
	}
	return reply.Result, ""
}

// add makes a task of uri with options over addUri, and returns its GID; a refusal fails the test.
func (in *instance) add(uri string, options map[string]any) string {
	in.t.Helper()
	params := []any{[]string{uri}}
	if options != nil {
		params = append(params, options)
	}
	res, msg := in.call("aria2.addUri", params...)
	if msg != "" {
		in.t.Fatalf("addUri %s: %s", uri, msg)
	}
	var gid string
	json.Unmarshal(res, &gid)
	return gid
}

// status is tellStatus' answer on this instance.
func (in *instance) status(gid string) map[string]any {
	in.t.Helper()
	res, msg := in.call("aria2.tellStatus", gid)
	if msg != "" {
		in.t.Fatalf("tellStatus %s: %s", gid, msg)
	}
	var m map[string]any
	json.Unmarshal(res, &m)
	return m
}

// notes collects the aria2 notifications a WebSocket client of the instance hears.
func (in *instance) notes(ctx context.Context) <-chan string {
	in.t.Helper()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(in.URL, "http")+"/jsonrpc", nil)
	if err != nil {
		in.t.Fatal(err)
	}
	in.t.Cleanup(func() { ws.CloseNow() })
	// The instance listens for events before it reads the first call: once this one is answered, no event
	// can be missed.
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":"ready","method":"aria2.getVersion"}`)); err != nil {
		in.t.Fatal(err)
	}
	if _, _, err := ws.Read(ctx); err != nil {
		in.t.Fatal(err)
	}
	out := make(chan string, 64)
	go func() {
		defer close(out)
		for {
			_, msg, err := ws.Read(ctx)
			if err != nil {
				return
			}
			var n struct {
				Method string
				Params []struct{ GID string }
			}
			if json.Unmarshal(msg, &n) == nil && len(n.Params) == 1 {
				out <- n.Method + " " + n.Params[0].GID
			}
		}
	}()
	return out
}

// heard returns the notifications up to and with last.
func heard(t *testing.T, notes <-chan string, last string) []string {
	t.Helper()
	var got []string
	for {
		select {
		case n := <-notes:
			got = append(got, n)
			if n == last {
				return got
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("heard %v, and not %q", got, last)
		}
	}
}

func TestTwoInstancesAreOneToPlayersAndClients(t *testing.T) {
	rs := startRedis(t)
	// A film larger than what socket buffers hold, so a player reading at its bitrate keeps it playing.
	u := upstreamtest.New(upstreamtest.RandomFile(64<<20), upstreamtest.Options{})
	defer u.Close()
	// The drive wants its cookie; a proxy in front of it counts what goes through.
	var noCookie, proxied atomic.Int64
	drive := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Cookie") != "sid=1" {
			noCookie.Add(1)
			http.Error(w, "log in", http.StatusForbidden)
			return
		}
		r.URL.Scheme, r.URL.Host = "http", strings.TrimPrefix(u.URL, "http://")
		httputil.NewSingleHostReverseProxy(r.URL).ServeHTTP(w, r)
	}))
	defer drive.Close()
	proxy := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		proxied.Add(1)
		pr.Out.URL = pr.In.URL // a forward proxy: the request names its target
		pr.Out.Header = pr.In.Header.Clone()
	}})
	defer proxy.Close()

	a, b := newInstance(t, rs), newInstance(t, rs)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	notesA, notesB := a.notes(ctx), b.notes(ctx)

	gid := a.add(drive.URL+"/film.mkv", map[string]any{"header": []string{"Cookie: sid=1"}, "all-proxy": proxy.URL, "out": "Film.mkv"})
	if st := b.status(gid); st["status"] != "waiting" {
		t.Errorf("a task added on one instance, on the other at once: %v", st)
	}

	// One player on each instance, each playing a piece of the film through the other's task.
	play := func(in *instance, from, to int64) {
		req, _ := http.NewRequest(http.MethodGet, in.URL+"/stream?gid="+gid, nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusPartialContent || err != nil || !bytes.Equal(got, u.Bytes(from, to+1)) {
			t.Fatalf("playing %d-%d on %s: %s, %v, %d bytes", from, to, in.URL, resp.Status, err, len(got))
		}
		if d := resp.Header.Get("Content-Disposition"); !strings.Contains(d, "Film.mkv") {
			t.Errorf("the player is told the name %q, want the task's Film.mkv", d)
		}
	}
	play(b, 0, 1<<20-1)
	play(a, 1<<20, 2<<20-1)
	if noCookie.Load() != 0 || proxied.Load() == 0 {
		t.Errorf("%d requests without the task's cookie, %d through its proxy; want 0 and all", noCookie.Load(), proxied.Load())
	}
	for name, in := range map[string]*instance{"a": a, "b": b} {
		testsync.WaitFor(t, "instance "+name+" counting both players' bytes", func() bool {
			st := in.status(gid)
			return st["completedLength"] == fmt.Sprint(2<<20) && st["totalLength"] == fmt.Sprint(u.Size())
		})
	}

	// A player on b, reading as a player does: a tellStatus on a shows it playing, at its speed.
	req, _ := http.NewRequest(http.MethodGet, b.URL+"/stream?gid="+gid, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	playing := make(chan struct{})
	var paused atomic.Bool // then the player drains what the sockets hold, at once
	var got int64
	go func() {
		defer close(playing)
		buf := make([]byte, 16<<10)
		for ctx.Err() == nil {
			n, err := resp.Body.Read(buf)
			got += int64(n)
			if err != nil {
				return
			}
			if !paused.Load() {
				time.Sleep(20 * time.Millisecond) // about 800 KB/s: a film's bitrate, not a wait for an event
			}
		}
	}()
	testsync.WaitFor(t, "instance a showing b's player", func() bool {
		st := a.status(gid)
		var stat map[string]string
		res, _ := a.call("aria2.getGlobalStat")
		json.Unmarshal(res, &stat)
		return st["status"] == "active" && st["downloadSpeed"] != "0" && stat["numActive"] == "1" && stat["downloadSpeed"] != "0"
	})

	// Paused on a: the player on b stops.
	if _, msg := a.call("aria2.pause", gid); msg != "" {
		t.Fatal(msg)
	}
	paused.Store(true)
	select {
	case <-playing:
		if got >= u.Size() {
			t.Errorf("the player got the whole film: pausing on the other instance did not stop it")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pausing on one instance did not stop the player on the other")
	}
	resp.Body.Close()
	if _, msg := b.call("aria2.remove", gid); msg != "" {
		t.Fatal(msg)
	}
	// A last task, added on b: once each client hears it, it has heard all before it.
	last := b.add(drive.URL+"/last.mkv", nil)
	want := []string{"aria2.onDownloadStart " + gid, "aria2.onDownloadPause " + gid, "aria2.onDownloadStop " + gid, "aria2.onDownloadStart " + last}
	for name, notes := range map[string]<-chan string{"a": notesA, "b": notesB} {
		if got := heard(t, notes, want[len(want)-1]); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("a client of instance %s heard %v, want each once: %v", name, got, want)
		}
	}
}

func TestRedisGoingAwayStopsNoPlayer(t *testing.T) {
	for _, outage := range []struct {
		name       string
		start, end func(t *testing.T, rs *redisServer)
	}{
		{"stopped", func(_ *testing.T, rs *redisServer) { rs.stop() }, func(t *testing.T, rs *redisServer) { rs.start(t) }},
		{"hanging", func(_ *testing.T, rs *redisServer) { rs.cmd.Process.Signal(syscall.SIGSTOP) },
			func(_ *testing.T, rs *redisServer) { rs.cmd.Process.Signal(syscall.SIGCONT) }},
	} {
		t.Run(outage.name, func(t *testing.T) {
			rs := startRedis(t)
			playThroughAnOutage(t, rs, func() { outage.start(t, rs) }, func() { outage.end(t, rs) })
		})
	}
}

// playThroughAnOutage plays a film from an instance on rs while Redis goes away (begin) and comes back
// (end): the film plays on, and calls are refused with a reason until Redis is back.
func playThroughAnOutage(t *testing.T, rs *redisServer, begin, end func()) {
	u := upstreamtest.New(upstreamtest.RandomFile(64<<20), upstreamtest.Options{})
	defer u.Close()
	a := newInstance(t, rs)
	gid := a.add(u.URL+"/film.mkv", nil)

	resp, err := http.Get(a.URL + "/stream?gid=" + gid)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got atomic.Int64
	go func() {
		buf := make([]byte, 16<<10)
		for {
			n, err := resp.Body.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond) // a film's bitrate
		}
	}()
	testsync.WaitFor(t, "the film playing", func() bool { return got.Load() > 1<<20 })

	begin()
	testsync.WaitFor(t, "RPC calls refused while Redis is away", func() bool {
		_, msg := a.call("aria2.tellActive")
		return strings.Contains(msg, "tasks are unavailable")
	})
	if _, msg := a.call("aria2.addUri", []string{u.URL + "/other.mkv"}); !strings.Contains(msg, "tasks are unavailable") {
		t.Errorf("addUri with Redis away: %q, want the aria2 error saying why", msg)
	}
	r, err := http.Get(a.URL + "/stream?gid=0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "unavailable") {
		t.Errorf("a gid not known here, with Redis away: %s %q, want 503 saying why", r.Status, body)
	}
	// The film plays on, and a seek in it works: its task is known here.
	before := got.Load()
	testsync.WaitFor(t, "the film still playing", func() bool { return got.Load() > before+1<<20 })
	req, _ := http.NewRequest(http.MethodGet, a.URL+"/stream?gid="+gid, nil)
	req.Header.Set("Range", "bytes=10000000-10999999")
	seek, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	piece, _ := io.ReadAll(seek.Body)
	seek.Body.Close()
	if seek.StatusCode != http.StatusPartialContent || !bytes.Equal(piece, u.Bytes(10000000, 11000000)) {
		t.Errorf("a seek with Redis away: %s, %d bytes", seek.Status, len(piece))
	}
	if m := metric(t, a.URL, "mflow_tasks_available"); m != "0" {
		t.Errorf("mflow_tasks_available is %q with Redis away, want 0", m)
	}
	var st struct {
		TasksUnavailable string `json:"tasks_unavailable"`
	}
	if r, err := http.Get(a.URL + "/status.json"); err == nil {
		json.NewDecoder(r.Body).Decode(&st)
		r.Body.Close()
	}
	if !strings.Contains(st.TasksUnavailable, "does not answer") {
		t.Errorf("/status.json says %q of the tasks with Redis away, want why they cannot be changed", st.TasksUnavailable)
	}
	// Calls while it is away leave nothing behind.
	idle := runtime.NumGoroutine()
	for range 50 {
		a.call("aria2.getGlobalStat")
	}
	if n := runtime.NumGoroutine(); n > idle+5 {
		t.Errorf("%d goroutines after 50 calls with Redis away, %d before", n, idle)
	}

	end() // back, on the same port, with what it held
	testsync.WaitFor(t, "RPC calls answered again", func() bool {
		_, msg := a.call("aria2.tellActive")
		return msg == ""
	})
	if m := metric(t, a.URL, "mflow_tasks_available"); m != "1" {
		t.Errorf("mflow_tasks_available is %q with Redis back, want 1", m)
	}
	if st := a.status(gid); st["gid"] != gid {
		t.Errorf("the task after Redis came back: %v", st)
	}
	other := a.add(u.URL+"/other.mkv", nil) // Redis is back
	testsync.WaitFor(t, "the new task probed", func() bool { return a.status(other)["totalLength"] == fmt.Sprint(u.Size()) })
}

// metric is the value of a series without labels on base's /metrics.
func metric(t *testing.T, base, name string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func TestAnInstanceStartedWithoutRedisReadsTheTasksWhenItAnswers(t *testing.T) {
	rs := startRedis(t)
	u := upstreamtest.New(upstreamtest.RandomFile(64<<10), upstreamtest.Options{})
	defer u.Close()
	a := newInstance(t, rs)
	gid := a.add(u.URL+"/film.mkv", nil)

	rs.stop()
	b := newInstance(t, rs) // starts, and answers, with Redis away
	if _, msg := b.call("aria2.tellWaiting", 0, 10); !strings.Contains(msg, "tasks are unavailable") {
		t.Errorf("an instance started without Redis: tellWaiting answers %q, want why it cannot", msg)
	}
	rs.start(t)
	testsync.WaitFor(t, "the tasks read when Redis answers", func() bool {
		res, msg := b.call("aria2.tellWaiting", 0, 10)
		return msg == "" && strings.Contains(string(res), gid)
	})
}
