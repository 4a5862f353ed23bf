package server_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"mflow/internal/access"
	"mflow/internal/link"
	"mflow/internal/server"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

// guarded is a proxy whose upstream client applies policy.
func guarded(t *testing.T, policy *access.Policy) *proxy {
	return newProxy(t, func(s *server.Server) {
		c := upstream.NewClient(upstream.Config{HeaderTimeout: time.Second, MaxRedirects: 3, UserAgent: "mflow-test", Policy: policy})
		t.Cleanup(c.CloseIdleConnections)
		s.Play.Engine.Client = c
		s.Play.Resolver = resolver(s, link.Config{})
	})
}

// playAs asks the proxy's handler for target as a player at remote would.
func playAs(p *proxy, remote, target string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", "/stream?url="+url.QueryEscape(target), nil)
	req.RemoteAddr, req.Host = remote, "localhost:6800"
	w := httptest.NewRecorder()
	p.srv.Handler().ServeHTTP(w, req)
	return w
}

const (
	internetPlayer = "203.0.113.7:40000"
	lanPlayer      = "192.168.1.9:40000"
	localPlayer    = "127.0.0.1:40000"
)

func TestAPlayerCannotReachWhatItCouldNotReachItself(t *testing.T) {
	file := upstreamtest.RandomFile(100_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	port := strings.TrimPrefix(u.URL, "http://127.0.0.1:")
	p := guarded(t, &access.Policy{})
	for _, player := range []string{internetPlayer, lanPlayer} {
		for _, target := range []string{u.URL + "/f", "http://localhost:" + port + "/f", "http://[::ffff:127.0.0.1]:" + port + "/f",
			"http://[64:ff9b::7f00:1]:" + port + "/f", "http://[2002:7f00:1::]:" + port + "/f", "http://[::127.0.0.1]:" + port + "/f"} {
			w := playAs(p, player, target)
			if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "mflow: target refused by policy") {
				t.Errorf("a player at %s, %s: %d %q, want 403 refused by policy", player, target, w.Code, w.Body)
			}
		}
	}
	if n := u.Requests(); n != 0 {
		t.Errorf("the loopback upstream got %d requests from players elsewhere", n)
	}
	if w := playAs(p, localPlayer, u.URL+"/f"); w.Code != 200 || w.Body.Len() != len(file) {
		t.Errorf("a player on this machine: %d, %d bytes", w.Code, w.Body.Len())
	}
	// --allow-target opens this machine's services to players elsewhere.
	open := guarded(t, &access.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if w := playAs(open, lanPlayer, u.URL+"/f"); w.Code != 200 || w.Body.Len() != len(file) {
		t.Errorf("a LAN player with --allow-target 127.0.0.1: %d, %d bytes", w.Code, w.Body.Len())
	}
	for _, target := range []string{"http://169.254.169.254/latest/meta-data/", "http://0.0.0.0:" + port + "/f", "http://[fe80::1]/f"} {
		if w := playAs(p, localPlayer, target); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "refused by policy") {
			t.Errorf("even a local player, %s: %d %q", target, w.Code, w.Body)
		}
	}
}

func TestARedirectCannotLeadInside(t *testing.T) {
	inside := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{})
	defer inside.Close()
	l, err := net.Listen("tcp", "127.0.0.2:0") // an address the policy lets every player reach
	if err != nil {
		t.Fatalf("listening on the loopback alias 127.0.0.2: %v", err)
	}
	redirector := httptest.NewUnstartedServer(http.RedirectHandler(inside.URL+"/f", http.StatusFound))
	redirector.Listener.Close()
	redirector.Listener = l
	redirector.Start()
	defer redirector.Close()
	p := guarded(t, &access.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	if w := playAs(p, internetPlayer, redirector.URL+"/go"); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "127.0.0.1") {
		t.Errorf("a redirect inside: %d %q, want 403 naming the address", w.Code, w.Body)
	}
	if inside.Requests() != 0 {
		t.Errorf("the inside upstream got %d requests", inside.Requests())
	}
}

func TestMflowNeverFetchesFromItself(t *testing.T) {
	var p *proxy
	policy := &access.Policy{}
	p = guarded(t, policy)
	policy.Own = []netip.AddrPort{netip.MustParseAddrPort(strings.TrimPrefix(p.URL, "http://"))}
	if w := playAs(p, localPlayer, p.URL+"/stream?url=http://example.com/f"); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "own address") {
		t.Errorf("a loop through mflow: %d %q", w.Code, w.Body)
	}
}

func TestStreamsAreBounded(t *testing.T) {
	u := upstreamtest.New(upstreamtest.RandomFile(8<<20), upstreamtest.Options{PerConn: 256 << 10})
	defer u.Close()
	p := newProxy(t, func(s *server.Server) { s.MaxStreams = 1 })
	resp, err := p.player.Get(p.URL + streamPath(u.URL+"/f"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	second, body := p.get(t, "GET", streamPath(u.URL+"/f"), "")
	if second.StatusCode != http.StatusServiceUnavailable || second.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "--max-streams") {
		t.Errorf("a second stream over --max-streams 1: %d %q", second.StatusCode, body)
	}
}

func TestStreamedBytesAreNeverAPageOfMflow(t *testing.T) {
	page := upstreamtest.New([]byte("<script>fetch('/jsonrpc')</script>"), upstreamtest.Options{})
	defer page.Close()
	resp, _ := newProxy(t, nil).get(t, "GET", streamPath(page.URL+"/x.html"), "")
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Content-Security-Policy") != "sandbox" {
		t.Errorf("headers %v", resp.Header)
	}
}
