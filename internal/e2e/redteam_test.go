package e2e

// The red team's file: every attack of the security review, replayed against the mflow binary as an
// attacker would make it. Each test fails if its attack succeeds.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"

	"mflow/internal/netns"
	"mflow/internal/testskip"
	"mflow/internal/testsync"
)

// namespace is a network namespace for the test whose loopback also carries addrs, or a skip (a failure
// in CI, which runs as root).
func namespace(t *testing.T, addrs ...string) *netns.Namespace {
	t.Helper()
	available := netns.Available()
	testskip.Unless(t, available == nil, fmt.Sprint(available, ", the red team's namespace tests did not run (sudo go test ./internal/e2e)"))
	ns, err := netns.New("mflow-red")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	for _, a := range addrs {
		if err := ns.IP("addr", "add", a+"/32", "dev", "lo"); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// countingServer serves body on addr in ns until the test ends, and counts the requests it gets.
func countingServer(t *testing.T, ns *netns.Namespace, addr, body string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := ns.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	hits := new(atomic.Int64)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, body)
	})}}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

// mflowRun is an mflow the test started.
type mflowRun struct {
	base string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
	logs *testsync.SyncBuffer
}

// startMflow runs the mflow binary on 127.0.0.1 with args, in ns when set, with extra environment, until
// the test ends; its log is shown when the test fails.
func startMflow(t *testing.T, ns *netns.Namespace, environ []string, args ...string) *mflowRun {
	t.Helper()
	port := freePort()
	args = append([]string{"--listen", "127.0.0.1", "--port", strconv.Itoa(port)}, args...)
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command(context.Background(), env.bin, args...)
	} else {
		cmd = exec.Command(env.bin, args...)
	}
	cmd.Env = append(os.Environ(), environ...)
	m := &mflowRun{base: "http://127.0.0.1:" + strconv.Itoa(port), cmd: cmd, logs: &testsync.SyncBuffer{}}
	cmd.Stdout, cmd.Stderr = m.logs, m.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		interrupt(cmd)
		if t.Failed() {
			t.Logf("mflow's log:\n%s", m.logs.String())
		}
	})
	testsync.WaitFor(t, "mflow to listen", func() bool { return strings.Contains(m.logs.String(), "mflow listening") })
	return m
}

// peakRSS is the most memory the process has held (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// rpcAs posts a JSON-RPC body to base with client and headers, and returns the status and body.
func rpcAs(t *testing.T, client *http.Client, base, body string, headers map[string]string) (int, string) {
	t.Helper()
	return askAs(t, client, "POST", base+"/jsonrpc", body, headers)
}

func askAs(t *testing.T, client *http.Client, method, u, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func call(method string, params ...any) string {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "r", "method": method, "params": params})
	return string(b)
}

// Attack 1: a client's own Forwarded, X-Real-IP or X-Forwarded-For header, passed through the README's
// nginx, must not make it "this machine".
func TestRedTeamSpoofedClientHeadersBehindTheREADMEsNginx(t *testing.T) {
	ns := namespace(t, "203.0.113.10", "203.0.113.77")
	adminURL, adminHits := countingServer(t, ns, "127.0.0.1", "the admin page of a service on this machine")
	// As the README's VPS setup, without the secret: the worst case.
	mflow := startMflow(t, ns, nil, "--in-memory", "--trusted-proxy", "127.0.0.1", "--allow-host", "media.example.com", "-s", "256K")

	dir := t.TempDir()
	os.Chmod(dir, 0o755) // nginx's workers run as another user
	nginxPort := freePort()
	mflowPort, _ := strconv.Atoi(mflow.base[strings.LastIndex(mflow.base, ":")+1:])
	conf := fmt.Sprintf("daemon off;\npid %[1]s/nginx.pid;\nerror_log %[1]s/error.log;\nevents {}\nhttp {\n  access_log off;\n"+
		"  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;\n%[2]s\n}\n",
		dir, fmt.Sprintf(vpsConf, "203.0.113.10:"+strconv.Itoa(nginxPort), mflowPort))
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	nginx := ns.Command(context.Background(), tools["nginx"], "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	nginx.Stderr = os.Stderr
	if err := nginx.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { nginx.Process.Kill(); nginx.Wait() }()

	attacker := &http.Client{Transport: &http.Transport{DialContext: ns.Dialer(&net.TCPAddr{IP: net.ParseIP("203.0.113.77")})}}
	defer attacker.CloseIdleConnections()
	// The owner on the machine itself, not through nginx (which is 127.0.0.1).
	local := &http.Client{Transport: &http.Transport{DialContext: ns.Dialer(&net.TCPAddr{IP: net.ParseIP("127.0.0.2")})}}
	defer local.CloseIdleConnections()
	front := fmt.Sprintf("http://203.0.113.10:%d", nginxPort)
	testsync.WaitFor(t, "nginx in the namespace", func() bool {
		status, _ := askAs(t, attacker, "GET", front+"/", "", map[string]string{"Host": "media.example.com"})
		return status == 200
	})

	// The owner adds a task with its cookie, on the machine itself.
	status, body := rpcAs(t, local, mflow.base, call("aria2.addUri", []string{"http://203.0.113.10:1/film.mp4"}, map[string]any{"header": []string{"Cookie: SESSDATA=owner"}}), nil)
	var added struct{ Result string }
	if json.Unmarshal([]byte(body), &added); status != 200 || len(added.Result) != 16 {
		t.Fatalf("the owner's addUri: %d %s", status, body)
	}
	gid := added.Result
	unknown := "0" + gid[1:3]
	if gid[0] == '0' {
		unknown = "1" + gid[1:3]
	}
	loopbackPage := "/stream?url=" + url.QueryEscape(adminURL+"/")
	for _, spoof := range []map[string]string{
		{"Forwarded": "for=127.0.0.1"},
		{"Forwarded": `for="[::1]"`},
		{"X-Real-IP": "127.0.0.1"},
		{"X-Forwarded-For": "127.0.0.1"},
		{"X-Forwarded-For": "127.0.0.1, 127.0.0.1", "Forwarded": "for=127.0.0.1", "X-Real-IP": "127.0.0.1"},
	} {
		spoof["Host"] = "media.example.com"
		if status, body := askAs(t, attacker, "GET", front+loopbackPage, "", spoof); status != http.StatusForbidden || adminHits.Load() != 0 {
			t.Errorf("spoofing %v: fetching a loopback page gave %d %.80q, the page was asked %d times", spoof, status, body, adminHits.Load())
		}
		wantStatus, wantBody := askAs(t, attacker, "GET", front+"/stream?gid="+unknown, "", spoof)
		status, body := askAs(t, attacker, "GET", front+"/stream?gid="+gid[:3], "", spoof)
		if status != wantStatus || strings.Replace(body, gid[:3], unknown, 1) != wantBody {
			t.Errorf("spoofing %v: a GID prefix gave %d %.80q; an unknown GID gives %d %.80q", spoof, status, body, wantStatus, wantBody)
		}
		if status, body := rpcAs(t, attacker, front, call("aria2.getOption", gid), spoof); status != http.StatusForbidden || strings.Contains(body, "SESSDATA") {
			t.Errorf("spoofing %v: getOption gave %d %.120q", spoof, status, body)
		}
		if status, body := askAs(t, attacker, "GET", front+"/status.json", "", spoof); status != http.StatusForbidden {
			t.Errorf("spoofing %v: the status JSON gave %d %.80q", spoof, status, body)
		}
	}
}

// aria2js is a client built on aria2.js, the npm package AriaNg-like tools use: it connects over
// WebSocket with a secret (empty: none), makes a call with it unless told to only listen, prints "ready",
// then every notification's method and GID, a line each.
const aria2js = `const Aria2 = require(process.env.ARIA2_JS);
const [port, secret, mode] = process.argv.slice(2);
const aria2 = new Aria2({host: "127.0.0.1", port: Number(port), secure: false, secret, path: "/jsonrpc"});
aria2.on("input", (m) => { if (m.method && m.id === undefined) console.log(m.method + " " + m.params[0].gid); });
(async () => {
  await aria2.open();
  if (mode === "call") {
    try { await aria2.call("getVersion"); } catch (e) { console.log("refused " + e.message); }
  }
  console.log("ready");
})().catch(e => { console.log("error " + e.message); process.exit(1); });
`

// aria2jsModule is where .ci/e2e-deps installs aria2.js.
const aria2jsModule = "/tmp/mflow-e2e-npm/node_modules/aria2"

// Attack 2: a WebSocket that never sent the secret must hear no GID.
func TestRedTeamWebSocketsThatNeverSentTheSecretHearNothing(t *testing.T) {
	node, err := exec.LookPath("node")
	_, serr := os.Stat(aria2jsModule)
	testskip.Unless(t, err == nil && serr == nil, "node or aria2.js missing, the WebSocket red-team test did not run (bash .ci/e2e-deps)")
	mflow := startMflow(t, nil, nil, "--in-memory", "--rpc-secret", "s3")
	port := mflow.base[strings.LastIndex(mflow.base, ":")+1:]
	script := filepath.Join(t.TempDir(), "client.js")
	os.WriteFile(script, []byte(aria2js), 0o644)
	type client struct {
		lines chan string
	}
	run := func(secret, mode string) client {
		cmd := exec.Command(node, script, port, secret, mode)
		cmd.Env = append(os.Environ(), "ARIA2_JS="+aria2jsModule)
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		c := client{lines: make(chan string, 100)}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				c.lines <- sc.Text()
			}
			close(c.lines)
		}()
		return c
	}
	next := func(c client, within time.Duration) string {
		select {
		case l := <-c.lines:
			return l
		case <-time.After(within):
			return ""
		}
	}
	owner, listener, guesser := run("s3", "call"), run("", "listen"), run("guess", "call")
	if l := next(owner, 10*time.Second); l != "ready" {
		t.Fatalf("aria2.js with the secret: %q", l)
	}
	if l := next(listener, 10*time.Second); l != "ready" {
		t.Fatalf("aria2.js that only listens: %q", l)
	}
	if l := next(guesser, 10*time.Second); !strings.HasPrefix(l, "refused") {
		t.Fatalf("aria2.js with a wrong secret: %q", l)
	}
	next(guesser, 10*time.Second) // its "ready"
	// And a bare socket that connects and reads.
	bare, _, err := websocket.Dial(t.Context(), "ws://127.0.0.1:"+port+"/jsonrpc", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bare.CloseNow()
	status, body := rpcAs(t, http.DefaultClient, mflow.base, call("aria2.addUri", "token:s3", []string{"http://127.0.0.1:1/film.mp4"}, map[string]any{"header": []string{"Cookie: a=b"}}), nil)
	var added struct{ Result string }
	if json.Unmarshal([]byte(body), &added); status != 200 || added.Result == "" {
		t.Fatalf("addUri: %d %s", status, body)
	}
	if l := next(owner, 10*time.Second); l != "aria2.onDownloadStart "+added.Result {
		t.Fatalf("the owner's aria2.js heard %q", l)
	}
	// The owner heard it: a socket it was sent to would have it within microseconds.
	for name, c := range map[string]client{"aria2.js that only listens": listener, "aria2.js with a wrong secret": guesser} {
		if l := next(c, 300*time.Millisecond); l != "" {
			t.Errorf("%s heard %q", name, l)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, msg, err := bare.Read(ctx); err == nil {
		t.Errorf("a bare socket heard %s", msg)
	}
}

// Attack 3: a batch of list calls over tasks with long URIs must not grow mflow's memory by gigabytes.
func TestRedTeamABatchOfListCallsStaysWithinItsBound(t *testing.T) {
	mflow := startMflow(t, nil, nil, "--in-memory", "--rpc-secret", "s3", "--max-download-result", "1000")
	for i := range 120 {
		uris := make([]string, 4)
		for j := range uris {
			uris[j] = fmt.Sprintf("%s/answer/404?%d-%d=", env.upstream, i, j) + strings.Repeat("<", 15_000)
		}
		if status, body := rpcAs(t, http.DefaultClient, mflow.base, call("aria2.addUri", "token:s3", uris), nil); status != 200 {
			t.Fatalf("addUri %d: %d %.200s", i, status, body)
		}
	}
	testsync.WaitFor(t, "120 failed tasks", func() bool {
		_, body := rpcAs(t, http.DefaultClient, mflow.base, call("aria2.getGlobalStat", "token:s3"), nil)
		return strings.Contains(body, `"numStopped":"120"`)
	})
	before := peakRSS(t, mflow.cmd.Process.Pid)
	calls := make([]string, 8)
	for i := range calls {
		calls[i] = call("aria2.tellStopped", "token:s3", 0, 1000)
	}
	status, body := rpcAs(t, http.DefaultClient, mflow.base, "["+strings.Join(calls, ",")+"]", nil)
	grew := peakRSS(t, mflow.cmd.Process.Pid) - before
	if status != http.StatusBadRequest || !strings.Contains(body, "ask for fewer") {
		t.Errorf("8 × tellStopped over 120 long tasks: %d %.200s", status, body)
	}
	if grew > 50<<20 {
		t.Errorf("8 × tellStopped over 120 long tasks grew mflow's peak memory by %d MiB, over 50 MiB", grew>>20)
	}
	t.Logf("8 × tellStopped: peak memory grew %d MiB", grew>>20)

	// Attack 7: unknown global options kept forever.
	before = peakRSS(t, mflow.cmd.Process.Pid)
	for i := range 100 {
		opts := map[string]string{}
		for j := range 100 {
			opts[fmt.Sprintf("junk-%d-%d", i, j)] = strings.Repeat("x", 100)
		}
		rpcAs(t, http.DefaultClient, mflow.base, call("aria2.changeGlobalOption", "token:s3", opts), nil)
	}
	status, body = rpcAs(t, http.DefaultClient, mflow.base, call("aria2.getGlobalOption", "token:s3"), nil)
	if status != 200 || strings.Contains(body, "junk-") || len(body) > 64<<10 {
		t.Errorf("getGlobalOption after 100 calls of unknown options: %d, %d bytes", status, len(body))
	}
	if grew := peakRSS(t, mflow.cmd.Process.Pid) - before; grew > 50<<20 {
		t.Errorf("100 calls of unknown global options grew mflow's peak memory by %d MiB", grew>>20)
	}
}

// Attack 4: an HTTP proxy in mflow's environment must not carry a player to what it may not reach.
func TestRedTeamAnEnvironmentProxyReachesNoMoreThanThePlayer(t *testing.T) {
	ns := namespace(t, "203.0.113.30", "203.0.113.77")
	// A forward proxy would fetch what it is asked from its own network: each request is an attack that got through.
	proxyURL, proxied := countingServer(t, ns, "203.0.113.30", "what the proxy's machine serves on its loopback")
	// Players from the internet reach mflow directly: it listens on the namespace's public address too.
	port := freePort()
	cmd := ns.Command(context.Background(), env.bin, "--listen", "0.0.0.0", "--port", strconv.Itoa(port), "--in-memory")
	cmd.Env = append(os.Environ(), "HTTP_PROXY="+proxyURL, "http_proxy="+proxyURL)
	var logs testsync.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer interrupt(cmd)
	attacker := &http.Client{Transport: &http.Transport{DialContext: ns.Dialer(&net.TCPAddr{IP: net.ParseIP("203.0.113.77")})}}
	defer attacker.CloseIdleConnections()
	base := fmt.Sprintf("http://203.0.113.30:%d", port)
	testsync.WaitFor(t, "mflow in the namespace", func() bool { status, _ := askAs(t, attacker, "GET", base+"/", "", nil); return status == 200 })
	for _, target := range []string{
		"http://2130706433:8080/", // 127.0.0.1 to the proxy's resolver
		"http://127.1:8080/",
		"http://localhost.invalid:8080/",
		"http://192.168.1.1/",
		"http://[::ffff:7f00:1]:8080/",
	} {
		status, body := askAs(t, attacker, "GET", base+"/stream?url="+url.QueryEscape(target), "", nil)
		if status != http.StatusForbidden || proxied.Load() != 0 {
			t.Errorf("an internet player, %s through HTTP_PROXY: %d %.100q; the proxy was asked %d times", target, status, body, proxied.Load())
		}
	}
}

// Attack 5: players that never read, and WebSockets left open or half-sent, must not hold mflow.
func TestRedTeamPlayersAndSocketsThatHoldOnAreCut(t *testing.T) {
	mflow := startMflow(t, nil, nil, "--in-memory", "--rpc-secret", "s3", "--max-streams", "4", "--player-timeout", "2s")
	film := mflow.base + "/stream?url=" + url.QueryEscape(env.upstream+"/fast/data.bin")
	u, _ := url.Parse(mflow.base)
	// Four players that ask and never read, with receive buffers too small to hide it.
	silent := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
	}}
	for range 4 {
		conn, err := silent.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", strings.TrimPrefix(film, mflow.base), u.Host)
		// Its status line, a few bytes: its stream plays, then it reads nothing more.
		status := make([]byte, len("HTTP/1.1 200"))
		if _, err := io.ReadFull(conn, status); err != nil || string(status) != "HTTP/1.1 200" {
			t.Fatalf("a silent player's answer: %q %v", status, err)
		}
	}
	if status, _ := askAs(t, http.DefaultClient, "HEAD", film, "", nil); status != http.StatusServiceUnavailable {
		t.Fatalf("a fifth player while four silent ones play: %d, want 503 (--max-streams 4)", status)
	}
	testsync.WaitFor(t, "the silent players to be cut and a fifth to play", func() bool {
		status, _ := askAs(t, http.DefaultClient, "HEAD", film, "", nil)
		return status == http.StatusOK
	})
	if status, body := askAs(t, http.DefaultClient, "GET", film, "", nil); status != 200 || !bytes.Equal([]byte(body), env.data) {
		t.Errorf("a player after the silent ones: %d, %d bytes", status, len(body))
	}

	// WebSockets: at most 64 open.
	ws := "ws" + strings.TrimPrefix(mflow.base, "http") + "/jsonrpc"
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.CloseNow()
		}
	}()
	refused := 0
	for range 70 {
		c, resp, err := websocket.Dial(t.Context(), ws, nil)
		if err != nil {
			if resp != nil && resp.StatusCode == http.StatusServiceUnavailable {
				refused++
			}
			continue
		}
		open = append(open, c)
	}
	if len(open) != 64 || refused != 6 {
		t.Errorf("70 WebSockets: %d open, %d refused; want 64 and 6", len(open), refused)
	}
	// Half a message, then nothing: cut after 10 s, its bytes let go.
	half := open[0]
	w, err := half.Writer(t.Context(), websocket.MessageText)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(`["` + strings.Repeat("x", 1<<20)))
	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, _, err := half.Read(ctx); err == nil || ctx.Err() != nil {
		t.Errorf("a socket that sent half a message: %v after %v, want it cut within about 10 s", err, time.Since(began))
	}
}

// Attack 6: closing WebSockets, either side first, logs no ERROR (it was a panic's stack each time).
func TestRedTeamClosingWebSocketsLogsNoError(t *testing.T) {
	mflow := startMflow(t, nil, nil, "--in-memory", "--rpc-secret", "s3")
	ws := "ws" + strings.TrimPrefix(mflow.base, "http") + "/jsonrpc"
	for i := range 20 {
		c, _, err := websocket.Dial(t.Context(), ws, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(t.Context(), websocket.MessageText, []byte(call("aria2.getVersion", "token:s3")))
		c.Read(t.Context())
		if i%2 == 0 {
			c.Close(websocket.StatusNormalClosure, "")
		} else {
			c.CloseNow()
		}
	}
	last, _, err := websocket.Dial(t.Context(), ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	interrupt(mflow.cmd) // mflow first
	last.CloseNow()
	if strings.Contains(mflow.logs.String(), " ERR ") || strings.Contains(mflow.logs.String(), "panic") {
		t.Errorf("closing WebSockets logged an error:\n%s", mflow.logs.String())
	}
}

// Attack 7's rest: a secret others may read, a damaged store, a cache larger than the disk (unit-tested
// in chunkcache), and the secret in URLs.
func TestRedTeamTheSmallerHoles(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mflow.conf")
	os.WriteFile(conf, []byte("rpc-secret=s3\n"), 0o644)
	os.Chmod(conf, 0o644)
	mflow := startMflow(t, nil, nil, "--in-memory", "--conf-path", conf)
	// The warning follows the start-up lines.
	testsync.WaitFor(t, "a warning that others may read the file holding the secret", func() bool {
		return strings.Contains(mflow.logs.String(), "every user of this machine may read it")
	})
	// The status page opens in a browser without the secret in its URL: a login form, then a cookie.
	status, body := askAs(t, http.DefaultClient, "GET", mflow.base+"/status", "", map[string]string{"Accept": "text/html"})
	if status != http.StatusUnauthorized || !strings.Contains(body, `action="/login"`) {
		t.Errorf("the status page without the secret: %d %.100q", status, body)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.PostForm(mflow.base+"/login", url.Values{"secret": {"s3"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) != 1 || strings.Contains(resp.Cookies()[0].Value, "s3") {
		t.Fatalf("login: %d %v", resp.StatusCode, resp.Cookies())
	}
	cookie := resp.Cookies()[0]
	if status, _ := askAs(t, http.DefaultClient, "GET", mflow.base+"/status.json", "", map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}); status != 200 {
		t.Errorf("the status JSON with the login cookie: %d", status)
	}

	// A damaged task store: one line naming the file, status 1, no stack.
	state := t.TempDir()
	db := filepath.Join(state, "tasks.db")
	page := os.Getpagesize()
	damaged := make([]byte, 8*page)
	for i := range damaged {
		damaged[i] = byte(i*7 + 3)
	}
	// Two good meta pages from a real store, then garbage.
	first := startMflow(t, nil, nil, "--state-dir", state)
	rpcAs(t, http.DefaultClient, first.base, call("aria2.addUri", []string{"http://127.0.0.1:1/a.mp4"}), nil)
	interrupt(first.cmd)
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	copy(damaged, good[:2*page])
	os.WriteFile(db, damaged, 0o600)
	cmd := exec.Command(env.bin, "--listen", "127.0.0.1", "--port", strconv.Itoa(freePort()), "--state-dir", state)
	out, _ := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), db) || !strings.Contains(string(out), "move it away") || strings.Contains(string(out), "goroutine ") {
		t.Errorf("a damaged store: exit %d, %d lines:\n%s", cmd.ProcessState.ExitCode(), len(lines), out)
	}
}
