package rpc_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"mflow/internal/rpc"
	"mflow/internal/source"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeProbe sizes every link at 5 MiB, except those whose URL says "missing" (404) or "slow" (never).
func fakeProbe(ctx context.Context, l source.Link) (int64, error) {
	switch {
	case strings.Contains(l.URL, "missing"):
		return 0, &upstream.StatusError{Code: 404, Status: "404 Not Found", URL: l.URL}
	case strings.Contains(l.URL, "slow"):
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return 5 << 20, nil
}

// newTasks is a registry in memory that probes with fakeProbe and interprets options with d, closed when
// the test ends.
func newTasks(t *testing.T, d rpc.Defaults) *task.Registry {
	r, err := task.New(task.Config{Interpret: d.Interpret, Probe: fakeProbe}, task.NewMemory())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

type rig struct {
	*httptest.Server
	store *task.Registry
}

func newRig(t *testing.T, secret string, tune ...func(*rpc.Handler)) *rig {
	defaults := rpc.Defaults{Connections: 4, UserAgent: "mflow-test", PieceLength: 1 << 20}
	store := newTasks(t, defaults)
	h := &rpc.Handler{Tasks: store, Defaults: defaults, Secret: secret, AuthDelay: time.Millisecond, Version: "test"}
	for _, f := range tune {
		f(h)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(func() {
		ts.Close()
		http.DefaultClient.CloseIdleConnections()
	})
	return &rig{Server: ts, store: store}
}

// post sends body and returns the status and the reply.
func (r *rig) post(t *testing.T, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(r.URL+"/jsonrpc", "", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// call sends one call with the token and decodes its result into v; it fails the test on an error.
func (r *rig) call(t *testing.T, v any, method string, params ...any) {
	t.Helper()
	status, out := r.post(t, request(method, params...))
	var resp struct {
		Result json.RawMessage
		Error  *struct{ Message string }
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Error != nil || status != 200 {
		t.Fatalf("%s: %d %s", method, status, out)
	}
	if v != nil {
		if err := json.Unmarshal(resp.Result, v); err != nil {
			t.Fatalf("%s: %v in %s", method, err, resp.Result)
		}
	}
}

// fails sends one call with the token and returns the error message, failing the test on a success.
func (r *rig) fails(t *testing.T, method string, params ...any) string {
	t.Helper()
	status, out := r.post(t, request(method, params...))
	var resp struct {
		Error *struct {
			Code    int
			Message string
		}
	}
	if json.Unmarshal([]byte(out), &resp) != nil || resp.Error == nil || status != 400 || resp.Error.Code != 1 {
		t.Fatalf("%s %v: %d %s, want a code 1 error with HTTP 400", method, params, status, out)
	}
	return resp.Error.Message
}

func request(method string, params ...any) string {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "t", "method": method, "params": append([]any{"token:s3"}, params...)})
	return string(b)
}

func TestEnvelopeAsAria2(t *testing.T) {
	r := newRig(t, "s3")
	for name, c := range map[string]struct {
		body   string
		status int
		want   string
	}{
		"ok":                      {`{"jsonrpc":"2.0","id":"q","method":"aria2.getSessionInfo","params":["token:s3"]}`, 200, `{"id":"q","jsonrpc":"2.0","result":{"sessionId":"`},
		"wrong token":             {`{"jsonrpc":"2.0","id":"q","method":"aria2.getVersion","params":["token:bad"]}`, 400, `{"id":"q","jsonrpc":"2.0","error":{"code":1,"message":"Unauthorized"}}`},
		"no token":                {`{"jsonrpc":"2.0","id":"q","method":"aria2.getVersion"}`, 400, `{"id":"q","jsonrpc":"2.0","error":{"code":1,"message":"Unauthorized"}}`},
		"parse error":             {`{"jsonrpc":"2.0","id":"q","method":"aria2.getVersion","params":["token:s3"`, 500, `{"id":null,"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error."}}`},
		"no id":                   {`{"jsonrpc":"2.0","method":"aria2.getVersion"}`, 400, `{"id":null,"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request."}}`},
		"method not string":       {`{"id":7,"method":5}`, 400, `{"id":7,"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request."}}`},
		"params object":           {`{"id":7,"method":"aria2.getVersion","params":{"a":1}}`, 500, `{"id":7,"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params."}}`},
		"not an object":           {`5`, 400, `{"id":null,"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request."}}`},
		"no such method":          {`{"id":0,"method":"aria2.nosuch","params":["token:s3"]}`, 400, `{"id":0,"jsonrpc":"2.0","error":{"code":1,"message":"No such method: aria2.nosuch"}}`},
		"object id, json-rpc key": {`{"json-rpc":"2.0","id":{"a":[1]},"method":"aria2.purgeDownloadResult","params":["token:s3"]}`, 200, `{"id":{"a":[1]},"jsonrpc":"2.0","result":"OK"}`},
		"null id":                 {`{"id":null,"method":"aria2.purgeDownloadResult","params":["token:s3"]}`, 200, `{"id":null,"jsonrpc":"2.0","result":"OK"}`},
		"extra params":            {`{"id":-1,"method":"aria2.purgeDownloadResult","params":["token:s3",[],{}]}`, 200, `{"id":-1,"jsonrpc":"2.0","result":"OK"}`},
		"listMethods no token":    {`{"id":1,"method":"system.listMethods"}`, 200, `{"id":1,"jsonrpc":"2.0","result":["aria2.addUri",`},
		"batch": {`[{"id":"a","method":"aria2.getGlobalStat","params":["token:s3"]},{"id":"b","method":"aria2.nosuch","params":["token:s3"]},{"method":"aria2.getVersion"},5]`, 200,
			`[{"id":"a","jsonrpc":"2.0","result":{"downloadSpeed":"0","numActive":"0","numStopped":"0","numStoppedTotal":"0","numWaiting":"0","uploadSpeed":"0"}},{"id":"b","jsonrpc":"2.0","error":{"code":1,"message":"No such method: aria2.nosuch"}},{"id":null,"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request."}}]`},
		"empty batch":         {`[]`, 200, `[]`},
		"multicall top token": {`{"id":1,"method":"system.multicall","params":["token:s3",[]]}`, 400, `{"id":1,"jsonrpc":"2.0","error":{"code":1,"message":"The parameter at 0 has wrong type."}}`},
	} {
		status, out := r.post(t, c.body)
		if status != c.status || !strings.HasPrefix(out, c.want) {
			t.Errorf("%s: %d %s\nwant %d %s", name, status, out, c.status, c.want)
		}
	}
}

func TestTokenIsStrippedWithoutASecret(t *testing.T) {
	r := newRig(t, "")
	for _, body := range []string{`{"id":1,"method":"aria2.getGlobalStat","params":["token:anything"]}`, `{"id":1,"method":"aria2.getGlobalStat"}`} {
		if status, out := r.post(t, body); status != 200 || !strings.Contains(out, `"numActive":"0"`) {
			t.Errorf("%s: %d %s", body, status, out)
		}
	}
	if status, out := r.post(t, `{"id":1,"method":"aria2.addUri","params":["token:",["http://h/f.mp4"]]}`); status != 200 {
		t.Errorf("addUri with an empty token and no secret: %d %s", status, out)
	}
}

func TestMulticall(t *testing.T) {
	r := newRig(t, "s3")
	status, out := r.post(t, `{"id":1,"method":"system.multicall","params":[[
		{"methodName":"aria2.addUri","params":["token:s3",["http://h/a.mp4"],{"gid":"24e0839c43c3eee1"}]},
		{"methodName":"aria2.getVersion","params":["token:bad"]},
		{"methodName":"system.multicall","params":[]},
		{"methodName":"aria2.nosuch","params":["token:s3"]},
		5,
		{"params":[]}]]}`)
	want := `{"id":1,"jsonrpc":"2.0","result":[["24e0839c43c3eee1"],{"code":1,"message":"Unauthorized"},{"code":1,"message":"Recursive system.multicall forbidden."},{"code":1,"message":"No such method: aria2.nosuch"},{"code":1,"message":"system.multicall expected struct."},{"code":1,"message":"Missing methodName."}]}`
	if status != 200 || out != want {
		t.Errorf("%d %s\nwant %s", status, out, want)
	}
}

func TestGetAndJSONP(t *testing.T) {
	r := newRig(t, "s3")
	get := func(query string) (int, string, string) {
		resp, err := http.Get(r.URL + "/jsonrpc?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(out)
	}
	params := url.QueryEscape(base64.StdEncoding.EncodeToString([]byte(`["token:s3"]`)))
	status, ctype, out := get("method=aria2.getVersion&id=foo&params=" + params + "&jsoncallback=cb123&jsonrpc=2.0")
	if status != 200 || ctype != "text/javascript" || !strings.HasPrefix(out, `cb123({"id":"foo","jsonrpc":"2.0","result":{"enabledFeatures":`) || !strings.HasSuffix(out, "})") {
		t.Errorf("JSONP: %d %s %s", status, ctype, out)
	}
	status, ctype, out = get("method=aria2.getGlobalStat&id=42&params=" + params)
	if status != 200 || ctype != "application/json-rpc" || !strings.HasPrefix(out, `{"id":"42",`) {
		t.Errorf("GET: %d %s %s", status, ctype, out)
	}
	whole := url.QueryEscape(base64.StdEncoding.EncodeToString([]byte(`[{"id":1,"method":"aria2.getGlobalStat","params":["token:s3"]}]`)))
	if status, _, out = get("params=" + whole); status != 200 || !strings.HasPrefix(out, `[{"id":1,"jsonrpc":"2.0","result":`) {
		t.Errorf("GET with a whole batch: %d %s", status, out)
	}
	if status, _, out = get("method=aria2.getVersion&id=1&params=%%%"); status != 400 || !strings.Contains(out, "-32600") {
		t.Errorf("GET with bad base64: %d %s, want -32600", status, out)
	}
}

func TestPreflightAndLimits(t *testing.T) {
	r := newRig(t, "s3", func(h *rpc.Handler) { h.AllowOriginAll = true })
	req, _ := http.NewRequest(http.MethodOptions, r.URL+"/jsonrpc", nil)
	req.Header.Set("Origin", "https://ariang.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type")
	req.Header.Set("Access-Control-Request-Private-Network", "true")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := resp.Header
	if resp.StatusCode != 200 || h.Get("Access-Control-Allow-Origin") != "*" || h.Get("Access-Control-Allow-Methods") != "POST, GET, OPTIONS" ||
		h.Get("Access-Control-Allow-Headers") != "content-type" || h.Get("Access-Control-Max-Age") != "1728000" || h.Get("Access-Control-Allow-Private-Network") != "true" {
		t.Errorf("preflight: %d %v", resp.StatusCode, h)
	}
	ws, _ := http.NewRequest(http.MethodGet, r.URL+"/jsonrpc", nil)
	ws.Header.Set("Upgrade", "websocket")
	ws.Header.Set("Connection", "Upgrade")
	ws.Header.Set("Sec-WebSocket-Version", "8")
	if resp, err := http.DefaultClient.Do(ws); err != nil || resp.StatusCode != http.StatusUpgradeRequired || resp.Header.Get("Sec-WebSocket-Version") != "13" {
		t.Errorf("WebSocket version 8: %v %v, want 426 naming version 13", resp, err)
	} else {
		resp.Body.Close()
	}
	big := `{"id":1,"method":"aria2.getVersion","params":["token:s3","` + strings.Repeat("x", 2<<20) + `"]}`
	if status, _ := r.post(t, big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over 2 MiB: %d, want 413", status)
	}
}

// noNumbers fails when a result holds a JSON number: every client wants strings.
func noNumbers(t *testing.T, what string, v any) {
	t.Helper()
	switch x := v.(type) {
	case float64, json.Number:
		t.Errorf("%s: a number (%v) where aria2 sends a string", what, x)
	case map[string]any:
		for k, e := range x {
			noNumbers(t, what+"."+k, e)
		}
	case []any:
		for i, e := range x {
			noNumbers(t, fmt.Sprintf("%s[%d]", what, i), e)
		}
	}
}

func TestTaskLifecycle(t *testing.T) {
	r := newRig(t, "s3")
	var gid string
	r.call(t, &gid, "aria2.addUri", []any{"http://drive.example/d/My%20Film.mkv?sig=1", 5}, map[string]any{
		"header":  []string{"Cookie: SESSDATA=xyz; a=b", "User-Agent: TestUA/1.0", "Range: bytes=9-", "Connection: x"},
		"referer": "*", "split": "8", "max-connection-per-server": "16", "min-split-size": "1M", "lowest-speed-limit": "100K",
		"dir": "/downloads", "all-proxy": "127.0.0.1:3128", "unknown-option": "x", "max-tries": 5,
	})
	if len(gid) != 16 || strings.Trim(gid, "0123456789abcdef") != "" {
		t.Fatalf("gid %q", gid)
	}
	// The background probe fills the size in.
	var st map[string]any
	for deadline := time.Now().Add(30 * time.Second); st["totalLength"] != "5242880"; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("totalLength never filled in: %v", st)
		}
		r.call(t, &st, "aria2.tellStatus", gid)
	}
	noNumbers(t, "tellStatus", st)
	files := st["files"].([]any)[0].(map[string]any)
	// The path is the task's play link where this client reached mflow: AriaNg names the task by its end.
	if st["status"] != "waiting" || files["path"] != r.URL+"/stream/"+gid+"/My%20Film.mkv" || files["length"] != "5242880" || st["numPieces"] != "5" {
		t.Errorf("tellStatus: %v", st)
	}
	var some map[string]any
	r.call(t, &some, "aria2.tellStatus", gid[:5], []string{"gid", "status", "nosuchkey"})
	if len(some) != 2 || some["gid"] != gid {
		t.Errorf("tellStatus with keys, by prefix: %v", some)
	}
	var opts map[string]string
	r.call(t, &opts, "aria2.getOption", gid)
	if opts["header"] != "Cookie: SESSDATA=xyz; a=b\nUser-Agent: TestUA/1.0\nRange: bytes=9-\nConnection: x\n" || opts["min-split-size"] != "1048576" ||
		opts["lowest-speed-limit"] != "102400" || opts["split"] != "8" || opts["referer"] != "*" || opts["unknown-option"] != "" || opts["user-agent"] != "mflow-test" {
		t.Errorf("getOption: %v", opts)
	}

	// What a player's stream of the task sends upstream.
	stream, err := r.store.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	h := stream.Link.Header
	if h.Get("Cookie") != "SESSDATA=xyz; a=b" || h.Get("User-Agent") != "TestUA/1.0" || h.Get("Referer") != "http://drive.example/d/My%20Film.mkv?sig=1" ||
		h.Get("Range") != "" || h.Get("Connection") != "" || stream.Spec.Connections != 8 || stream.Spec.MinSpeed == nil || *stream.Spec.MinSpeed != 102400 || stream.Spec.Proxy.String() != "http://127.0.0.1:3128" || stream.Link.Proxy != stream.Spec.Proxy {
		t.Errorf("stream of the task: header %v, %d connections, min speed %v, proxy %v", h, stream.Spec.Connections, stream.Spec.MinSpeed, stream.Spec.Proxy)
	}
	stream.Delivered(1 << 20)
	var active []map[string]any
	r.call(t, &active, "aria2.tellActive", []string{"gid", "status", "completedLength", "connections"})
	if len(active) != 1 || active[0]["status"] != "active" || active[0]["completedLength"] != "1048576" || active[0]["connections"] != "8" {
		t.Errorf("tellActive while streamed: %v", active)
	}
	stream.End()

	if msg := r.fails(t, "aria2.unpause", gid); msg != "GID#"+gid+" cannot be unpaused now" {
		t.Errorf("unpause of a waiting task: %q", msg)
	}
	r.call(t, nil, "aria2.pause", gid)
	if msg := r.fails(t, "aria2.pause", gid); msg != "GID#"+gid+" cannot be paused now" {
		t.Errorf("pause of a paused task: %q", msg)
	}
	if _, err := r.store.Begin(t.Context(), gid); !errors.Is(err, task.ErrPaused) {
		t.Errorf("a paused task streams: %v", err)
	}
	var waiting []map[string]any
	r.call(t, &waiting, "aria2.tellWaiting", 0, 10, []string{"status"})
	if len(waiting) != 1 || waiting[0]["status"] != "paused" {
		t.Errorf("tellWaiting: %v", waiting)
	}
	r.call(t, nil, "aria2.unpauseAll")
	r.call(t, nil, "aria2.changeOption", gid, map[string]any{"out": "Other.mkv", "split": "2"})
	var uris []map[string]string
	r.call(t, &uris, "aria2.getUris", gid)
	if len(uris) != 1 || uris[0]["status"] != "waiting" {
		t.Errorf("getUris: %v", uris)
	}
	// Announced as started at addUri: removing it must end it as aria2 ends a started download.
	r.call(t, nil, "aria2.remove", gid)
	var removed map[string]string
	r.call(t, &removed, "aria2.tellStatus", gid, []string{"status", "errorCode", "errorMessage"})
	if removed["status"] != "removed" || removed["errorCode"] != "31" || removed["errorMessage"] != "" {
		t.Errorf("tellStatus after removing an announced task: %v, want removed with errorCode 31", removed)
	}
	var quiet string
	r.call(t, &quiet, "aria2.addUri", []string{"http://drive.example/later.mp4"}, map[string]string{"pause": "true"})
	r.call(t, nil, "aria2.remove", quiet)
	if msg := r.fails(t, "aria2.tellStatus", quiet); msg != "GID "+quiet+" is not found" {
		t.Errorf("tellStatus after removing a task never started: %q (aria2 forgets it)", msg)
	}
}

func TestStoppedTasks(t *testing.T) {
	r := newRig(t, "s3")
	var missing, streamed string
	r.call(t, &missing, "aria2.addUri", []string{"http://drive.example/missing.mp4"})
	r.call(t, &streamed, "aria2.addUri", []string{"http://drive.example/film.mp4"})
	var st map[string]string
	for deadline := time.Now().Add(30 * time.Second); st["status"] != "error"; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the 404 task never failed: %v", st)
		}
		r.call(t, &st, "aria2.tellStatus", missing, []string{"status", "errorCode", "errorMessage"})
	}
	if st["errorCode"] != "3" || st["errorMessage"] != "Resource not found" {
		t.Errorf("failed task: %v", st)
	}
	if msg := r.fails(t, "aria2.getUris", missing); msg != "No URI data is available for GID#"+missing {
		t.Errorf("getUris of a stopped task: %q", msg)
	}
	stream, err := r.store.Begin(t.Context(), streamed)
	if err != nil {
		t.Fatal(err)
	}
	r.call(t, nil, "aria2.forceRemove", streamed)
	if stream.Context.Err() == nil {
		t.Error("removing a task left its stream running")
	}
	stream.End()
	if msg := r.fails(t, "aria2.remove", streamed); msg != "Active Download not found for GID#"+streamed {
		t.Errorf("second remove: %q", msg)
	}
	var stopped []map[string]string
	r.call(t, &stopped, "aria2.tellStopped", -1, 10, []string{"gid", "status", "errorCode"})
	if len(stopped) != 2 || stopped[0]["gid"] != streamed || stopped[0]["status"] != "removed" || stopped[0]["errorCode"] != "31" || stopped[1]["gid"] != missing {
		t.Errorf("tellStopped(-1, 10), newest first: %v", stopped)
	}
	var stat map[string]string
	r.call(t, &stat, "aria2.getGlobalStat")
	if stat["numStopped"] != "2" || stat["numStoppedTotal"] != "2" || stat["numWaiting"] != "0" {
		t.Errorf("getGlobalStat: %v", stat)
	}
	r.call(t, nil, "aria2.removeDownloadResult", missing)
	r.call(t, nil, "aria2.purgeDownloadResult")
	r.call(t, &stat, "aria2.getGlobalStat")
	if stat["numStopped"] != "0" || stat["numStoppedTotal"] != "2" {
		t.Errorf("getGlobalStat after purging: %v", stat)
	}
}

func TestGIDErrorsAsAria2(t *testing.T) {
	r := newRig(t, "s3")
	for _, gid := range []string{"aaaa000000000001", "aaaa000000000002"} {
		r.call(t, nil, "aria2.addUri", []string{"http://h/f"}, map[string]string{"gid": gid})
	}
	for _, c := range []struct {
		method string
		params []any
		want   string
	}{
		{"aria2.tellStatus", []any{"zzzz"}, "Invalid GID zzzz"},
		{"aria2.tellStatus", []any{"0123456789abcdef0"}, "Invalid GID 0123456789abcdef0"},
		{"aria2.tellStatus", []any{"0123456789abcdef"}, "GID 0123456789abcdef is not found"},
		{"aria2.pause", []any{"0123456789abcdef"}, "GID 0123456789abcdef is not found"},
		{"aria2.tellStatus", []any{"aaaa"}, "GID aaaa is not unique"},
		{"aria2.tellStatus", []any{5}, "The parameter at 0 has wrong type."},
		{"aria2.tellStatus", nil, "The parameter at 0 is required but missing."},
		{"aria2.tellWaiting", nil, "The parameter at 0 is required but missing."},
		{"aria2.addUri", []any{[]string{}}, "URI is not provided."},
		{"aria2.addUri", []any{"http://x"}, "The parameter at 0 has wrong type."},
		{"aria2.addUri", []any{[]string{"http://x/y"}, map[string]any{}, -1}, "Position must be greater than or equal to 0."},
		{"aria2.addUri", []any{[]string{"http://x/y"}, map[string]any{"split": "abc"}}, "We encountered a problem while processing the option '--split'."},
		{"aria2.addUri", []any{[]string{"http://x/y"}, "x"}, "The parameter at 1 has wrong type."},
		{"aria2.addUri", []any{[]string{"http://x/y"}, map[string]any{"gid": "aaaa000000000001"}}, "No URI to download."},
		{"aria2.changeOption", []any{"0123456789abcdef", map[string]any{}}, "GID 0123456789abcdef is not found"},
	} {
		if msg := r.fails(t, c.method, c.params...); msg != c.want {
			t.Errorf("%s %v: %q, want %q", c.method, c.params, msg, c.want)
		}
	}
}

func TestWebSocketCallsAndNotifications(t *testing.T) {
	r := newRig(t, "s3")
	ws, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(r.URL, "http")+"/jsonrpc", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func() map[string]json.RawMessage {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(msg, &m); err != nil {
			t.Fatalf("%v: %s", err, msg)
		}
		return m
	}
	send := func(body string) {
		if err := ws.Write(t.Context(), websocket.MessageText, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	// Replies and notifications may interleave: collect both.
	expect := func(wantReply bool, notes ...string) (reply map[string]json.RawMessage) {
		t.Helper()
		got := map[string]bool{}
		for len(got) < len(notes) || (wantReply && reply == nil) {
			m := read()
			if _, isNote := m["method"]; isNote {
				if _, hasID := m["id"]; hasID {
					t.Errorf("a notification with an id key: %v", m)
				}
				got[strings.Trim(string(m["method"]), `"`)] = true
				continue
			}
			reply = m
		}
		for _, n := range notes {
			if !got[n] {
				t.Errorf("no %s notification; got %v", n, got)
			}
		}
		return reply
	}
	send(request("aria2.addUri", []string{"http://h/f.mp4"}))
	reply := expect(true, "aria2.onDownloadStart")
	var gid string
	json.Unmarshal(reply["result"], &gid)
	send(request("aria2.pause", gid))
	expect(true, "aria2.onDownloadPause")
	send(request("aria2.unpause", gid))
	expect(true, "aria2.onDownloadStart")
	send(`{"id":1,"method":`)
	if m := expect(true); !bytes.Contains(m["error"], []byte("-32700")) {
		t.Errorf("malformed frame: %v", m)
	}
	stream, err := r.store.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	send(request("aria2.remove", gid))
	expect(true, "aria2.onDownloadStop")
	stream.End()
	send(request("aria2.addUri", []string{"http://h/missing.mp4"}))
	expect(true, "aria2.onDownloadStart", "aria2.onDownloadError")
	send(request("aria2.addUri", []string{"http://h/waiting.mp4"}))
	reply = expect(true, "aria2.onDownloadStart")
	json.Unmarshal(reply["result"], &gid)
	send(request("aria2.remove", gid))
	expect(true, "aria2.onDownloadStop") // announced, never streamed: still ended for the client
}

func TestTheQueueAndAURIListAreChangedAsAria2ChangesThem(t *testing.T) {
	r := newRig(t, "s3")
	add := func(uri string) (gid string) {
		r.call(t, &gid, "aria2.addUri", []string{uri}, map[string]string{"pause": "true"})
		return gid
	}
	a, b, c := add("http://h/a.mp4"), add("http://h/b.mp4"), add("http://h/c.mp4")
	waiting := func() []string {
		var list []struct{ GID string }
		r.call(t, &list, "aria2.tellWaiting", 0, 10, []string{"gid"})
		var out []string
		for _, v := range list {
			out = append(out, v.GID)
		}
		return out
	}
	// As recorded from aria2c 1.36: POS_SET 0 → 0; POS_CUR 5 → the end (2); POS_END -1 → 1; POS_CUR -100 → 0.
	for _, m := range []struct {
		pos  int
		how  string
		at   int
		list []string
	}{{0, "POS_SET", 0, []string{c, a, b}}, {5, "POS_CUR", 2, []string{a, b, c}}, {-1, "POS_END", 1, []string{a, c, b}}, {-100, "POS_CUR", 0, []string{c, a, b}}} {
		var at int
		r.call(t, &at, "aria2.changePosition", c, m.pos, m.how)
		if got := waiting(); at != m.at || !slices.Equal(got, m.list) {
			t.Errorf("changePosition %d %s: %d, %v; want %d, %v", m.pos, m.how, at, got, m.at, m.list)
		}
	}
	for _, c := range []struct {
		params []any
		says   string
	}{
		{[]any{c, 0, "POS_NOPE"}, "Illegal argument."},
		{[]any{c, "0", "POS_SET"}, "The parameter at 1 has wrong type."},
		{[]any{"1234567890abcdef", 0, "POS_SET"}, "GID 1234567890abcdef is not found"},
	} {
		if msg := r.fails(t, "aria2.changePosition", c.params...); msg != c.says {
			t.Errorf("changePosition %v: %q, want %q", c.params, msg, c.says)
		}
	}
	// changeUri removes, then adds what are http(s) URIs, and answers how many of each.
	var counts []int
	r.call(t, &counts, "aria2.changeUri", a, 1, []string{"http://h/a.mp4"}, []string{"http://x/1", "http://x/2"})
	r.call(t, &counts, "aria2.changeUri", a, 1, []string{}, []string{"http://x/0", "notauri"}, 0)
	var uris []struct{ URI string }
	r.call(t, &uris, "aria2.getUris", a)
	if !slices.Equal(counts, []int{0, 1}) || len(uris) != 3 || uris[0].URI != "http://x/0" || uris[2].URI != "http://x/2" {
		t.Errorf("changeUri: %v, URIs %v", counts, uris)
	}
	for params, says := range map[string][]any{
		"fileIndex is out of range": {a, 2, []string{}, []string{"http://x/3"}},
		"The integer parameter at 1 has invalid value: the value must be greater than or equal to 1.": {a, 0, []string{}, []string{"http://x/3"}},
	} {
		if msg := r.fails(t, "aria2.changeUri", says...); msg != params {
			t.Errorf("changeUri %v: %q, want %q", says, msg, params)
		}
	}
}

func TestTheOtherMethodsAnswerAsAria2(t *testing.T) {
	var stopped []bool
	r := newRig(t, "s3", func(h *rpc.Handler) {
		h.Shutdown = func(force bool) { stopped = append(stopped, force) }
		h.Connections = func(string) []rpc.Connection {
			return []rpc.Connection{{Mirror: 0, URL: "http://cdn/a.mp4?sig=1", Speed: 1234}}
		}
	})
	var gid string
	r.call(t, &gid, "aria2.addUri", []string{"http://h/a.mp4"})
	if msg := r.fails(t, "aria2.getServers", gid); msg != "No active download for GID#"+gid {
		t.Errorf("getServers of a task nobody plays: %q", msg)
	}
	st, err := r.store.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	var servers []struct {
		Index   string
		Servers []map[string]string
	}
	r.call(t, &servers, "aria2.getServers", gid)
	st.End()
	if len(servers) != 1 || servers[0].Index != "1" || len(servers[0].Servers) != 1 ||
		!maps.Equal(servers[0].Servers[0], map[string]string{"uri": "http://h/a.mp4", "currentUri": "http://cdn/a.mp4?sig=1", "downloadSpeed": "1234"}) {
		t.Errorf("getServers of a task being played: %+v", servers)
	}
	var peers []any
	r.call(t, &peers, "aria2.getPeers", gid)
	if len(peers) != 0 {
		t.Errorf("getPeers: %v", peers)
	}
	if msg := r.fails(t, "aria2.saveSession"); !strings.Contains(msg, "memory") {
		t.Errorf("saveSession of tasks kept in memory: %q", msg)
	}
	for _, m := range []string{"aria2.addTorrent", "aria2.addMetalink"} {
		if msg := r.fails(t, m, "AAAA"); !strings.Contains(msg, "aria2.addUri") {
			t.Errorf("%s: %q", m, msg)
		}
		if msg := r.fails(t, m); msg != "The parameter at 0 is required but missing." {
			t.Errorf("%s without its parameter: %q", m, msg)
		}
	}
	var ok string
	r.call(t, &ok, "aria2.shutdown")
	r.call(t, &ok, "aria2.forceShutdown")
	if ok != "OK" || !slices.Equal(stopped, []bool{false, true}) {
		t.Errorf("shutdown, forceShutdown: %q, stopped %v", ok, stopped)
	}
	var global map[string]string
	r.call(t, &global, "aria2.getGlobalOption")
	for _, key := range []string{"dir", "split", "max-tries", "piece-length", "max-concurrent-downloads", "rpc-listen-port", "check-certificate", "user-agent"} {
		if _, ok := global[key]; !ok {
			t.Errorf("getGlobalOption lacks %s: %v", key, global)
		}
	}
}

func TestSaveSessionSaysOKOnceTheStoreIsDurable(t *testing.T) {
	store, err := task.OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := task.New(task.Config{Probe: fakeProbe}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := &rpc.Handler{Tasks: r, Secret: "s3"}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/jsonrpc", strings.NewReader(request("aria2.saveSession"))))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"result":"OK"`) {
		t.Errorf("%d %s", w.Code, w.Body)
	}
}
