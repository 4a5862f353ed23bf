package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"mflow/internal/access"
	"mflow/internal/app"
	"mflow/internal/task"
	"mflow/internal/testsync"
	"mflow/internal/upstreamtest"
)

// ask sends method path (with body) to base, for Host, with headers, and returns the status and body.
func ask(t *testing.T, base, method, path, host, body string, headers map[string]string) (int, string) {
	t.Helper()
	return askFrom(t, http.DefaultClient, base, method, path, host, body, headers)
}

// elsewhereOnThisMachine is a client on this machine that connects from 127.0.0.2: not the reverse proxy
// the tests trust at 127.0.0.1.
var elsewhereOnThisMachine = &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}

// askFrom is ask through client.
func askFrom(t *testing.T, client *http.Client, base, method, path, host, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func rpcCall(method string, params ...any) string {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "1", "method": method, "params": params})
	return string(b)
}

// addTask adds uri over the JSON-RPC, as this machine's client with the secret, and returns its GID.
func addTask(t *testing.T, base, secret, uri string) string {
	t.Helper()
	status, body := askFrom(t, elsewhereOnThisMachine, base, "POST", "/jsonrpc", "", rpcCall("aria2.addUri", "token:"+secret, []string{uri},
		map[string]any{"header": []string{"Cookie: owner=secret"}}), nil)
	var resp struct{ Result string }
	if err := json.Unmarshal([]byte(body), &resp); status != 200 || err != nil || len(resp.Result) != 16 {
		t.Fatalf("addUri: %d %s", status, body)
	}
	return resp.Result
}

func TestAPageWhoseNameWasMadeToPointHereIsRefusedEverywhere(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 4, ChunkSize: 64 << 10, Policy: &access.Policy{}})
	gid := addTask(t, srv.URL, "", u.URL+"/film.mp4")
	port := strings.TrimPrefix(srv.URL, "http://127.0.0.1:")
	loopback := "/stream?url=" + url.QueryEscape(u.URL+"/film.mp4")
	requests := []struct{ method, path, body string }{
		{"POST", "/jsonrpc", rpcCall("aria2.getOption", gid)},
		{"POST", "/jsonrpc", rpcCall("aria2.tellWaiting", 0, 100)},
		{"POST", "/jsonrpc", rpcCall("aria2.addUri", []string{"http://example.com/x"})},
		{"GET", "/status.json", ""},
		{"GET", "/metrics", ""},
		{"GET", loopback, ""},
		{"GET", "/stream?gid=" + gid, ""},
		{"GET", "/", ""},
	}
	// The page of rebind.example, its name now resolving to this machine: every request is refused, and
	// the drive is asked nothing.
	testsync.WaitFor(t, "the task's background probe", func() bool { return u.Requests() == 1 })
	before := u.Requests()
	for _, r := range requests {
		status, body := ask(t, srv.URL, r.method, r.path, "rebind.example:"+port, r.body, map[string]string{"Origin": "http://rebind.example:" + port})
		if status != http.StatusForbidden || !strings.Contains(body, "--allow-host") || strings.Count(body, "\n") != 1 {
			t.Errorf("%s %s from rebind.example: %d %q, want 403 naming --allow-host", r.method, r.path, status, body)
		}
	}
	if _, _, err := websocket.Dial(t.Context(), "ws://127.0.0.1:"+port+"/jsonrpc", &websocket.DialOptions{Host: "rebind.example:" + port,
		HTTPHeader: http.Header{"Origin": {"http://rebind.example:" + port}}}); err == nil {
		t.Error("the WebSocket of rebind.example was accepted")
	}
	if n := u.Requests() - before; n != 0 {
		t.Errorf("the drive got %d requests from the rebinding page", n)
	}
	// A page of localhost itself is mflow's own.
	for _, r := range requests {
		status, body := ask(t, srv.URL, r.method, r.path, "localhost:"+port, r.body, map[string]string{"Origin": "http://localhost:" + port})
		if status != 200 {
			t.Errorf("%s %s from localhost's page: %d %.100q", r.method, r.path, status, body)
		}
	}
	conn, _, err := websocket.Dial(t.Context(), "ws://127.0.0.1:"+port+"/jsonrpc", &websocket.DialOptions{Host: "localhost:" + port,
		HTTPHeader: http.Header{"Origin": {"http://localhost:" + port}}})
	if err != nil {
		t.Fatalf("the WebSocket of localhost's page: %v", err)
	}
	conn.CloseNow()
	// A name given with --allow-host is answered too.
	named := serve(t, app.Config{Connections: 4, ChunkSize: 64 << 10, Hosts: access.Hosts{"nas.fritz.box"}})
	if status, body := ask(t, named.URL, "GET", "/status.json", "nas.fritz.box:6800", "", nil); status != 200 {
		t.Errorf("--allow-host nas.fritz.box: %d %q", status, body)
	}
}

func TestAGIDPrefixPlaysOnlyForTheJSONRPCsClients(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	// Players from elsewhere arrive through a reverse proxy on this machine that names them.
	srv := serve(t, app.Config{Connections: 4, ChunkSize: 64 << 10, RPCSecret: "s3", Proxies: access.Proxies{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	gid := addTask(t, srv.URL, "s3", u.URL+"/film.mp4")
	internet := map[string]string{"X-Forwarded-For": "203.0.113.7"}
	// other is a GID prefix of prefix's length that names no task: the first digit changed.
	other := func(prefix string) string {
		first := "0"
		if prefix[0] == '0' {
			first = "1"
		}
		return first + prefix[1:]
	}
	testsync.WaitFor(t, "the task's background probe", func() bool { return u.Requests() == 1 })
	before := u.Requests()
	for _, prefix := range []string{gid[:1], gid[:3], gid[:15]} {
		wantStatus, wantBody := ask(t, srv.URL, "GET", "/stream?gid="+other(prefix), "", "", internet)
		status, body := ask(t, srv.URL, "GET", "/stream?gid="+prefix, "", "", internet)
		if status != wantStatus || strings.Replace(body, "task "+prefix+":", "task "+other(prefix)+":", 1) != wantBody {
			t.Errorf("an internet player, gid=%s: %d %q; an unknown GID is %d %q", prefix, status, body, wantStatus, wantBody)
		}
	}
	if status, _ := ask(t, srv.URL, "GET", "/stream?gid="+gid[:3]+"&token=wrong", "", "", internet); status != http.StatusNotFound {
		t.Errorf("an internet player with a wrong secret: %d, want 404 as an unknown GID", status)
	}
	if n := u.Requests() - before; n != 0 {
		t.Errorf("the drive got %d requests for prefixes asked from the internet", n)
	}
	if status, body := askFrom(t, elsewhereOnThisMachine, srv.URL, "GET", "/stream?gid="+gid[:3], "", "", nil); status != 200 || !bytes.Equal([]byte(body), file) {
		t.Errorf("a player on this machine, a prefix: %d, %d bytes", status, len(body))
	}
	if status, _ := ask(t, srv.URL, "GET", "/stream?gid="+gid[:3], "", "", nil); status != http.StatusNotFound {
		t.Errorf("the trusted proxy naming no client, a prefix: %d, want 404 as for the internet", status)
	}
	for what, c := range map[string]struct {
		path    string
		headers map[string]string
	}{
		"an internet player, the whole GID":  {"/stream?gid=" + gid, internet},
		"an internet player with the secret": {"/stream?gid=" + gid[:3] + "&token=s3", internet},
		"an internet player with the bearer": {"/stream?gid=" + gid[:5], map[string]string{"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer s3"}},
	} {
		if status, body := ask(t, srv.URL, "GET", c.path, "", "", c.headers); status != 200 || !bytes.Equal([]byte(body), file) {
			t.Errorf("%s: %d, %d bytes", what, status, len(body))
		}
	}
}

func TestAReverseProxysClientIsJudgedAsItself(t *testing.T) {
	file := upstreamtest.RandomFile(10_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	loopback := "/stream?url=" + url.QueryEscape(u.URL+"/film.mp4")
	for _, proxies := range []access.Proxies{{}, {Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}} {
		srv := serve(t, app.Config{Connections: 4, ChunkSize: 64 << 10, Policy: &access.Policy{}, Proxies: proxies})
		gid := addTask(t, srv.URL, "", u.URL+"/film.mp4")
		for _, r := range []struct{ method, path, body string }{
			{"POST", "/jsonrpc", rpcCall("aria2.getOption", gid)},
			{"GET", "/status.json", ""},
			{"GET", loopback, ""},
		} {
			for _, forwarded := range []map[string]string{{"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": `for="203.0.113.7:5000"`}} {
				status, body := ask(t, srv.URL, r.method, r.path, "", r.body, forwarded)
				switch {
				case !proxies.Any() && status != 200:
					t.Errorf("without --trusted-proxy, %s %s %v: %d %.80q; the header is anyone's to write", r.method, r.path, forwarded, status, body)
				case proxies.Any() && status != http.StatusForbidden:
					t.Errorf("behind a trusted proxy, %s %s for an internet client: %d %.80q, want 403", r.method, r.path, status, body)
				}
			}
			// Behind a trusted proxy on this machine, a request naming no client is the proxy's own: not
			// this machine's, which may read every task's cookies.
			want := 200
			if proxies.Any() {
				want = http.StatusForbidden
			}
			if status, _ := ask(t, srv.URL, r.method, r.path, "", r.body, nil); status != want {
				t.Errorf("%s %s from 127.0.0.1 naming no client: %d, want %d", r.method, r.path, status, want)
			}
			if status, _ := askFrom(t, elsewhereOnThisMachine, srv.URL, r.method, r.path, "", r.body, nil); status != 200 {
				t.Errorf("%s %s from this machine, not through the proxy: %d", r.method, r.path, status)
			}
		}
	}
}

func TestAPlayerThatTakesNothingIsCutAndResumesWithARange(t *testing.T) {
	file := upstreamtest.RandomFile(32 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 4, ChunkSize: 256 << 10, ReadAhead: 4 << 20, MaxStreams: 1, PlayerTimeout: 2 * time.Second}) // 2 s: a busy machine's reader may pause a moment
	film := srv.URL + "/stream?url=" + url.QueryEscape(u.URL+"/film.mkv")
	paused := &http.Client{Transport: &http.Transport{}}
	defer paused.CloseIdleConnections()
	resp, err := paused.Get(film)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, got); err != nil {
		t.Fatal(err)
	}
	// The player pauses: it reads nothing more. Its stream is the one --max-streams allows, until it is cut.
	testsync.WaitFor(t, "the paused player's stream to be cut and its slot freed", func() bool {
		status, _ := ask(t, srv.URL, "HEAD", "/stream?url="+url.QueryEscape(u.URL+"/film.mkv"), "", "", nil)
		return status == http.StatusOK
	})
	// It resumes: what its connection still held arrives, then the cut; nothing past it is a wrong byte.
	rest, err := io.ReadAll(resp.Body)
	got = append(got, rest...)
	if err == nil || len(got) >= len(file) {
		t.Fatalf("the paused player read %d bytes and %v after the cut; want a broken answer", len(got), err)
	}
	if !bytes.Equal(got, file[:len(got)]) {
		t.Fatal("the bytes before the cut are not the file's")
	}
	// As mpv does, it asks again from where it stopped, and plays on.
	status, body := ask(t, srv.URL, "GET", "/stream?url="+url.QueryEscape(u.URL+"/film.mkv"), "", "", map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(got))})
	if status != http.StatusPartialContent || !bytes.Equal([]byte(body), file[len(got):]) {
		t.Errorf("the resumed player's Range from %d: %d, %d bytes", len(got), status, len(body))
	}
}

func TestClosingAWebSocketEitherWayLogsNoError(t *testing.T) {
	var logs testsync.SyncBuffer
	mflow, err := app.New(app.Config{Connections: 4, ChunkSize: 64 << 10, RPCSecret: "s3", Tasks: task.NewMemory(), Version: "test",
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	base, stop := context.WithCancel(context.Background())
	defer stop()
	srv := httptest.NewUnstartedServer(mflow.Handler)
	srv.Config.BaseContext = func(net.Listener) context.Context { return base }
	srv.Start()
	defer mflow.Close()
	defer srv.Close()
	dial := func() *websocket.Conn {
		conn, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/jsonrpc", nil)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	for i := range 10 {
		conn := dial()
		conn.Write(t.Context(), websocket.MessageText, []byte(rpcCall("aria2.getVersion", "token:s3")))
		conn.Read(t.Context())
		if i%2 == 0 {
			conn.Close(websocket.StatusNormalClosure, "bye") // the client first, politely
		} else {
			conn.CloseNow() // the client first, abruptly
		}
	}
	conn := dial()
	stop() // the server's side first, as when mflow stops
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := conn.Read(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the server ending the socket: %v", err)
	}
	conn.CloseNow()
	srv.Close() // waits for every handler to return
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("closing WebSockets logged an ERROR:\n%s", logs.String())
	}
}

func TestTheStatusPageAndPlayLinksNeedNoSecretInTheURL(t *testing.T) {
	file := upstreamtest.RandomFile(10_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 4, ChunkSize: 64 << 10, RPCSecret: "s3", Proxies: access.Proxies{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	gid := addTask(t, srv.URL, "s3", u.URL+"/film.mp4")
	internet := map[string]string{"X-Forwarded-For": "203.0.113.7"}
	if status, body := ask(t, srv.URL, "GET", "/status", "", "", map[string]string{"Accept": "text/html", "X-Forwarded-For": "203.0.113.7"}); status != http.StatusUnauthorized || !strings.Contains(body, `<form method="post" action="/login">`) {
		t.Fatalf("a browser without the secret: %d %.200q, want the login form", status, body)
	}
	login := func(secret string, headers map[string]string) *http.Response {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", srv.URL+"/login", strings.NewReader(url.Values{"secret": {secret}, "next": {"/status"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := login("guess", internet); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("a wrong secret: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	if resp := login("s3", map[string]string{"X-Forwarded-For": "203.0.113.7", "Origin": "https://evil.example"}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a login posted by a page of another site: %d", resp.StatusCode)
	}
	resp := login("s3", internet)
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/status" || len(cookies) != 1 || strings.Contains(cookies[0].Value, "s3") || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("the right secret: %d %q %v", resp.StatusCode, resp.Header.Get("Location"), cookies)
	}
	withCookie := map[string]string{"X-Forwarded-For": "203.0.113.7", "Cookie": cookies[0].Name + "=" + cookies[0].Value}
	if status, body := ask(t, srv.URL, "GET", "/status.json", "", "", withCookie); status != 200 || !strings.Contains(body, gid) {
		t.Errorf("the status JSON with the login cookie: %d %.100q", status, body)
	}
	if status, body := ask(t, srv.URL, "GET", "/stream?gid="+gid[:4], "", "", withCookie); status != 200 || body != string(file) {
		t.Errorf("a play link by a GID prefix with the login cookie: %d, %d bytes", status, len(body))
	}
	forged := map[string]string{"X-Forwarded-For": "203.0.113.7", "Cookie": cookies[0].Name + "=s3"}
	if status, _ := ask(t, srv.URL, "GET", "/status.json", "", "", forged); status != http.StatusUnauthorized {
		t.Errorf("the secret itself as the cookie: %d, want 401", status)
	}
}
