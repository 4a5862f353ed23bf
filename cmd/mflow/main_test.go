package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mflow/internal/access"
	"mflow/internal/app"
	"mflow/internal/testsync"

	"go.uber.org/goleak"

	"mflow/internal/testskip"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) {
	if os.Getenv("RUN_AS_MFLOW") != "" { // this binary, linked with every library mflow is, run as mflow
		os.Exit(run(context.Background(), os.Args[1:], environ(os.Environ()), os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

func TestDefaultsAreTheSeeds(t *testing.T) {
	o, text, err := parseFlags(nil, nil)
	if err != nil || text != "" {
		t.Fatal(text, err)
	}
	want := options{Config: app.Config{Port: 80, Connections: 4, ChunkSize: 1 << 20, ReadAhead: 64 << 20, MaxMemory: 256 << 20, Retry: 5, MaxRedirects: 3, HostConnections: 16, MaxStreams: 64, MaxStopped: 1000, MaxWaiting: 1000, PlayerTimeout: time.Minute, Proxies: access.Proxies{Header: "X-Forwarded-For"}}, listen: "0.0.0.0", logLevel: "INFO", logFormat: "text", cacheSize: 256 << 20, cacheDirSize: 10 << 30}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("defaults %+v, want %+v", o, want)
	}
	o, _, err = parseFlags(strings.Fields("-p 9000 -c 16 -s 0.5M -r 2 --log-level debug --cache --cache-size 64M --cache-dir /c --cache-dir-size 1G --min-speed 100K --listen 127.0.0.1 --max-redirects 5 --host-connections 2 --insecure --relay-no-range --rpc-secret s --state-dir /s --in-memory --read-ahead 16M --max-memory 128M"+
		" --rpc-listen-all --rpc-allow-origin-all --allow-target 192.168.1.0/24,10.0.0.7 --deny-target fd00::/8 --max-streams 8 --max-download-result 10 --max-waiting 20 --real-ip-header x-real-ip --player-timeout 2m"), nil)
	want = options{Config: app.Config{Port: 9000, Connections: 16, ChunkSize: 512 << 10, ReadAhead: 16 << 20, MaxMemory: 128 << 20, Retry: 2, MinSpeed: 100 << 10, MaxRedirects: 5, HostConnections: 2, Insecure: true, RelayNoRange: true, RPCSecret: "s", RPCListenAll: true, RPCAllowOriginAll: true, MaxStreams: 8, MaxStopped: 10, MaxWaiting: 20, PlayerTimeout: 2 * time.Minute, Proxies: access.Proxies{Header: "X-Real-IP"}}, listen: "127.0.0.1", logLevel: "DEBUG", logFormat: "text", cache: true, cacheSize: 64 << 20, cacheDir: "/c", cacheDirSize: 1 << 30, stateDir: "/s", inMemory: true, allowTarget: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("10.0.0.7/32")}, denyTarget: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}}
	if err != nil || !reflect.DeepEqual(o, want) {
		t.Errorf("parsed %+v, %v; want %+v", o, err, want)
	}
}

func TestBadFlagValuesExitTwoWithOneLine(t *testing.T) {
	for args, flag := range map[string]string{
		"-c 0":                               "--connections",
		"--real-ip-header X-Client-IP":       "--real-ip-header",
		"--drive 115cdn.net":                 "--drive",
		"--drive 115cdn.net=0":               "--drive",
		"--connections=x":                    "--connections",
		"-p 70000":                           "--port",
		"-s 1Q":                              "--chunk-size",
		"-s 1K":                              "--chunk-size",
		"-r -1":                              "--retry",
		"--log-level LOUD":                   "--log-level",
		"--min-speed fast":                   "--min-speed",
		"--max-redirects -2":                 "--max-redirects",
		"--host-connections 0":               "--host-connections",
		"--allow-target 10.0.0.0/33":         "--allow-target",
		"--max-streams 0":                    "--max-streams",
		"--redis http://h:6379":              "--redis",
		"--redis redis://h --in-memory":      "--redis",
		"--redis redis://h --state-dir /tmp": "--redis",
		"--nonsense":                         "--nonsense",
		"extra":                              "extra",
	} {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), strings.Fields(args), nil, &stdout, &stderr)
		msg := stderr.String()
		if code != 2 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, flag) || stdout.Len() != 0 {
			t.Errorf("%s: exit %d, stderr %q", args, code, msg)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"--version"}} {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), args, nil, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "mflow") {
			t.Errorf("%v: exit %d, %q", args, code, stdout.String())
		}
	}
}

func TestPortInUseSuggestsAnother(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var stderr bytes.Buffer
	code := run(t.Context(), []string{"--listen", "127.0.0.1", "-p", port}, nil, io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "in use") || !strings.Contains(stderr.String(), "--port") || strings.Count(stderr.String(), "\n") != 1 {
		t.Errorf("exit %d, %q", code, stderr.String())
	}
}

// startMflow runs mflow with args on a free loopback port until the function it returns is called, which
// stops it as SIGINT does and returns its exit code. It returns once mflow answers.
func startMflow(t *testing.T, args []string, logs io.Writer) (string, func() int) {
	t.Helper()
	return startMflowWith(t, args, nil, logs)
}

// startMflowWith is startMflow with env as the environment.
func startMflowWith(t *testing.T, args []string, env map[string]string, logs io.Writer) (string, func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1", "-p", port}, args...), env, io.Discard, logs)
	}()
	base := "http://127.0.0.1:" + port
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	var resp *http.Response
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if resp, err = client.Get(base + "/"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		stop()
		<-done
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET / = %d", resp.StatusCode)
	}
	return base, func() int { stop(); return <-done }
}

func TestServesUntilSignalledThenStops(t *testing.T) {
	_, stop := startMflow(t, []string{"--state-dir", t.TempDir()}, io.Discard)
	if code := stop(); code != 0 {
		t.Fatalf("exit %d after the signal", code)
	}
}

func TestPrivilegedPortSuggestsAnother(t *testing.T) {
	err := &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("bind", syscall.EACCES)}
	msg := listenProblem("0.0.0.0:80", 80, err)
	if !strings.Contains(msg, "no permission") || !strings.Contains(msg, "--port 8080") || strings.Contains(msg, "\n") {
		t.Errorf("%q", msg)
	}
}

func TestShutdownEndsAStreamThePlayerHolds(t *testing.T) {
	u := upstreamtest.New(upstreamtest.RandomFile(32<<20), upstreamtest.Options{})
	defer u.Close()
	logs := &testsync.SyncBuffer{}
	base, stop := startMflow(t, []string{"--in-memory", "-s", "64K"}, logs)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(base + "/stream?url=" + u.URL + "/film.mp4")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	testsync.WaitFor(t, "the stream to block on the player", testsync.Stable(u.Served))
	if code := stop(); code != 0 { // as SIGTERM does, with the player reading nothing more
		t.Fatalf("exit %d after the signal", code)
	}
	// The stream ended at once, before mflow gave up waiting for it.
	if l := logs.String(); !strings.Contains(l, "stream end") {
		t.Errorf("mflow stopped before its stream ended:\n%s", l)
	}
	if _, err := io.Copy(io.Discard, resp.Body); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the player's connection ended with %v, want a reset: the shutdown drops what the sockets hold", err)
	}
}

func TestTheVersionNamesTheCommit(t *testing.T) {
	for want, settings := range map[string][]debug.BuildSetting{
		release + "-dev":                    nil, // go build -buildvcs=false
		release + "-dev+0123456789ab":       {{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "false"}},
		release + "-dev+0123456789ab-dirty": {{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}},
	} {
		if got := devVersion(settings); got != want {
			t.Errorf("devVersion(%v) = %q, want %q", settings, got, want)
		}
	}
}

func TestGetRefusesBadArgumentsWithOneLine(t *testing.T) {
	for args, says := range map[string]string{
		"get":                             "want one URL",
		"get ftp://h/f":                   "not an http or https URL",
		"get -c 0 http://h/f":             "--connections",
		"get --header nocolon http://h/f": "Name: value",
		"get http://h/a http://h/b":       "want one URL",
		"get --nonsense http://h/f":       "--nonsense",
	} {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), strings.Fields(args), nil, &stdout, &stderr)
		msg := stderr.String()
		if code != 2 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, says) || stdout.Len() != 0 {
			t.Errorf("%s: exit %d, stderr %q", args, code, msg)
		}
	}
	var stdout bytes.Buffer
	if code := run(t.Context(), []string{"get", "--help"}, nil, &stdout, io.Discard); code != 0 || !strings.Contains(stdout.String(), "--output") {
		t.Errorf("get --help: exit %d, %q", code, stdout.String())
	}
}

func TestGetNeverPrintsARawServerString(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Read(make([]byte, 4096))
				io.WriteString(c, "HTTP/1.1 404 \x1b]0;owned\x07\x1b[31mgone\r\nContent-Length: 0\r\n\r\n")
			}()
		}
	}()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"get", "-r", "0", "-o", filepath.Join(t.TempDir(), "f"), "http://" + ln.Addr().String() + "/f"}, nil, &stdout, &stderr)
	if code != 1 || strings.ContainsAny(stderr.String(), "\x1b\x07") || !strings.Contains(stderr.String(), `\x1b]0;owned\a`) {
		t.Errorf("exit %d, stderr %q: want the server's words escaped", code, stderr.String())
	}
}

func TestSettingsComeFromTheCommandLineTheEnvironmentAndTheFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mflow.conf")
	os.WriteFile(conf, []byte("# mflow on the NAS\nport=6800\nrpc-secret = fromfile\n\ncache=true\nallow-target=192.168.1.0/24\nconnections=3\n"), 0o600)
	env := map[string]string{"MFLOW_RPC_SECRET": "fromenv", "MFLOW_CONNECTIONS": "8"}
	o, _, err := parseFlags([]string{"--conf-path", conf, "-c", "2"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if o.Port != 6800 || o.RPCSecret != "fromenv" || o.Connections != 2 || !o.cache || len(o.allowTarget) != 1 || o.confRead != conf {
		t.Errorf("port %d (file), secret %q (the environment over the file), connections %d (the command line over both), cache %v, allow-target %v, read %q",
			o.Port, o.RPCSecret, o.Connections, o.cache, o.allowTarget, o.confRead)
	}
	// Without --conf-path: the user's configuration folder, or systemd's.
	xdg := filepath.Join(dir, "xdg")
	os.MkdirAll(filepath.Join(xdg, "mflow"), 0o700)
	os.WriteFile(filepath.Join(xdg, "mflow", "mflow.conf"), []byte("port=7000\n"), 0o600)
	for what, c := range map[string]struct {
		env  map[string]string
		port int
		read string
	}{
		"XDG_CONFIG_HOME":         {map[string]string{"XDG_CONFIG_HOME": xdg}, 7000, filepath.Join(xdg, "mflow", "mflow.conf")},
		"CONFIGURATION_DIRECTORY": {map[string]string{"XDG_CONFIG_HOME": xdg, "CONFIGURATION_DIRECTORY": dir}, 6800, conf},
		"MFLOW_CONF_PATH":         {map[string]string{"MFLOW_CONF_PATH": conf}, 6800, conf},
		"no file there":           {map[string]string{"HOME": filepath.Join(dir, "nobody")}, 80, ""},
	} {
		o, _, err := parseFlags(nil, c.env)
		if err != nil || o.Port != c.port || o.confRead != c.read {
			t.Errorf("%s: port %d, read %q, %v; want %d from %q", what, o.Port, o.confRead, err, c.port, c.read)
		}
	}
	// A systemd unit's cache folder is the disk cache's unless a setting says otherwise.
	if o, _, _ := parseFlags(nil, map[string]string{"CACHE_DIRECTORY": "/var/cache/mflow"}); o.cacheDir != "/var/cache/mflow" {
		t.Errorf("CACHE_DIRECTORY: --cache-dir %q", o.cacheDir)
	}
}

func TestABadSettingExitsTwoSayingWhereAndWhat(t *testing.T) {
	dir := t.TempDir()
	for content, says := range map[string]string{
		"port=6800\nprot=80\n": `:2: "prot" is not a setting of mflow; did you mean "port"?`,
		"port 80\n":            ":1: want name=value",
		"port=abc\n":           `:1: invalid argument "abc" for "-p, --port" flag: want a whole number`,
		"help=true\n":          `:1: "help" is not a setting`,
		"rpc-secrt=x\n":        `did you mean "rpc-secret"?`,
	} {
		conf := filepath.Join(dir, "bad.conf")
		os.WriteFile(conf, []byte(content), 0o600)
		var stderr bytes.Buffer
		code := run(t.Context(), []string{"--conf-path", conf}, nil, io.Discard, &stderr)
		if code != 2 || !strings.HasPrefix(stderr.String(), "mflow: "+conf) || !strings.Contains(stderr.String(), says) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%q: exit %d, %q; want 2 and %q", content, code, stderr.String(), says)
		}
	}
	var stderr bytes.Buffer
	if code := run(t.Context(), nil, map[string]string{"MFLOW_PORT": "x"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), `MFLOW_PORT="x"`) {
		t.Errorf("MFLOW_PORT=x: exit %d, %q", code, stderr.String())
	}
	if code := run(t.Context(), []string{"--conf-path", filepath.Join(dir, "missing.conf")}, nil, io.Discard, &stderr); code != 2 {
		t.Errorf("a --conf-path that is not there: exit %d", code)
	}
}

func TestAServiceUserKeepsItsTasksWhereSystemdSays(t *testing.T) {
	state := t.TempDir()
	logs := &testsync.SyncBuffer{}
	_, stop := startMflowWith(t, nil, map[string]string{"STATE_DIRECTORY": state}, logs)
	stop()
	if _, err := os.Stat(filepath.Join(state, "tasks.db")); err != nil || !strings.Contains(logs.String(), "tasks are kept in "+filepath.Join(state, "tasks.db")) {
		t.Errorf("STATE_DIRECTORY: %v; log:\n%s", err, logs.String())
	}
	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o600)
	nowhere := filepath.Join(t.TempDir(), "home", "mflow")
	for what, env := range map[string]map[string]string{"no home": {}, "a home mflow cannot use": {"HOME": notADir}, "a home nobody made": {"HOME": nowhere}} {
		var stderr bytes.Buffer
		code := run(t.Context(), []string{"--listen", "127.0.0.1", "-p", "0"}, env, io.Discard, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "--state-dir") || !strings.Contains(stderr.String(), "--in-memory") {
			t.Errorf("%s: exit %d, %q; want the flags that help", what, code, stderr.String())
		}
	}
	if _, err := os.Stat(nowhere); err == nil {
		t.Errorf("mflow made the home %s", nowhere)
	}
}

func TestTheSystemdUnitIsOneSystemdTakes(t *testing.T) {
	unit, err := os.ReadFile("../../contrib/systemd/mflow.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"DynamicUser=yes", "StateDirectory=mflow", "ConfigurationDirectory=mflow", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes"} {
		if !bytes.Contains(unit, []byte("\n"+line+"\n")) {
			t.Errorf("the unit lacks %s", line)
		}
	}
	if !bytes.Contains(unit, []byte("\nDocumentation=file:/usr/share/doc/mflow/README.md ")) || bytes.Contains(unit, []byte("pypi")) {
		t.Error("the unit's Documentation= names another project's pages, not mflow's")
	}
	analyze, err := exec.LookPath("systemd-analyze")
	testskip.Unless(t, err == nil, "systemd-analyze not installed, the service unit is not verified (bash .ci/e2e-deps)")
	// systemd checks that the program exists: the unit as installed, running this test's own binary.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mflow.service")
	os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/mflow"), []byte(self)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestAnInterruptedGetExits130(t *testing.T) {
	u := upstreamtest.New(upstreamtest.RandomFile(4<<20), upstreamtest.Options{PerConn: 256 << 10})
	defer u.Close()
	ctx, interrupt := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var stderr testsync.SyncBuffer
	go func() {
		done <- run(ctx, []string{"get", "-o", filepath.Join(t.TempDir(), "film.mp4"), u.URL + "/film.mp4"}, nil, io.Discard, &stderr)
	}()
	testsync.WaitFor(t, "the download to begin", func() bool { return u.Served() > 0 })
	interrupt() // as Ctrl-C does
	if code := <-done; code != 130 || !strings.Contains(stderr.String(), "run the same command again") {
		t.Errorf("exit %d, %q; want 130 and how to resume", code, stderr.String())
	}
}

func TestTheStartLineSaysWhoCanReachMflow(t *testing.T) {
	for _, c := range []struct {
		listen string
		o      options
		want   []string
	}{
		{"127.0.0.1:6800", options{}, []string{"Only players on this machine can reach mflow, at http://127.0.0.1:6800/stream (--listen 127.0.0.1)",
			"the JSON-RPC answers this machine only (--rpc-secret lets others in)", "no web page of another site"}},
		{"[::1]:6800", options{Config: app.Config{RPCSecret: "s"}}, []string{"Only players on this machine", "(--listen ::1)", "any client that sends the secret"}},
		{"0.0.0.0:6800", options{Config: app.Config{RPCListenAll: true}}, []string{"Players on this machine, the LAN and the internet can play through http://0.0.0.0:6800/stream",
			"any client, without a secret (--rpc-listen-all)"}},
		{"192.168.1.5:6800", options{Config: app.Config{RPCAllowOriginAll: true}}, []string{"Players that reach 192.168.1.5 can play through", "web pages of any site included (--rpc-allow-origin-all)"}},
	} {
		line := reach(c.o, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(c.listen)))
		for _, w := range c.want {
			if !strings.Contains(line, w) {
				t.Errorf("--listen %s: %q, want it to say %q", c.listen, line, w)
			}
		}
		host := netip.MustParseAddrPort(c.listen).Addr().String()
		if words := strings.ReplaceAll(line, host, ""); strings.Count(words, ".") != 1 || !strings.HasSuffix(words, ".") {
			t.Errorf("--listen %s: %q is not one sentence", c.listen, line)
		}
	}
}

func TestASecretOthersMayReadIsWarnedOf(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mflow.conf")
	for _, c := range []struct {
		mode    os.FileMode
		content string
		warned  bool
	}{
		{0o644, "port=6800\nrpc-secret=s3\n", true},
		{0o600, "port=6800\nrpc-secret=s3\n", false},
		{0o640, "rpc-secret = s3\n", false},
		{0o644, "port=6800\n", false},
		{0o644, "openlist=http://127.0.0.1:5244\nopenlist-token = t0k\n", true},
		{0o600, "openlist-token=t0k\n", false},
	} {
		if err := os.WriteFile(conf, []byte(c.content), c.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(conf, c.mode) // past the umask
		why := secretExposed(conf)
		if warned := why != ""; warned != c.warned || (warned && !strings.Contains(why, "chmod 600")) {
			t.Errorf("mode %04o, %q: %q", c.mode, c.content, why)
		}
	}
	var logs testsync.SyncBuffer
	os.WriteFile(conf, []byte("rpc-secret=s3\n"), 0o644)
	os.Chmod(conf, 0o644)
	_, stop := startMflow(t, []string{"--in-memory", "--conf-path", conf}, &logs)
	stop()
	if !strings.Contains(logs.String(), "every user of this machine may read it") {
		t.Errorf("no warning at start:\n%s", logs.String())
	}
}

func TestADrivesLimitComesFromTheFileTheEnvironmentAndTheFlag(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "mflow.conf")
	os.WriteFile(conf, []byte("drive=quark.cn=5,files.example.org=1\n"), 0o600)
	o, _, err := parseFlags([]string{"--conf-path", conf}, nil)
	if err != nil || len(o.drives) != 2 || o.drives[0].Suffix != "quark.cn" || o.drives[0].PerFile != 5 || o.drives[1].PerFile != 1 {
		t.Errorf("from the file: %+v %v", o.drives, err)
	}
	o, _, err = parseFlags(nil, map[string]string{"MFLOW_DRIVE": "115cdn.net=1"})
	if err != nil || len(o.drives) != 1 || o.drives[0].Suffix != "115cdn.net" {
		t.Errorf("from the environment: %+v %v", o.drives, err)
	}
	o, _, err = parseFlags([]string{"--drive", "a.example=3", "--drive", "b.example=4"}, nil)
	if err != nil || len(o.drives) != 2 || o.drives[1].PerFile != 4 {
		t.Errorf("repeated flags: %+v %v", o.drives, err)
	}
}

func TestOpenListsTokenComesFromTheEnvironmentAndIsNeverLogged(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--openlist", "http://127.0.0.1:5244"}, nil, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "--openlist-token") {
		t.Errorf("--openlist without a token: exit %d, %q", code, stderr.String())
	}
	conf := filepath.Join(t.TempDir(), "mflow.conf")
	os.WriteFile(conf, []byte("openlist = http://127.0.0.1:5244\nopenlist-token = fromfile\n"), 0o600)
	o, _, err := parseFlags([]string{"--conf-path", conf}, map[string]string{"MFLOW_OPENLIST_TOKEN": "fromenv"})
	if err != nil || o.OpenList.URL != "http://127.0.0.1:5244" || o.OpenList.Token != "fromenv" {
		t.Errorf("openlist %q, token %q (the environment over the file), %v", o.OpenList.URL, o.OpenList.Token, err)
	}
	var logs testsync.SyncBuffer
	base, stop := startMflowWith(t, []string{"--in-memory", "--log-level", "debug", "--openlist", "http://127.0.0.1:5244"}, map[string]string{"MFLOW_OPENLIST_TOKEN": "s3cr3t-token"}, &logs)
	resp, err := http.Get(base + "/openlist/f.mkv?sign=forged:0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	stop()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(logs.String(), "Download proxy URL") || strings.Contains(logs.String(), "s3cr3t-token") {
		t.Errorf("a forged sign: %d; the log:\n%s", resp.StatusCode, logs.String())
	}
}

func TestTheStartLineStatesTheMemoryBudget(t *testing.T) {
	var logs testsync.SyncBuffer
	_, stop := startMflow(t, []string{"--in-memory", "--max-memory", "96M"}, &logs)
	stop()
	if !strings.Contains(logs.String(), `memory="96M for buffers (--max-memory)"`) {
		t.Errorf("the start-up lines do not state the budget:\n%s", logs.String())
	}
}

func TestACacheLargerThanTheBudgetIsWarnedOf(t *testing.T) {
	for _, c := range []struct {
		args   string
		warned bool
	}{
		{"--cache --cache-size 1G", true}, // the default budget leaves it 192M
		{"--cache --cache-size 1G --max-memory 1500M", false},
		{"--cache --cache-size 128M", false},
		{"--cache-size 1G", false}, // no memory cache
		{"--cache --cache-size 1G --max-memory 0", false},
	} {
		o, _, err := parseFlags(strings.Fields(c.args), nil)
		if err != nil {
			t.Fatal(err)
		}
		if why := cacheBeyondBudget(o); (why != "") != c.warned || (c.warned && !strings.Contains(why, "raise --max-memory")) {
			t.Errorf("%s: %q", c.args, why)
		}
	}
}

func TestHelpSaysWhichSourceOfASettingWins(t *testing.T) {
	var stdout bytes.Buffer
	run(t.Context(), []string{"--help"}, nil, &stdout, io.Discard)
	help := strings.Join(strings.Fields(stdout.String()), " ")
	for _, want := range []string{"the first of: the command line; the environment", "MFLOW_RPC_SECRET", "the configuration file (--conf-path)", "the default", "mflow health"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help does not say %q", want)
		}
	}
}

func TestAMisspeltFlagOrVariableGetsADidYouMean(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--conections", "3"}, nil, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), `unknown flag: --conections; did you mean "connections"?`) {
		t.Errorf("--conections: exit %d, %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"--zzzzzz"}, nil, io.Discard, &stderr); code != 2 || strings.Contains(stderr.String(), "did you mean") {
		t.Errorf("--zzzzzz: exit %d, %q; nothing is close", code, stderr.String())
	}
	o, _, err := parseFlags(nil, map[string]string{"MFLOW_RPC_SECRT": "s", "MFLOW_QQQQQQQQ": "1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"MFLOW_QQQQQQQQ is set but is not a setting of mflow: it changes nothing",
		"MFLOW_RPC_SECRT is set but is not a setting of mflow: it changes nothing; did you mean MFLOW_RPC_SECRET?",
	}
	if !reflect.DeepEqual(o.unknownEnv, want) {
		t.Errorf("said %q, want %q", o.unknownEnv, want)
	}
}

func TestQuotesAroundAValueInTheFileAreTakenOff(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "mflow.conf")
	os.WriteFile(conf, []byte("rpc-secret=\"a b\"\nallow-host='nas.local'\nlisten=\"0.0.0.0\nreal-ip-header=X-Real-IP\n"), 0o600)
	o, _, err := parseFlags([]string{"--conf-path", conf}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.RPCSecret != "a b" || len(o.allowHosts) != 1 || o.allowHosts[0] != "nas.local" || o.listen != `"0.0.0.0` {
		t.Errorf("secret %q, allow-host %q, listen %q (an unpaired quote stays)", o.RPCSecret, o.allowHosts, o.listen)
	}
}

func TestLogLinesCarryTheDateAndCanBeJSON(t *testing.T) {
	var text, js testsync.SyncBuffer
	_, stop := startMflow(t, []string{"--in-memory"}, &text)
	stop()
	today := time.Now().Format("2006-01-02 ")
	for line := range strings.Lines(text.String()) {
		if !strings.HasPrefix(line, today) && !strings.HasPrefix(line, time.Now().Add(-time.Minute).Format("2006-01-02 ")) {
			t.Errorf("a line without its date: %q", line)
		}
	}
	_, stop = startMflow(t, []string{"--in-memory", "--log-format", "json"}, &js)
	stop()
	lines := 0
	for line := range strings.Lines(js.String()) {
		var entry struct{ Time, Level, Msg string }
		if err := json.Unmarshal([]byte(line), &entry); err != nil || entry.Msg == "" || entry.Level == "" || entry.Time == "" {
			t.Errorf("not a JSON log line: %q (%v)", line, err)
		}
		lines++
	}
	if lines < 2 {
		t.Errorf("--log-format json wrote %d lines", lines)
	}
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--log-format", "xml"}, nil, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "want text or json") {
		t.Errorf("--log-format xml: exit %d, %q", code, stderr.String())
	}
}

// TestOnlyMflowsOwnLinesAtStart runs this test binary as mflow, so every library mflow links is there, and
// finds no line in another form (as the metrics library's "disable exposing PSI metrics" was).
func TestOnlyMflowsOwnLinesAtStart(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "--in-memory", "--listen", "127.0.0.1", "-p", "0")
	cmd.Env = append(os.Environ(), "RUN_AS_MFLOW=1")
	var logs testsync.SyncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testsync.WaitFor(t, "mflow listening", func() bool { return strings.Contains(logs.String(), "mflow listening") })
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	for line := range strings.Lines(logs.String()) {
		if len(line) < 24 || line[4] != '-' || line[10] != ' ' || line[13] != ':' || !strings.Contains(" INF WRN ERR DBG ", line[23:28]) {
			t.Errorf("a line not in mflow's form: %q", line)
		}
	}
}

func TestTheStartLineNamesTheCache(t *testing.T) {
	dir := t.TempDir()
	for args, want := range map[string]string{
		"":                         `cache="none (--cache, --cache-dir)"`,
		"--cache --cache-size 64M": `cache="64M in memory"`,
		"--cache-dir " + dir + " --cache-dir-size 2G": `cache="2G on disk in ` + dir + `"`,
	} {
		var logs testsync.SyncBuffer
		_, stop := startMflow(t, append([]string{"--in-memory"}, strings.Fields(args)...), &logs)
		stop()
		if !strings.Contains(logs.String(), want) {
			t.Errorf("%s: the start-up lines do not say %s:\n%s", args, want, logs.String())
		}
	}
}

func TestTheHealthCheckAsksTheMflowItsSettingsDescribe(t *testing.T) {
	base, stop := startMflow(t, []string{"--in-memory"}, io.Discard)
	port := base[strings.LastIndex(base, ":")+1:]
	if code := run(t.Context(), []string{"health"}, map[string]string{"MFLOW_PORT": port}, io.Discard, io.Discard); code != 0 {
		t.Errorf("health of a running mflow: exit %d", code)
	}
	stop()
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"health", "-p", port}, nil, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "does not answer") {
		t.Errorf("health of a stopped mflow: exit %d, %q", code, stderr.String())
	}
}
