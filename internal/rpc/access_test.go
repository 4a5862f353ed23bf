package rpc_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"

	"mflow/internal/access"
	"mflow/internal/rpc"
)

const listCall = `{"jsonrpc":"2.0","id":1,"method":"aria2.tellActive","params":["token:s3"]}`

// ask sends a call to h as a client at remote would, with the given request headers.
func ask(h http.Handler, method, remote, body string, header map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "http://mflow.lan:6800/jsonrpc", strings.NewReader(body))
	req.RemoteAddr = remote
	for k, v := range header {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func newHandler(t *testing.T, secret string) *rpc.Handler {
	return &rpc.Handler{Tasks: newTasks(t, rpc.Defaults{Connections: 4}), Secret: secret, AuthDelay: time.Millisecond}
}

func TestWithoutASecretOnlyThisMachineIsAnswered(t *testing.T) {
	open := newHandler(t, "")
	for remote, want := range map[string]int{"127.0.0.1:5000": 200, "[::1]:5000": 200, "192.168.1.20:5000": 403, "203.0.113.9:5000": 403} {
		if w := ask(open, "POST", remote, listCall, nil); w.Code != want {
			t.Errorf("no secret, client %s: %d %s, want %d", remote, w.Code, w.Body, want)
		}
	}
	if w := ask(open, "POST", "192.168.1.20:5000", listCall, nil); !strings.Contains(w.Body.String(), "--rpc-secret") {
		t.Errorf("the refusal does not say what to do: %s", w.Body)
	}
	open.ListenAll = true
	if w := ask(open, "POST", "192.168.1.20:5000", listCall, nil); w.Code != 200 {
		t.Errorf("--rpc-listen-all, a LAN client: %d", w.Code)
	}
	secret := newHandler(t, "s3")
	if w := ask(secret, "POST", "203.0.113.9:5000", listCall, nil); w.Code != 200 {
		t.Errorf("with a secret, an internet client with it: %d %s", w.Code, w.Body)
	}
	if w := ask(secret, "POST", "203.0.113.9:5000", strings.Replace(listCall, "s3", "guess", 1), nil); w.Code != 400 || !strings.Contains(w.Body.String(), "Unauthorized") {
		t.Errorf("with a secret, a wrong one: %d %s", w.Code, w.Body)
	}
}

func TestPagesOfOtherSitesGetNothingByDefault(t *testing.T) {
	h := newHandler(t, "")
	local := "127.0.0.1:5000"
	for name, c := range map[string]struct {
		header map[string]string
		want   int
	}{
		"curl, a player":           {nil, 200},
		"the same origin":          {map[string]string{"Origin": "http://mflow.lan:6800"}, 200},
		"a Chrome extension":       {map[string]string{"Origin": "chrome-extension://abcdefgh"}, 200},
		"a Firefox extension":      {map[string]string{"Origin": "moz-extension://1234-5678"}, 200},
		"another site":             {map[string]string{"Origin": "https://evil.example"}, 403},
		"another port":             {map[string]string{"Origin": "http://mflow.lan:8080"}, 403},
		"an <img> of another site": {map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		"a bookmark, typed":        {map[string]string{"Sec-Fetch-Site": "none"}, 200},
	} {
		w := ask(h, "POST", local, listCall, c.header)
		if w.Code != c.want || w.Header().Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s: %d, CORS %q; want %d and no CORS header", name, w.Code, w.Header().Get("Access-Control-Allow-Origin"), c.want)
		}
	}
	preflight := map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"}
	if w := ask(h, "OPTIONS", local, "", preflight); w.Code != 403 || w.Header().Get("Access-Control-Allow-Private-Network") != "" {
		t.Errorf("a preflight from another site: %d %v", w.Code, w.Header())
	}
	h.AllowOriginAll = true
	if w := ask(h, "POST", local, listCall, map[string]string{"Origin": "https://ariang.example"}); w.Code != 200 || w.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("--rpc-allow-origin-all, another site: %d %v", w.Code, w.Header())
	}
	if w := ask(h, "OPTIONS", local, "", preflight); w.Code != 200 || w.Header().Get("Access-Control-Allow-Private-Network") != "true" {
		t.Errorf("--rpc-allow-origin-all, a preflight: %d %v", w.Code, w.Header())
	}
}

func TestJSONPCallbacksAreScriptNames(t *testing.T) {
	h := newHandler(t, "")
	h.AllowOriginAll = true
	for cb, want := range map[string]int{"cb": 200, "jQuery123_456.done$": 200, "alert(document.cookie)//": 400, "x%3Cscript%3E": 400} {
		req := httptest.NewRequest("GET", "http://mflow.lan:6800/jsonrpc?method=aria2.getGlobalStat&id=1&jsoncallback="+cb, nil)
		req.RemoteAddr = "127.0.0.1:5000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != want {
			t.Errorf("jsoncallback=%s: %d %s, want %d", cb, w.Code, w.Body, want)
		}
	}
}

func TestWebSocketOriginRule(t *testing.T) {
	r := newRig(t, "s3")
	ws := "ws" + strings.TrimPrefix(r.URL, "http") + "/jsonrpc"
	for origin, ok := range map[string]bool{"": true, "chrome-extension://abc": true, r.URL: true, "https://evil.example": false} {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		conn, resp, err := websocket.Dial(t.Context(), ws, &websocket.DialOptions{HTTPHeader: h})
		if (err == nil) != ok {
			t.Errorf("Origin %q: %v, want accepted %v", origin, err, ok)
		}
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if conn != nil {
			conn.CloseNow()
		}
	}
}

func TestWrongTokensWaitInOneLineForAllClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &rpc.Handler{Tasks: newTasks(t, rpc.Defaults{Connections: 4}), Secret: "s3", AuthDelay: time.Second}
		began := time.Now()
		var wg sync.WaitGroup
		for i := range 5 { // five clients, each on its own connection
			wg.Go(func() {
				ask(h, "POST", "203.0.113.9:"+string(rune('1'+i))+"000", strings.Replace(listCall, "s3", "guess", 1), nil)
			})
		}
		wg.Wait()
		if took := time.Since(began); took != 5*time.Second {
			t.Errorf("five wrong tokens took %v, want 5 s: one second each, one after another", took)
		}
		began = time.Now()
		if w := ask(h, "POST", "203.0.113.9:9000", listCall, nil); w.Code != 200 || time.Since(began) != 0 {
			t.Errorf("the right token waited %v (%d)", time.Since(began), w.Code)
		}
	})
}

func TestBatchesAndMulticallsAreBounded(t *testing.T) {
	r := newRig(t, "s3")
	call := `{"id":1,"method":"aria2.getGlobalStat","params":["token:s3"]}`
	if status, out := r.post(t, "["+strings.Repeat(call+",", 256)+call+"]"); status != 400 || !strings.Contains(out, "Too many calls") {
		t.Errorf("a batch of 257: %d %.200s", status, out)
	}
	multi := `{"methodName":"aria2.getGlobalStat","params":["token:s3"]}`
	if _, out := r.post(t, `{"id":1,"method":"system.multicall","params":[[`+strings.Repeat(multi+",", 256)+multi+`]]}`); !strings.Contains(out, "Too many calls") {
		t.Errorf("a multicall of 257: %.200s", out)
	}
}

func TestASlowBodyIsNotWaitedForForever(t *testing.T) {
	r := newRig(t, "s3", func(h *rpc.Handler) { h.BodyTimeout = 100 * time.Millisecond })
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers promise a body that never comes.
	fmt.Fprintf(conn, "POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"id\":")
	conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // the server cuts it at 100 ms; a saturated machine is slow to
	if _, err := io.ReadAll(conn); err != nil {
		t.Errorf("the connection of a client that never finished its body was kept: %v", err)
	}
}

func TestATaskRemembersTheClassOfItsAdder(t *testing.T) {
	h := newHandler(t, "s3")
	for remote, want := range map[string]access.Network{"203.0.113.5:1000": access.Internet, "192.168.1.20:1000": access.Private, "127.0.0.1:1000": access.Loopback} {
		w := ask(h, "POST", remote, `{"jsonrpc":"2.0","id":1,"method":"aria2.addUri","params":["token:s3",["http://h/f.mp4"]]}`, nil)
		var reply struct{ Result string }
		if err := json.Unmarshal(w.Body.Bytes(), &reply); err != nil || reply.Result == "" {
			t.Fatalf("addUri from %s: %s", remote, w.Body)
		}
		v, err := h.Tasks.Get(reply.Result)
		if err != nil || v.From != want {
			t.Errorf("a task added from %s: class %v, %v; want %v", remote, v.From, err, want)
		}
	}
}

func TestPagesFollowTheRPCsRules(t *testing.T) {
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("page")) })
	open := newHandler(t, "") // no secret: this machine only, as the RPC
	guarded := open.Guard(page)
	for remote, want := range map[string]int{"127.0.0.1:5000": 200, "192.168.1.20:5000": 403, "203.0.113.5:5000": 403} {
		if w := ask(guarded, "GET", remote, "", nil); w.Code != want {
			t.Errorf("no secret, a client at %s: %d, want %d", remote, w.Code, want)
		}
	}
	if w := ask(guarded, "GET", "127.0.0.1:5000", "", map[string]string{"Sec-Fetch-Site": "cross-site"}); w.Code != 403 {
		t.Errorf("a page of another site: %d, want 403", w.Code)
	}
	withSecret := newHandler(t, "s3").Guard(page)
	for _, c := range []struct {
		path   string
		header map[string]string
		want   int
	}{
		{"/metrics", nil, 401},
		{"/metrics", map[string]string{"Authorization": "Bearer wrong"}, 401},
		{"/metrics", map[string]string{"Authorization": "Bearer s3"}, 200},
		{"/status?token=s3", nil, 200},
		{"/status?token=s4", nil, 401},
	} {
		req := httptest.NewRequest("GET", "http://mflow.lan:6800"+c.path, nil)
		req.RemoteAddr = "203.0.113.5:5000"
		for k, v := range c.header {
			req.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		withSecret.ServeHTTP(w, req)
		if w.Code != c.want {
			t.Errorf("with a secret, %s %v: %d, want %d", c.path, c.header, w.Code, c.want)
		}
	}
}
