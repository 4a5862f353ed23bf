package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"mflow/internal/testskip"
	"mflow/internal/testsync"
)

// upgradeMap and proxyLines are what the README's nginx configurations share: the WebSocket's upgrade,
// and how a request is passed to mflow.
const (
	upgradeMap = `map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
}
`
	proxyLines = `        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;         # the JSON-RPC's WebSocket
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;                    # the name the client asked for (mflow checks it)
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;   # who the client is
        proxy_buffering off;                            # bytes go to the player as mflow sends them
        proxy_read_timeout 1h;                          # mflow, not nginx, cuts a silent player (--player-timeout)
`
)

// balancerConf is the nginx configuration the README gives for several mflow instances, with the
// instances' addresses and nginx's port filled in. Players of one film (one gid, one url) reach one
// instance, so they share its downloads and its cache.
const balancerConf = upgradeMap + `upstream mflow {
    hash $arg_gid$arg_url consistent;
    server %s;
    server %s;
}
server {
    listen %d;
    location / {
        proxy_pass http://mflow;
` + proxyLines + `    }
}`

// vpsConf is the nginx configuration the README gives for one mflow on a VPS, with nginx's address and
// mflow's port filled in.
const vpsConf = upgradeMap + `server {
    listen %s;
    server_name media.example.com;
    location / {
        proxy_pass http://127.0.0.1:%d;
` + proxyLines + `    }
}`

// start runs a program for the test, its output in a log file in the test's folder, and stops it with
// SIGINT when the test ends.
func start(t *testing.T, name string, args ...string) string {
	t.Helper()
	logName := filepath.Join(t.TempDir(), filepath.Base(name)+".log")
	log, err := os.Create(logName)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		interrupt(cmd)
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logName)
			t.Logf("%s's log:\n%s", name, out)
		}
	})
	return logName
}

// interrupt stops a program as Ctrl-C would, and kills it if it has not stopped within 10 s.
func interrupt(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// startedStreams is what an instance's /metrics says of the streams it started.
func startedStreams(t *testing.T, base string) int {
	t.Helper()
	resp, err := http.Get(base + "/metrics?token=s3")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "mflow_streams_started_total "); ok {
			v, _ := strconv.Atoi(n)
			return v
		}
	}
	t.Fatalf("%s/metrics has no mflow_streams_started_total", base)
	return 0
}

func TestTwoInstancesBehindNginxAreOne(t *testing.T) {
	redisServer, err := exec.LookPath("redis-server")
	testskip.Unless(t, err == nil, "redis-server not installed, the several-instances tests did not run (bash .ci/e2e-deps)")
	redisPort := freePort()
	start(t, redisServer, "--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1", "--dir", t.TempDir(), "--save", "", "--appendonly", "no")
	var instances []string
	for range 2 {
		port := freePort()
		start(t, env.bin, "--listen", "127.0.0.1", "--port", strconv.Itoa(port), "-c", "4", "--log-level", "DEBUG",
			"--rpc-secret", "s3", "--redis", fmt.Sprintf("redis://127.0.0.1:%d/0", redisPort))
		instances = append(instances, "http://127.0.0.1:"+strconv.Itoa(port))
		if err := waitHTTP(instances[len(instances)-1] + "/"); err != nil {
			t.Fatal(err)
		}
	}
	nginxPort := freePort()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	conf := fmt.Sprintf("daemon off;\npid %[1]s/nginx.pid;\nerror_log %[1]s/error.log;\nevents {}\nhttp {\n  access_log off;\n"+
		"  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;\n%[2]s\n}\n",
		dir, fmt.Sprintf(balancerConf, strings.TrimPrefix(instances[0], "http://"), strings.TrimPrefix(instances[1], "http://"), nginxPort))
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, tools["nginx"], "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	front := "http://127.0.0.1:" + strconv.Itoa(nginxPort)
	if err := waitHTTP(front + "/"); err != nil {
		t.Fatal(err)
	}

	// A client connected through nginx hears of tasks added on either instance.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(front, "http")+"/jsonrpc", nil)
	if err != nil {
		t.Fatalf("the JSON-RPC's WebSocket through nginx: %v", err)
	}
	defer ws.CloseNow()
	// mflow listens for events before it reads the first call: once this one is answered, none is missed.
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":"ready","method":"aria2.getVersion","params":["token:s3"]}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.Read(ctx); err != nil {
		t.Fatal(err)
	}

	gids := map[string]string{}
	for i, base := range instances {
		_, reply := rpcPost(t, base+"/jsonrpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"aria2.addUri","params":["token:s3",[%q],{"out":"film%d.bin"}]}`, env.upstream+"/fast/data.bin", i))
		gid, _ := reply.(map[string]any)["result"].(string)
		if gid == "" {
			t.Fatalf("addUri on %s: %v", base, reply)
		}
		gids[gid] = base
	}
	heard := map[string]bool{}
	for len(heard) < len(gids) {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("heard %v through nginx, then: %v", heard, err)
		}
		if m := regexp.MustCompile(`"aria2.onDownloadStart","params":\[\{"gid":"([0-9a-f]{16})"`).FindSubmatch(msg); m != nil {
			heard[string(m[1])] = true
		}
	}

	// Each task plays through nginx, whichever instance added it; a film's players all reach one instance.
	played := 0
	for gid := range gids {
		played = 0
		before := [2]int{startedStreams(t, instances[0]), startedStreams(t, instances[1])}
		for _, rng := range []string{"bytes=0-999999", "bytes=5000000-", "bytes=123-4567"} {
			status, body, err := get(t, front+"/stream?gid="+gid, rng)
			var from, to int
			fmt.Sscanf(rng, "bytes=%d-%d", &from, &to)
			if to == 0 {
				to = len(env.data) - 1
			}
			if status != http.StatusPartialContent || err != nil || !bytes.Equal(body, env.data[from:to+1]) {
				t.Fatalf("gid %s %s through nginx: %d, %v, %d bytes", gid, rng, status, err, len(body))
			}
			played += len(body)
		}
		after := [2]int{startedStreams(t, instances[0]), startedStreams(t, instances[1])}
		// And straight from the instance that did not add it.
		other := instances[0]
		if other == gids[gid] {
			other = instances[1]
		}
		status, body, err := get(t, other+"/stream?gid="+gid, "bytes=100-199999")
		if status != http.StatusPartialContent || err != nil || !bytes.Equal(body, env.data[100:200000]) {
			t.Fatalf("gid %s from the instance that did not add it: %d, %v, %d bytes", gid, status, err, len(body))
		}
		played += len(body)
		if d0, d1 := after[0]-before[0], after[1]-before[1]; !(d0 == 3 && d1 == 0 || d0 == 0 && d1 == 3) {
			t.Errorf("the three plays of gid %s went %d to one instance and %d to the other; want all to one", gid, d0, d1)
		}
	}
	// A play's end reaches its task after the player has its last byte, and the other instance over Redis.
	testsync.WaitFor(t, "each task waiting again on both instances", func() bool {
		for _, base := range instances {
			for gid := range gids {
				_, reply := rpcPost(t, base+"/jsonrpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"aria2.tellStatus","params":["token:s3",%q,["status"]]}`, gid))
				if st, _ := reply.(map[string]any)["result"].(map[string]any); st["status"] != "waiting" {
					return false
				}
			}
		}
		return true
	})
	testsync.WaitFor(t, "each instance counting the plays of the other", func() bool {
		for _, base := range instances {
			for gid := range gids {
				_, reply := rpcPost(t, base+"/jsonrpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"aria2.tellStatus","params":["token:s3",%q,["completedLength"]]}`, gid))
				st, _ := reply.(map[string]any)["result"].(map[string]any)
				if st["completedLength"] != strconv.Itoa(played) {
					return false
				}
			}
		}
		return true
	})
}

func TestTheREADMEGivesTheTestedBalancer(t *testing.T) {
	for page, want := range map[string]string{
		"docs/instances.md": fmt.Sprintf(balancerConf, "192.168.1.11:6800", "192.168.1.12:6800", 80),
		"docs/security.md":  fmt.Sprintf(vpsConf, "80", 6800),
	} {
		text, err := os.ReadFile("../../" + page)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(text), want) {
			t.Errorf("the nginx configuration %s gives is not the one tested here:\n%s", page, want)
		}
	}
}
