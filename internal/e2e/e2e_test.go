// Package e2e runs the mflow binary between real programs: nginx as the upstream, and ffprobe, ffmpeg,
// aria2c, mpv, curl, rclone and an HTTP client as players, some through a stand-in OpenList. It needs
// nginx, ffmpeg and aria2c (Debian: nginx-light ffmpeg aria2; `bash .ci/e2e-deps` installs them and the
// rest). Without them it is skipped, except under CI, where it fails.
package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mflow/internal/mediaindex"
	"mflow/internal/testsync"

	"mflow/internal/testskip"
	"mflow/internal/upstreamtest"
)

// env is what TestMain set up: the upstream, the proxy and the files they serve.
var env struct {
	dir      string // the suite's scratch folder
	upstream string // nginx's base URL
	proxy    string // mflow's base URL, its JSON-RPC secret s3
	aria2    string // a real aria2c's JSON-RPC URL, secret s3
	bin      string // the mflow binary
	mflowLog string // where mflow logs
	data     []byte // files/data.bin
}

// tools are the programs the suite runs, by name.
var tools = map[string]string{}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var missing []string
	for _, name := range []string{"nginx", "ffmpeg", "ffprobe", "aria2c"} {
		path, err := exec.LookPath(name)
		if err != nil {
			if _, err := os.Stat("/usr/sbin/" + name); err == nil {
				path = "/usr/sbin/" + name
			} else {
				missing = append(missing, name)
				continue
			}
		}
		tools[name] = path
	}
	for _, name := range []string{"chromium", "mpv", "rclone"} { // their tests say when they are missing
		if path, err := exec.LookPath(name); err == nil {
			tools[name] = path
		}
	}
	if len(missing) > 0 {
		if os.Getenv("CI") != "" {
			fmt.Printf("e2e: FAIL: %s not installed; .ci/run installs them with .ci/e2e-deps\n", strings.Join(missing, ", "))
			return 1
		}
		testskip.Say("skipped: the end-to-end suite (mflow/internal/e2e): " + strings.Join(missing, ", ") + " not installed (bash .ci/e2e-deps)")
		return 0
	}
	dir, err := os.MkdirTemp("", "mflow-e2e")
	if err != nil {
		fmt.Println("e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // nginx's workers run as another user
		fmt.Println("e2e:", err)
		return 1
	}
	env.dir = dir
	stop, err := setUp()
	defer stop()
	if err != nil {
		fmt.Println("e2e: setting up:", err)
		return 1
	}
	return m.Run()
}

// setUp makes the media, starts nginx and mflow, and returns what stops them.
func setUp() (func(), error) {
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	www := filepath.Join(env.dir, "www", "files")
	if err := os.MkdirAll(www, 0o755); err != nil {
		return stop, err
	}
	env.data = upstreamtest.RandomFile(12<<20 + 4321)
	for name, body := range map[string][]byte{"data.bin": env.data, "empty.bin": nil} {
		if err := os.WriteFile(filepath.Join(www, name), body, 0o644); err != nil {
			return stop, err
		}
	}
	// A 10 s H.264/AAC film with its index at the front, and a copy with the index at the end, so that a
	// player must seek to the tail before it can play.
	film := []string{"-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
		"-t", "10", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"}
	// And a minute of it at 2 Mbit/s (15 MB), its index at the end: far beyond the head's read-ahead.
	long := []string{"-t", "60", "-b:v", "2M"}
	for name, flags := range map[string][]string{"film.mp4": {"-movflags", "+faststart"}, "tail.mp4": nil, "long.mp4": long} {
		args := append(append(append([]string{}, film...), flags...), filepath.Join(www, name))
		if out, err := exec.Command(tools["ffmpeg"], args...).CombinedOutput(); err != nil {
			return stop, fmt.Errorf("ffmpeg making %s: %v: %s", name, err, out)
		}
	}

	nginxPort, proxyPort := freePort(), freePort()
	env.upstream = "http://127.0.0.1:" + strconv.Itoa(nginxPort)
	conf := filepath.Join(env.dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(env.dir, nginxPort)), 0o644); err != nil {
		return stop, err
	}
	nginx := exec.Command(tools["nginx"], "-p", env.dir, "-c", conf)
	nginx.Stderr = os.Stderr
	if err := nginx.Start(); err != nil {
		return stop, fmt.Errorf("starting nginx: %w", err)
	}
	stops = append(stops, func() { nginx.Process.Kill(); nginx.Wait() })
	if err := waitHTTP(env.upstream + "/status"); err != nil {
		return stop, fmt.Errorf("nginx: %w", err)
	}

	bin := filepath.Join(env.dir, "mflow")
	env.bin = bin
	if out, err := exec.Command("go", "build", "-o", bin, "mflow/cmd/mflow").CombinedOutput(); err != nil {
		return stop, fmt.Errorf("building mflow: %v: %s", err, out)
	}
	env.mflowLog = filepath.Join(env.dir, "mflow.log")
	logFile, err := os.Create(env.mflowLog)
	if err != nil {
		return stop, err
	}
	mflow := exec.Command(bin, "--listen", "127.0.0.1", "--port", strconv.Itoa(proxyPort), "-c", "4", "--log-level", "DEBUG", "--in-memory", "--rpc-secret", "s3")
	mflow.Stdout, mflow.Stderr = logFile, logFile
	if err := mflow.Start(); err != nil {
		return stop, fmt.Errorf("starting mflow: %w", err)
	}
	stops = append(stops, func() {
		interrupt(mflow)
		logFile.Close()
	})
	env.proxy = "http://127.0.0.1:" + strconv.Itoa(proxyPort)
	if err := waitHTTP(env.proxy + "/"); err != nil {
		return stop, err
	}

	// A real aria2c, the reference the JSON-RPC is compared with.
	ariaPort := freePort()
	aria := exec.Command(tools["aria2c"], "--enable-rpc", "--rpc-listen-port="+strconv.Itoa(ariaPort), "--rpc-secret=s3",
		"--rpc-allow-origin-all", "-d", filepath.Join(env.dir, "aria2"), "--quiet", "--no-conf")
	if err := aria.Start(); err != nil {
		return stop, fmt.Errorf("starting aria2c: %w", err)
	}
	stops = append(stops, func() { aria.Process.Kill(); aria.Wait() })
	env.aria2 = "http://127.0.0.1:" + strconv.Itoa(ariaPort) + "/jsonrpc"
	return stop, waitRPC(env.aria2)
}

// waitRPC waits until a JSON-RPC endpoint answers.
func waitRPC(u string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Post(u, "", strings.NewReader(`{"id":1,"method":"system.listMethods"}`))
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within 10 s: %v", u, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nginxConf is the upstream: files capped per connection (and uncapped under /fast/), a chain of
// redirects, locations that demand a drive's headers, one without Range support, fixed error answers, its
// status page, and /get/, which logs the bytes it sends.
func nginxConf(dir string, port int) string {
	return fmt.Sprintf(`daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events {}
http {
  access_log off;
  log_format bytes '$body_bytes_sent';
  client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
  types { video/mp4 mp4; application/octet-stream bin; }
  server {
    listen 127.0.0.1:%[2]d;
    root %[1]s/www;
    location /files/ { limit_rate 256k; }
    location = /hop/1 { return 302 /hop/2; }
    location = /hop/2 { return 307 /hop/3; }
    location = /hop/3 { return 302 /files/data.bin; }
    location = /hop/0 { return 302 /hop/1; }
    location /ua/ { if ($http_user_agent !~ "^DriveUA") { return 403; } alias %[1]s/www/files/; }
    location /cookie/ { if ($http_cookie !~ "session=abc") { return 403; } alias %[1]s/www/files/; }
    location /referer/ { if ($http_referer = "") { return 403; } alias %[1]s/www/files/; }
    location /norange/ { max_ranges 0; alias %[1]s/www/files/; }
    location /fast/ { alias %[1]s/www/files/; }
    location /get/ { alias %[1]s/www/files/; limit_rate 1m; access_log %[1]s/get-bytes.log bytes; }
    location = /answer/401 { return 401; }
    location = /answer/403 { return 403; }
    location = /answer/404 { return 404; }
    location = /answer/410 { return 410; }
    location = /answer/429 { return 429; }
    location = /answer/500 { return 500; }
    location = /answer/503 { return 503; }
    location = /status { stub_status; }
  }
}
`, dir, port)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitHTTP waits until u answers 200, for a program just started: 30 s, for a saturated machine (an answer
// that comes returns at once).
func waitHTTP(u string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer 200 within 30 s: %v", u, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func streamURL(path string) string {
	return env.proxy + "/stream?url=" + url.QueryEscape(env.upstream+path)
}

// get fetches u with an optional Range and returns the status, body and any read error.
func get(t *testing.T, u, rng string) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func TestRandomRangesEqualTheFile(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	size := len(env.data)
	for i := range 12 {
		a := r.IntN(size)
		b := a + r.IntN(min(size-a, 3<<20))
		if i == 0 {
			a, b = 0, size-1
		}
		status, body, err := get(t, streamURL("/files/data.bin"), fmt.Sprintf("bytes=%d-%d", a, b))
		if err != nil || status != 206 || !bytes.Equal(body, env.data[a:b+1]) {
			t.Errorf("bytes=%d-%d: status %d, %d bytes, err %v, equal %v", a, b, status, len(body), err, bytes.Equal(body, env.data[a:b+1]))
		}
	}
}

func TestFFprobeReadsTheDuration(t *testing.T) {
	for _, name := range []string{"film.mp4", "tail.mp4"} {
		out, err := exec.CommandContext(t.Context(), tools["ffprobe"], "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", streamURL("/files/"+name)).CombinedOutput()
		d, perr := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil || perr != nil || d < 9.9 || d > 10.2 {
			t.Errorf("ffprobe %s: duration %q, err %v", name, strings.TrimSpace(string(out)), err)
		}
	}
}

func TestFFmpegSeeksIntoTheMiddleAndDecodes(t *testing.T) {
	for _, name := range []string{"film.mp4", "tail.mp4"} {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(t.Context(), tools["ffmpeg"], "-v", "error", "-ss", "5", "-i", streamURL("/files/"+name), "-t", "2", "-f", "null", "-")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("ffmpeg -ss 5 %s: %v: %s", name, err, strings.ReplaceAll(strings.TrimSpace(stderr.String()), "\n", " | "))
		}
	}
}

// recorder is a reverse proxy that notes when a request first asked for a byte at or past from. Such a
// request waits for hold first, when there is one, as a request crossing a network arrives later.
type recorder struct {
	*httptest.Server
	asked chan struct{} // closed when a request first asked at or past from
	once  sync.Once
}

func record(t *testing.T, to string, from int64, hold func()) *recorder {
	target, _ := url.Parse(to)
	r := &recorder{asked: make(chan struct{})}
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.Out.Host = pr.In.Host }}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var start int64 = -1
		fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-", &start)
		if start >= from {
			if hold != nil {
				hold()
			}
			r.once.Do(func() { close(r.asked) })
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Close)
	return r
}

func TestAFilmsIndexAtItsEndIsAskedForBeforeThePlayerAsks(t *testing.T) {
	film, err := os.ReadFile(filepath.Join(env.dir, "www", "files", "long.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	ix, verdict := mediaindex.Locate(film[:mediaindex.HeadBytes], int64(len(film)))
	if verdict != mediaindex.Found {
		t.Fatalf("ffmpeg's film without +faststart has its index in front (%v)", verdict)
	}
	// ffprobe → recorder → mflow → recorder → nginx: does mflow ask for the moov before ffprobe's request
	// for it reaches mflow. That request is held until mflow asked the drive, or for 20 s: a player across
	// a home network takes tens of milliseconds to jump, a saturated machine may take mflow seconds.
	drive := record(t, env.upstream, ix.Start/(1<<20)*(1<<20), nil)
	var tooLate atomic.Bool
	player := record(t, env.proxy, ix.Start, func() {
		select {
		case <-drive.asked:
		case <-time.After(20 * time.Second):
			tooLate.Store(true)
		}
	})
	out, err := exec.CommandContext(t.Context(), tools["ffprobe"], "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
		player.URL+"/stream?url="+url.QueryEscape(drive.URL+"/files/long.mp4")).CombinedOutput()
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), "60.") {
		t.Fatalf("ffprobe: %q, %v", out, err)
	}
	select {
	case <-player.asked:
	default:
		t.Fatal("ffprobe never asked for the index")
	}
	if tooLate.Load() {
		log, _ := os.ReadFile(env.mflowLog)
		t.Errorf("mflow did not ask the drive for the index in the 20 s before ffprobe's request for it reached mflow; its log:\n%s", log)
	}
}

func TestAria2cDownloadsTheSameBytes(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, tools["aria2c"], "-x4", "-s4", "-k1M", "--min-split-size=1M", "--file-allocation=none",
		"--console-log-level=error", "--summary-interval=0", "-d", dir, "-o", "data.bin", streamURL("/files/data.bin")).CombinedOutput()
	if err != nil {
		t.Fatalf("aria2c -x4: %v: %s", err, strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", " | "))
	}
	got, err := os.ReadFile(filepath.Join(dir, "data.bin"))
	if err != nil || sha256.Sum256(got) != sha256.Sum256(env.data) {
		t.Errorf("aria2c -x4 through /stream: %d bytes, want the %d-byte file exactly (err %v)", len(got), len(env.data), err)
	}
}

func TestDocumentedAnswers(t *testing.T) {
	for name, c := range map[string]struct {
		path   string
		status int
		reason string
	}{
		"a chain of three redirects":   {"/hop/1", 206, ""},
		"four redirects, over the cap": {"/hop/0", 502, "too many redirects"},
		"no Range support":             {"/norange/data.bin", 403, "does not support Range"},
		"drive demands a User-Agent":   {"/ua/data.bin", 403, "upstream answered 403"},
		"drive demands a Cookie":       {"/cookie/data.bin", 403, "upstream answered 403"},
		"drive demands a Referer":      {"/referer/data.bin", 403, "upstream answered 403"},
		"missing file":                 {"/files/nope.mp4", 404, "upstream answered 404"},
	} {
		status, body, err := get(t, streamURL(c.path), "bytes=0-99")
		if err != nil || status != c.status || !strings.Contains(string(body), c.reason) || (status == 206 && !bytes.Equal(body, env.data[:100])) {
			t.Errorf("%s: %d %q (err %v), want %d with %q", name, status, strings.TrimSpace(string(body)), err, c.status, c.reason)
		}
	}
	if status, body, err := get(t, streamURL("/files/empty.bin"), "bytes=0-"); err != nil || status != 200 || len(body) != 0 {
		t.Errorf("empty file: %d, %d bytes (err %v), want an empty 200", status, len(body), err)
	}
	status, body, _ := get(t, env.proxy+"/stream?url=ftp%3A%2F%2Fexample.com%2Ff", "")
	if status != 400 || !strings.HasPrefix(string(body), "mflow: ") {
		t.Errorf("ftp URL: %d %q, want 400 with a reason", status, body)
	}
}

// writing is the number of responses nginx is sending now, less the status page's own.
func writing(t *testing.T) int {
	t.Helper()
	_, body, err := get(t, env.upstream+"/status", "")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`Writing: (\d+)`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no Writing count in nginx's status: %q", body)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n - 1
}

func TestAPlayerCutOffLeavesNoUpstreamRequestOpen(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, streamURL("/files/data.bin"), nil)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(bufio.NewReader(resp.Body), make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	testsync.WaitFor(t, "nginx to send mflow's chunk requests mid-stream", func() bool { return writing(t) >= 1 })
	cancel()
	resp.Body.Close()
	testsync.WaitFor(t, "nginx to send no response after the player left", func() bool { return writing(t) == 0 })
}

// rpcPost sends a raw JSON-RPC body and returns the HTTP status and the decoded reply.
func rpcPost(t *testing.T, u, body string) (int, any) {
	t.Helper()
	resp, err := http.Post(u, "", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("%s answered %d with no JSON: %v", u, resp.StatusCode, err)
	}
	return resp.StatusCode, v
}

// shape keeps what must match between aria2c and mflow: ids, error codes and messages (multicall's
// included), and the kind of each result, its value too where it does not depend on the downloads.
func shape(v any) any {
	switch x := v.(type) {
	case []any: // a batch
		out := []any{}
		for _, e := range x {
			out = append(out, shape(e))
		}
		return out
	case map[string]any:
		out := map[string]any{"id": x["id"]}
		if e, ok := x["error"]; ok {
			out["error"] = e
		}
		if r, ok := x["result"]; ok {
			out["result"] = resultShape(r)
		}
		return out
	}
	return v
}

func resultShape(v any) any {
	switch r := v.(type) {
	case string:
		if r == "OK" || strings.HasPrefix(r, "aria2.on") {
			return r
		}
		return "string"
	case []any:
		out := []any{}
		for _, e := range r {
			out = append(out, resultShape(e))
		}
		return out
	case map[string]any:
		if _, isError := r["code"]; isError {
			return r // an error inside system.multicall's result
		}
		return "object " + strings.Join(slices.Sorted(maps.Keys(r)), ",")
	}
	return fmt.Sprintf("%T", v)
}

func TestRPCAnswersAsARealAria2c(t *testing.T) {
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":"q","method":"aria2.getVersion","params":["token:s3"]}`,
		`{"jsonrpc":"2.0","id":"q","method":"aria2.getVersion","params":["token:bad"]}`,
		`{"jsonrpc":"2.0","id":"q","method":"aria2.getVersion","params":["token:s3"`,
		`{"jsonrpc":"2.0","method":"aria2.getVersion"}`,
		`{"id":7,"method":5}`,
		`{"id":7,"method":"aria2.getVersion","params":{"a":1}}`,
		`{"id":0,"method":"aria2.nosuch","params":["token:s3"]}`,
		`{"json-rpc":"2.0","id":{"x":[1]},"method":"aria2.getGlobalStat","params":["token:s3"]}`,
		`[{"id":"a","method":"aria2.getGlobalStat","params":["token:s3"]},{"id":"b","method":"aria2.nosuch","params":["token:s3"]},{"method":"aria2.getVersion"},5]`,
		`[]`,
		`{"id":1,"method":"aria2.tellStatus","params":["token:s3","zzzz"]}`,
		`{"id":1,"method":"aria2.tellStatus","params":["token:s3","0123456789abcdef0"]}`,
		`{"id":1,"method":"aria2.tellStatus","params":["token:s3","0123456789abcdef"]}`,
		`{"id":1,"method":"aria2.tellStatus","params":["token:s3",5]}`,
		`{"id":1,"method":"aria2.tellStatus","params":["token:s3"]}`,
		`{"id":1,"method":"aria2.pause","params":["token:s3","0123456789abcdef"]}`,
		`{"id":1,"method":"aria2.remove","params":["token:s3","0123456789abcdef"]}`,
		`{"id":1,"method":"aria2.getOption","params":["token:s3","0123456789abcdef"]}`,
		`{"id":1,"method":"aria2.changeOption","params":["token:s3","0123456789abcdef",{}]}`,
		`{"id":1,"method":"aria2.addUri","params":["token:s3",[]]}`,
		`{"id":1,"method":"aria2.addUri","params":["token:s3","http://x"]}`,
		`{"id":1,"method":"aria2.addUri","params":["token:s3",["http://x/y"],{},-1]}`,
		`{"id":1,"method":"aria2.addUri","params":["token:s3",["http://x/y"],{"split":"abc"}]}`,
		`{"id":1,"method":"aria2.addUri","params":["token:s3",["http://x/y"],"x"]}`,
		`{"id":1,"method":"aria2.tellWaiting","params":["token:s3"]}`,
		`{"id":1,"method":"aria2.tellActive","params":["token:s3",["gid"]]}`,
		`{"id":1,"method":"aria2.pauseAll","params":["token:s3"]}`,
		`{"id":1,"method":"aria2.unpauseAll","params":["token:s3"]}`,
		`{"id":1,"method":"aria2.purgeDownloadResult","params":["token:s3"]}`,
		`{"id":1,"method":"aria2.getSessionInfo","params":["token:s3"]}`,
		`{"id":1,"method":"system.listNotifications"}`,
		`{"id":1,"method":"system.multicall","params":["token:s3",[]]}`,
		`{"id":1,"method":"system.multicall","params":[[{"methodName":"aria2.getVersion","params":["token:bad"]},{"methodName":"system.multicall","params":[]},{"methodName":"aria2.nosuch","params":["token:s3"]},5,{"params":[]}]]}`,
	} {
		wantStatus, want := rpcPost(t, env.aria2, body)
		gotStatus, got := rpcPost(t, env.proxy+"/jsonrpc", body)
		w, g := shape(want), shape(got)
		if gotStatus != wantStatus || fmt.Sprint(g) != fmt.Sprint(w) {
			t.Errorf("%s: mflow %d %v, aria2c %d %v", body, gotStatus, g, wantStatus, w)
		}
	}
}

func TestTaskHeadersReachADriveThatDemandsThem(t *testing.T) {
	for name, opts := range map[string]map[string]any{
		"/ua/":      {"header": []string{"User-Agent: DriveUA/2.0"}},
		"/cookie/":  {"header": "Cookie: session=abc; other=1", "user-agent": "x"},
		"/referer/": {"referer": "*"},
	} {
		body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "aria2.addUri",
			"params": []any{"token:s3", []string{env.upstream + name + "data.bin"}, opts}})
		status, reply := rpcPost(t, env.proxy+"/jsonrpc", string(body))
		gid, _ := reply.(map[string]any)["result"].(string)
		if status != 200 || gid == "" {
			t.Errorf("%s: addUri answered %d %v", name, status, reply)
			continue
		}
		code, got, err := get(t, env.proxy+"/stream?gid="+gid, "bytes=1000-300999")
		if err != nil || code != 206 || !bytes.Equal(got, env.data[1000:301000]) {
			t.Errorf("%s: /stream?gid= answered %d with %d bytes (err %v): %.100s", name, code, len(got), err, got)
		}
	}
}

// taskError adds uri as a task on the JSON-RPC at rpc and waits for it to fail, then returns its error code
// and message.
func taskError(t *testing.T, rpc, uri string) (string, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "aria2.addUri",
		"params": []any{"token:s3", []string{uri}, map[string]string{"max-tries": "1"}}})
	_, reply := rpcPost(t, rpc, string(body))
	gid, _ := reply.(map[string]any)["result"].(string)
	if gid == "" {
		t.Fatalf("%s: addUri answered %v", rpc, reply)
	}
	status := fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"aria2.tellStatus","params":["token:s3",%q,["status","errorCode","errorMessage"]]}`, gid)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		_, reply := rpcPost(t, rpc, status)
		st, _ := reply.(map[string]any)["result"].(map[string]any)
		if st["status"] == "error" {
			return fmt.Sprint(st["errorCode"]), fmt.Sprint(st["errorMessage"])
		}
	}
	t.Fatalf("%s: the task for %s never failed", rpc, uri)
	return "", ""
}

func TestTaskErrorsAsARealAria2c(t *testing.T) {
	for _, code := range []int{401, 403, 404, 410, 429, 500, 503} {
		uri := fmt.Sprintf("%s/answer/%d", env.upstream, code)
		wantCode, wantMessage := taskError(t, env.aria2, uri)
		gotCode, gotMessage := taskError(t, env.proxy+"/jsonrpc", uri)
		if gotCode != wantCode || gotMessage != wantMessage {
			t.Errorf("upstream %d: mflow says %s %q, aria2c %s %q", code, gotCode, gotMessage, wantCode, wantMessage)
		}
	}
}

// faultyFront stands in front of nginx and spoils a quarter of the requests, the probes included: an
// error status, a connection cut mid-body, a gzip-compressed body, or an answer after a pause.
func faultyFront(t *testing.T, upstream string) *httptest.Server {
	var mu sync.Mutex
	dice := rand.New(rand.NewPCG(9, 10))
	roll := func() (float64, int) {
		mu.Lock()
		defer mu.Unlock()
		return dice.Float64(), dice.IntN(6)
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x, kind := roll()
		if x >= 0.25 {
			kind = -1
		}
		switch kind {
		case 0:
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		case 1:
			w.Header().Set("Retry-After", "0")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		case 2:
			time.Sleep(200 * time.Millisecond) // a distant route
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, upstream+r.URL.RequestURI(), nil)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		maps.Copy(w.Header(), resp.Header)
		switch kind {
		case 3: // cut mid-body
			w.WriteHeader(resp.StatusCode)
			io.CopyN(w, resp.Body, 3000)
			panic(http.ErrAbortHandler)
		case 4: // compressed, under the same Content-Range
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			io.Copy(zw, resp.Body)
			zw.Close()
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", strconv.Itoa(z.Len()))
			w.WriteHeader(resp.StatusCode)
			w.Write(z.Bytes())
			return
		case 5: // a 200 with the whole file for a Range
			if resp.StatusCode == http.StatusPartialContent {
				whole, err := http.Get(upstream + r.URL.RequestURI())
				if err == nil {
					defer whole.Body.Close()
					w.Header().Del("Content-Range")
					w.Header().Set("Content-Length", strconv.FormatInt(whole.ContentLength, 10))
					w.WriteHeader(http.StatusOK)
					io.Copy(w, whole.Body)
					return
				}
			}
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(front.Close)
	return front
}

func TestFaultSoakThroughNginx(t *testing.T) {
	front := faultyFront(t, env.upstream)
	r := rand.New(rand.NewPCG(3, 4))
	size := int64(len(env.data))
	exact, cut := 0, 0
	for i := range 30 {
		a := r.Int64N(size)
		b := a + r.Int64N(min(size-a, 3<<20))
		u := env.proxy + "/stream?url=" + url.QueryEscape(fmt.Sprintf("%s/fast/data.bin?play=%d", front.URL, i)) // a new link: a probe each play
		code, got, err := get(t, u, fmt.Sprintf("bytes=%d-%d", a, b))
		switch {
		case err != nil || code >= 400:
			cut++
		case code != 206 || !bytes.Equal(got, env.data[a:b+1]):
			t.Fatalf("play %d (bytes %d-%d): %d with %d bytes: a clean end with the wrong bytes", i, a, b, code, len(got))
		default:
			exact++
		}
	}
	t.Logf("%d plays byte-exact, %d cut or refused", exact, cut)
	if exact < 25 {
		t.Errorf("only %d of 30 plays succeeded through a quarter of faults", exact)
	}
}

// crossOriginPage tries, from its own origin, what a web page of another site would try against mflow's
// JSON-RPC at rpc: read it with fetch, open its WebSocket, and read it through JSONP. It posts what worked
// to its own server's /report.
const crossOriginPage = `<!doctype html><html><body><script>
const rpc = %q, out = [];
async function main() {
  try {
    const r = await fetch(rpc, {method: "POST", body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "aria2.tellActive", params: ["token:s3"]})});
    out.push("fetch:" + ((await r.text()).includes("result") ? "read" : "refused"));
  } catch (e) { out.push("fetch:blocked"); }
  await new Promise(done => {
    const ws = new WebSocket(rpc.replace("http", "ws"));
    ws.onopen = () => { out.push("ws:open"); ws.close(); done(); };
    ws.onerror = () => { out.push("ws:blocked"); done(); };
  });
  await new Promise(done => {
    window.cb = () => { out.push("jsonp:read"); done(); };
    const s = document.createElement("script");
    s.src = rpc + "?method=aria2.getGlobalStat&id=1&jsoncallback=cb&params=" + encodeURIComponent(btoa('["token:s3"]'));
    s.onerror = () => { out.push("jsonp:blocked"); done(); };
    document.body.appendChild(s);
  });
  await fetch("/report", {method: "POST", body: "done " + out.join(" ")});
}
main();
</script></body></html>`

// visit serves page from a site of its own, opens it in a headless Chromium, and returns what the page
// posts to that site's /report. It waits for the report itself, however slow the machine, up to a minute.
func visit(t *testing.T, page string) string {
	t.Helper()
	reports := make(chan string, 1)
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/report" {
			b, _ := io.ReadAll(r.Body)
			select {
			case reports <- string(b):
			default:
			}
			return
		}
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, page)
	}))
	defer site.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	browser := exec.CommandContext(ctx, tools["chromium"], append(chromiumSwitches(t), site.URL+"/")...)
	if err := browser.Start(); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- browser.Wait() }()
	defer func() { cancel(); <-exited }() // before site.Close, which waits for the browser's requests
	select {
	case report := <-reports:
		return report
	case err := <-exited:
		exited <- err
		t.Fatalf("chromium ended before the page reported: %v", err)
	case <-ctx.Done():
		t.Fatal("the page reported nothing within a minute")
	}
	return ""
}

func TestAPageOfAnotherSiteCannotUseTheRPC(t *testing.T) {
	testskip.Unless(t, tools["chromium"] != "", "chromium not installed, the status page's and CORS tests did not run (bash .ci/e2e-deps)")
	// A second mflow that lets every origin in, so the page is seen to read what it can read.
	port := freePort()
	open := exec.Command(env.bin, "--listen", "127.0.0.1", "--port", strconv.Itoa(port), "--in-memory", "--rpc-secret", "s3", "--rpc-allow-origin-all")
	if err := open.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { open.Process.Kill(); open.Wait() }()
	openURL := "http://127.0.0.1:" + strconv.Itoa(port)
	if err := waitHTTP(openURL + "/"); err != nil {
		t.Fatal(err)
	}
	for rpc, want := range map[string]string{
		env.proxy + "/jsonrpc": "done fetch:blocked ws:blocked jsonp:blocked",
		openURL + "/jsonrpc":   "done fetch:read ws:open jsonp:read",
	} {
		if got := visit(t, fmt.Sprintf(crossOriginPage, rpc)); got != want {
			t.Errorf("a page of another origin against %s: %q, want %q", rpc, got, want)
		}
	}
}

// chromiumSwitches are the switches every headless Chromium of the suite runs with, a profile of its own included.
func chromiumSwitches(t *testing.T) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir=" + t.TempDir()}
}

// TestTheStatusPageShowsWhatPlays opens the status page as a person on this machine does, in Chromium,
// while two films play (one of them a task): it logs in with the secret typed into the page, never in a
// URL, and reads what is on screen.
func TestTheStatusPageShowsWhatPlays(t *testing.T) {
	testskip.Unless(t, tools["chromium"] != "", "chromium not installed, the status page's and CORS tests did not run (bash .ci/e2e-deps)")
	// Two players at a film's bitrate (nginx gives each connection 256 KiB/s): they play all along.
	ctx, stop := context.WithCancel(t.Context())
	_, v := rpcPost(t, env.proxy+"/jsonrpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"aria2.addUri","params":["token:s3",[%q],{"out":"Long Film.mp4"}]}`, env.upstream+"/files/long.mp4"))
	gid, _ := v.(map[string]any)["result"].(string)
	if gid == "" {
		t.Fatalf("addUri: %v", v)
	}
	var players sync.WaitGroup
	defer func() { stop(); players.Wait() }()
	for _, u := range []string{env.proxy + "/stream/" + gid + "/Long%20Film.mp4", env.proxy + "/stream?url=" + url.QueryEscape(env.upstream+"/files/data.bin?sig=secret")} {
		req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		players.Go(func() {
			defer resp.Body.Close()
			buf := make([]byte, 32<<10)
			for ctx.Err() == nil {
				if _, err := resp.Body.Read(buf); err != nil {
					return
				}
				time.Sleep(125 * time.Millisecond) // 256 KiB/s: a film's bitrate, not a wait for an event
			}
		})
	}

	b := openBrowser(t, 1100, 820)
	b.open(env.proxy + "/status")
	b.waitFor("the login form", `!!document.querySelector("input[name=secret]")`)
	b.eval(`document.querySelector("input[name=secret]").value = "s3"; document.querySelector("form").submit(); true`)
	b.waitFor("both films on the page, each with a connection", `document.querySelectorAll(".film").length === 2 &&
		[...document.querySelectorAll(".film")].every(f => f.querySelector(".bar .req") && /[1-9][0-9.]* (B|KiB|MiB)\/s/.test(f.querySelector(".speed").textContent))`)
	if u := b.eval("location.href").(string); strings.Contains(u, "s3") || strings.Contains(u, "token") {
		t.Errorf("the page's address carries the secret: %s", u)
	}
	b.waitFor("the cache and connections line", `document.getElementById("budget").textContent.includes("connections in use")`)
	text := b.eval("document.body.innerText").(string)
	for _, want := range []string{"speed is what the drive sends it now", "version ", "Long Film.mp4", "data.bin", "played", "read ahead", "#1 at "} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not say %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "cannot reach mflow") {
		t.Errorf("the page could not show what mflow answered:\n%s", text)
	}
	if strings.Contains(text, "sig=secret") {
		t.Error("the page shows a link's query")
	}
	// One speed per film: the tasks say how much players took, not a second speed.
	if n := b.eval(`[...document.querySelectorAll("th")].filter(th => /speed/i.test(th.textContent)).length`); n != float64(0) {
		t.Errorf("%v table columns named speed; each film's one speed is on its card", n)
	}
	// The task's state in the JSON-RPC's word, and its play link, which plays.
	_, st := rpcPost(t, env.proxy+"/jsonrpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"aria2.tellStatus","params":["token:s3",%q,["status"]]}`, gid))
	word := st.(map[string]any)["result"].(map[string]any)["status"]
	row := b.eval(fmt.Sprintf(`[...document.querySelectorAll("#tasks tr")].map(tr => tr.innerText).find(r => r.includes(%q)) || ""`, gid)).(string)
	link := b.eval(fmt.Sprintf(`(document.querySelector('#tasks a[href*=%q]') || {}).href || ""`, gid)).(string)
	if !strings.Contains(row, fmt.Sprint(word)) || link != env.proxy+"/stream/"+gid+"/Long%20Film.mp4" {
		t.Errorf("the task's row %q, link %q; want the RPC's %q and its play link", row, link, word)
	}
	if status, body, err := get(t, link, "bytes=0-99999"); status != 206 || err != nil || len(body) != 100000 {
		t.Errorf("the task's play link: %d, %d bytes, %v", status, len(body), err)
	}

	// The screenshot: the bars are drawn (played in green, requests in blue).
	shot := b.screenshot()
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatal(err)
	}
	played, requests := 0, 0
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			switch [3]uint32{r >> 8, g >> 8, bl >> 8} {
			case [3]uint32{0x0a, 0x7d, 0x4a}:
				played++
			case [3]uint32{0x19, 0x76, 0xd2}:
				requests++
			}
		}
	}
	if played < 20 || requests < 20 {
		t.Errorf("the screenshot shows %d pixels of played bars and %d of requests", played, requests)
	}
	if path := os.Getenv("MFLOW_STATUS_SCREENSHOT"); path != "" { // how the README's picture is made
		os.WriteFile(path, shot, 0o644)
	}
}

func TestAnInterruptedGetResumesAndFetchesTheFileAboutOnce(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "data.bin")
	link := env.upstream + "/get/data.bin"
	logFile := filepath.Join(env.dir, "get-bytes.log")
	fetched := func() int64 {
		b, _ := os.ReadFile(logFile)
		var n int64
		for _, line := range strings.Fields(string(b)) {
			v, _ := strconv.ParseInt(line, 10, 64)
			n += v
		}
		return n
	}
	before := fetched()

	// Chunks of 256K: what is in flight at the interruption (at most 2 × -c chunks, read ahead and not yet
	// written) is all a rerun fetches again.
	first := exec.Command(env.bin, "get", "-c", "4", "-s", "256K", "-o", out, link)
	var firstErr bytes.Buffer
	first.Stderr = &firstErr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	testsync.WaitFor(t, "a third of the file in data.bin.part", func() bool {
		info, err := os.Stat(out + ".part")
		return err == nil && info.Size() > int64(len(env.data))/3
	})
	first.Process.Signal(os.Interrupt) // Ctrl-C
	if err := first.Wait(); err == nil {
		t.Fatalf("an interrupted get exited 0: %s", firstErr.String())
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("after Ctrl-C, %s exists: it would look whole", out)
	}

	second := exec.Command(env.bin, "get", "-c", "4", "-s", "256K", "-o", out, link)
	msg, err := second.CombinedOutput()
	if err != nil {
		t.Fatalf("the resumed get: %v: %s", err, msg)
	}
	if !strings.Contains(string(msg), "resuming after") {
		t.Errorf("the second run did not say it resumed: %s", msg)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, env.data) {
		t.Fatalf("the resumed download is not the file: %d bytes, %v", len(got), err)
	}
	// nginx logs a request when it ends; the interrupted ones too.
	testsync.WaitFor(t, "nginx's log of the requests", func() bool { return fetched()-before >= int64(len(env.data)) })
	n := fetched() - before
	t.Logf("nginx sent %.2f × the file over an interruption and a resume", float64(n)/float64(len(env.data)))
	if n > int64(len(env.data))*13/10 {
		t.Errorf("nginx sent %d bytes for a %d-byte file over an interruption: more than about once", n, len(env.data))
	}
}

// rpcPair starts an aria2c and an mflow of their own, each with the JSON-RPC secret s3 and no task, and
// returns their JSON-RPC URLs and the processes (stopped when the test ends, unless they stopped already).
func rpcPair(t *testing.T) (ariaURL, mflowURL string, aria, mflow *exec.Cmd) {
	ariaPort, mflowPort := freePort(), freePort()
	aria = exec.Command(tools["aria2c"], "--enable-rpc", "--rpc-listen-port="+strconv.Itoa(ariaPort), "--rpc-secret=s3", "-d", t.TempDir(), "--quiet", "--no-conf")
	mflow = exec.Command(env.bin, "--listen", "127.0.0.1", "--port", strconv.Itoa(mflowPort), "--in-memory", "--rpc-secret", "s3")
	for _, cmd := range []*exec.Cmd{aria, mflow} {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
	}
	ariaURL, mflowURL = fmt.Sprintf("http://127.0.0.1:%d/jsonrpc", ariaPort), fmt.Sprintf("http://127.0.0.1:%d/jsonrpc", mflowPort)
	for _, u := range []string{ariaURL, mflowURL} {
		if err := waitRPC(u); err != nil {
			t.Fatal(err)
		}
	}
	return ariaURL, mflowURL, aria, mflow
}

// TestEveryAria2MethodAnswersAsARealAria2c runs the methods that change the queue and a task's URIs on
// tasks of the same GIDs in aria2c and in mflow, and compares the answers.
func TestEveryAria2MethodAnswersAsARealAria2c(t *testing.T) {
	ariaURL, mflowURL, _, _ := rpcPair(t)
	_, want := rpcPost(t, ariaURL, `{"id":1,"method":"system.listMethods"}`)
	_, got := rpcPost(t, mflowURL, `{"id":1,"method":"system.listMethods"}`)
	if fmt.Sprint(got.(map[string]any)["result"]) != fmt.Sprint(want.(map[string]any)["result"]) {
		t.Errorf("system.listMethods: mflow %v\naria2c %v", got, want)
	}
	call := func(method string, params ...any) string {
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": "1", "method": method, "params": append([]any{"token:s3"}, params...)})
		return string(b)
	}
	gids := []string{"e2e0000000000001", "e2e0000000000002", "e2e0000000000003"}
	for i, gid := range gids {
		body := call("aria2.addUri", []string{fmt.Sprintf("%s/files/data.bin?n=%d", env.upstream, i)}, map[string]string{"gid": gid, "pause": "true"})
		for _, u := range []string{ariaURL, mflowURL} {
			if status, v := rpcPost(t, u, body); status != 200 {
				t.Fatalf("addUri at %s: %d %v", u, status, v)
			}
		}
	}
	for _, body := range []string{
		call("aria2.changePosition", gids[2], 0, "POS_SET"),
		call("aria2.changePosition", gids[2], 5, "POS_CUR"),
		call("aria2.changePosition", gids[2], -1, "POS_END"),
		call("aria2.changePosition", gids[2], -100, "POS_CUR"),
		call("aria2.tellWaiting", 0, 10, []string{"gid"}),
		call("aria2.changePosition", gids[2], 0, "POS_NOPE"),
		call("aria2.changePosition", gids[2], "0", "POS_SET"),
		call("aria2.changePosition", "0123456789abcdef", 0, "POS_SET"),
		call("aria2.changeUri", gids[0], 1, []string{"http://x/none"}, []string{"http://x/1", "http://x/2"}),
		call("aria2.changeUri", gids[0], 1, []string{}, []string{"http://x/0", "notauri"}, 0),
		call("aria2.getUris", gids[0]),
		call("aria2.changeUri", gids[0], 2, []string{}, []string{"http://x/3"}),
		call("aria2.changeUri", gids[0], 0, []string{}, []string{"http://x/3"}),
		call("aria2.getServers", gids[1]),
		call("aria2.getPeers", gids[1]),
		call("aria2.addTorrent"),
		call("aria2.addMetalink"),
	} {
		wantStatus, want := rpcPost(t, ariaURL, body)
		gotStatus, got := rpcPost(t, mflowURL, body)
		w, g := fmt.Sprint(want), fmt.Sprint(got)
		if strings.Contains(body, "getUris") || strings.Contains(body, "tellWaiting") {
			w, g = fmt.Sprint(want.(map[string]any)["result"]), fmt.Sprint(got.(map[string]any)["result"])
		}
		if gotStatus != wantStatus || g != w {
			t.Errorf("%s: mflow %d %v, aria2c %d %v", body, gotStatus, g, wantStatus, w)
		}
	}
	// Where mflow has its own words (it takes no torrent; its tasks are kept in memory here), the envelope,
	// the code and the status are aria2's.
	for _, body := range []string{call("aria2.addTorrent", "AAAA"), call("aria2.addMetalink", "AAAA"), call("aria2.saveSession")} {
		wantStatus, want := rpcPost(t, ariaURL, body)
		gotStatus, got := rpcPost(t, mflowURL, body)
		w, g := want.(map[string]any)["error"], got.(map[string]any)["error"]
		if gotStatus != wantStatus || w == nil || g == nil || w.(map[string]any)["code"] != g.(map[string]any)["code"] {
			t.Errorf("%s: mflow %d %v, aria2c %d %v", body, gotStatus, got, wantStatus, want)
		}
	}
}

func TestShutdownStopsMflowAsItStopsAria2c(t *testing.T) {
	for _, method := range []string{"aria2.shutdown", "aria2.forceShutdown"} {
		ariaURL, mflowURL, aria, mflow := rpcPair(t)
		body := `{"jsonrpc":"2.0","id":"s","method":"` + method + `","params":["token:s3"]}`
		_, want := rpcPost(t, ariaURL, body)
		_, got := rpcPost(t, mflowURL, body)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: mflow %v, aria2c %v", method, got, want)
		}
		for name, cmd := range map[string]*exec.Cmd{"aria2c": aria, "mflow": mflow} {
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("%s after %s: %v", name, method, err)
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
				t.Errorf("%s still runs 10 s after %s", name, method)
			}
		}
	}
}
