package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"mflow/internal/app"
	"mflow/internal/testskip"
	"mflow/internal/testsync"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) {
	redis.SetLogger(debugLog{quiet()}) // go-redis' dial errors, expected while Redis is stopped
	goleak.VerifyTestMain(m)
}

// redisServer is a real redis-server on a free loopback port, in a folder of its own; what it holds
// survives a restart, as a production Redis' would.
type redisServer struct {
	port int
	dir  string
	cmd  *exec.Cmd
}

// startRedis starts a redis-server for the test and stops it when the test ends. Without redis-server the
// test is skipped, except under CI, where that is a failure (.ci/e2e-deps installs it).
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	_, err := exec.LookPath("redis-server")
	testskip.Unless(t, err == nil, "redis-server not installed, the Redis tests did not run (bash .ci/e2e-deps)")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &redisServer{port: ln.Addr().(*net.TCPAddr).Port, dir: t.TempDir()}
	ln.Close()
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

func (r *redisServer) start(t *testing.T) {
	t.Helper()
	r.cmd = exec.Command("redis-server", "--port", fmt.Sprint(r.port), "--bind", "127.0.0.1", "--dir", r.dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always")
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := r.client()
	defer c.Close()
	testsync.WaitFor(t, "redis-server answering", func() bool { return c.Ping(context.Background()).Err() == nil })
}

func (r *redisServer) stop() {
	if r.cmd != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// client is a client of r's, as --redis makes it.
func (r *redisServer) client() *redis.Client {
	c, err := Connect(fmt.Sprintf("redis://127.0.0.1:%d/0", r.port), quiet())
	if err != nil {
		panic(err)
	}
	return c
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestTheBudgetHoldsAcrossInstances(t *testing.T) {
	rs := startRedis(t)
	// Each request waits for its first byte and is paced, so the two players' requests overlap.
	file := upstreamtest.RandomFile(3 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 2 << 20, Latency: 20 * time.Millisecond})
	defer u.Close()
	var players []*httptest.Server
	for range 2 { // two instances, each allowed 16 connections of its own, sharing a budget of 4
		rdb := rs.client()
		defer rdb.Close()
		budget := NewBudget(rdb, 4, 0, quiet())
		defer budget.Close()
		mflow, err := app.New(app.Config{Connections: 4, ChunkSize: 256 << 10, Retry: 3, MaxRedirects: 3, HostConnections: 16,
			Shared: budget, Version: "test", Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		defer mflow.Close()
		srv := httptest.NewServer(mflow.Handler)
		defer srv.Close()
		players = append(players, srv)
	}
	var wg sync.WaitGroup
	for i, srv := range players {
		wg.Go(func() {
			resp, err := http.Get(srv.URL + "/stream?url=" + url.QueryEscape(fmt.Sprintf("%s/film%d.mp4", u.URL, i)))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if !bytes.Equal(got, file) {
				t.Errorf("player %d got %d wrong bytes", i, len(got))
			}
		})
	}
	wg.Wait()
	http.DefaultClient.CloseIdleConnections()
	if n := u.MaxOpen(); n > 4 || n < 2 {
		t.Errorf("the upstream had %d requests open at once; the shared budget is 4", n)
	}
}

func TestACrashedInstancesConnectionsComeBack(t *testing.T) {
	rs := startRedis(t)
	rdb := rs.client()
	defer rdb.Close()
	crashed := NewBudget(rdb, 4, 600*time.Millisecond, quiet())
	for range 4 {
		if _, err := crashed.Acquire(t.Context(), "drive.example:443"); err != nil {
			t.Fatal(err)
		}
	}
	// It dies: no renewal, no release.
	close(crashed.stop)
	<-crashed.stopped
	if n := rdb.ZCard(t.Context(), keyPrefix+"drive.example:443").Val(); n != 4 {
		t.Fatalf("%d leases held, want 4: the budget is full", n)
	}
	other := NewBudget(rdb, 4, 0, quiet())
	defer other.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	release, err := other.Acquire(ctx, "drive.example:443")
	if err != nil {
		t.Fatalf("a connection was not given back after the crashed instance's leases expired: %v", err)
	}
	release()
}

func TestRedisGoingAwayLeavesTheBudgetLocal(t *testing.T) {
	rs := startRedis(t)
	rdb := rs.client()
	defer rdb.Close()
	var logs testsync.SyncBuffer
	b := NewBudget(rdb, 4, 0, slog.New(slog.NewTextHandler(&logs, nil)))
	defer b.Close()
	rs.stop()
	for range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		release, err := b.Acquire(ctx, "h:80")
		cancel()
		if err != nil {
			t.Fatalf("with Redis gone, Acquire: %v; want the stream to go on", err)
		}
		release()
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d WARN lines for one outage, want 1:\n%s", n, logs.String())
	}
	rs.start(t) // back, on the same port: the client reconnects by itself
	release, err := b.Acquire(t.Context(), "h:80")
	if err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(t.Context(), keyPrefix+"h:80").Val(); n != 1 {
		t.Errorf("after Redis came back, %d leases in it, want 1", n)
	}
	release()
	if !strings.Contains(logs.String(), "answers again") {
		t.Errorf("the end of the outage is not logged:\n%s", logs.String())
	}
}
