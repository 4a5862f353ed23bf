package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"mflow/internal/netns"
	"mflow/internal/testskip"
	"mflow/internal/testsync"
)

// TestEachClassOfClientReachesWhatItShould runs the mflow binary in a network namespace whose loopback
// carries, besides 127.0.0.1, an address of the internet (203.0.113.10) and of a LAN (100.64.9.9, carrier
// NAT), so clients of each class reach it over real sockets and nothing leaves the namespace. Targets
// listen on this machine's loopback, on the LAN (192.168.77.1) and on the internet (203.0.113.20).
func TestEachClassOfClientReachesWhatItShould(t *testing.T) {
	available := netns.Available()
	testskip.Unless(t, available == nil, fmt.Sprint(available, ", the client classes' test did not run (sudo go test ./internal/e2e)"))
	ns, err := netns.New("mflow-e2e")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for _, a := range []string{"203.0.113.10", "100.64.9.9", "192.168.77.1", "203.0.113.20"} {
		if err := ns.IP("addr", "add", a+"/32", "dev", "lo"); err != nil {
			t.Fatal(err)
		}
	}
	file := env.data[:1<<20]
	target := func(addr string) string {
		ln, err := ns.Listen("tcp", addr+":0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "film.mp4", time.Time{}, bytes.NewReader(file))
		})}}
		srv.Start()
		t.Cleanup(srv.Close)
		return srv.URL + "/film.mp4"
	}
	loopbackTarget, lanTarget, internetTarget := target("127.0.0.1"), target("192.168.77.1"), target("203.0.113.20")

	port := freePort()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	mflow := ns.Command(ctx, env.bin, "--port", strconv.Itoa(port), "--in-memory", "--rpc-secret", "s3", "-s", "256K")
	var logs testsync.SyncBuffer
	mflow.Stdout, mflow.Stderr = &logs, &logs
	if err := mflow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		interrupt(mflow)
		if t.Failed() {
			t.Logf("mflow's log:\n%s", logs.String())
		}
	}()
	clients := map[string]*http.Client{}
	for class, from := range map[string]string{"this machine": "127.0.0.1", "the LAN": "100.64.9.9", "the internet": "203.0.113.10"} {
		clients[class] = &http.Client{Transport: &http.Transport{DialContext: ns.Dialer(&net.TCPAddr{IP: net.ParseIP(from)})}}
		defer clients[class].CloseIdleConnections()
	}
	base := fmt.Sprintf("http://203.0.113.10:%d", port)
	ask := func(class, path string) (int, string) {
		resp, err := clients[class].Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	testsync.WaitFor(t, "mflow in the namespace", func() bool { status, _ := ask("this machine", "/"); return status == 200 })

	stream := func(u string) string { return "/stream?url=" + url.QueryEscape(u) }
	_, loopbackPort, _ := net.SplitHostPort(strings.TrimPrefix(strings.TrimSuffix(loopbackTarget, "/film.mp4"), "http://"))
	for _, c := range []struct {
		class, path string
		status      int
	}{
		{"this machine", stream(loopbackTarget), 200},
		{"this machine", stream(lanTarget), 200},
		{"the LAN", stream(lanTarget), 200},
		{"the LAN", stream(internetTarget), 200},
		{"the LAN", stream(loopbackTarget), 403}, // this machine's own services are its own
		{"the LAN", stream("http://localhost:" + loopbackPort + "/film.mp4"), 403},
		{"the internet", stream(internetTarget), 200},
		{"the internet", stream(lanTarget), 403},
		{"the internet", stream(loopbackTarget), 403},
		{"the internet", stream("http://[64:ff9b::7f00:1]:" + loopbackPort + "/film.mp4"), 403},  // NAT64 of 127.0.0.1
		{"the internet", stream("http://[2002:c0a8:4d01::]:" + loopbackPort + "/film.mp4"), 403}, // 6to4 of 192.168.77.1
		{"the internet", stream("http://[::127.0.0.1]:" + loopbackPort + "/film.mp4"), 403},
	} {
		status, body := ask(c.class, c.path)
		if status != c.status || (status == 200 && body != string(file)) {
			t.Errorf("a player on %s, %s: %d %.120q, want %d", c.class, c.path, status, body, c.status)
		}
	}

	// A task added on this machine: its whole GID plays for anyone, a prefix only for the JSON-RPC's clients.
	add := `{"jsonrpc":"2.0","id":"1","method":"aria2.addUri","params":["token:s3",["` + internetTarget + `"],{"header":["Cookie: owner=1"]}]}`
	resp, err := clients["this machine"].Post(base+"/jsonrpc", "", strings.NewReader(add))
	if err != nil {
		t.Fatal(err)
	}
	var added struct{ Result string }
	json.NewDecoder(resp.Body).Decode(&added)
	resp.Body.Close()
	gid := added.Result
	if len(gid) != 16 {
		t.Fatalf("addUri: %q", gid)
	}
	unknown := "0" + gid[1:3]
	if gid[0] == '0' {
		unknown = "1" + gid[1:3]
	}
	wantStatus, wantBody := ask("the internet", "/stream?gid="+unknown)
	for class, want := range map[string]int{"the internet": wantStatus, "the LAN": wantStatus, "this machine": 200} {
		status, body := ask(class, "/stream?gid="+gid[:3])
		if class != "this machine" && strings.Replace(body, gid[:3], unknown, 1) != wantBody {
			t.Errorf("a player on %s, a prefix: %q; an unknown GID is %q", class, body, wantBody)
		}
		if status != want {
			t.Errorf("a player on %s, a prefix: %d, want %d", class, status, want)
		}
		if status, body := ask(class, "/stream?gid="+gid); status != 200 || body != string(file) {
			t.Errorf("a player on %s, the whole GID: %d, %d bytes", class, status, len(body))
		}
	}
}
