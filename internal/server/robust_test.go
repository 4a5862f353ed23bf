package server_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mflow/internal/link"
	"mflow/internal/testsync"

	"mflow/internal/access"
	"mflow/internal/server"
	"mflow/internal/task"
	"mflow/internal/upstreamtest"
)

func TestALyingSizeIsRefusedAndFreezesNothing(t *testing.T) {
	liar := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{ClaimSize: 1<<63 - 1}
	}})
	defer liar.Close()
	honest := upstreamtest.New(upstreamtest.RandomFile(300_000), upstreamtest.Options{})
	defer honest.Close()
	p := newProxy(t, nil)
	for _, rng := range []string{"bytes=-1", "", "bytes=100-"} { // an MP4 index lookup, a play, a seek
		resp, body := p.get(t, "GET", streamPath(liar.URL+"/f"), rng)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "2^53") {
			t.Errorf("Range %q: %d %q, want 502 saying the size is beyond the maximum", rng, resp.StatusCode, body)
		}
	}
	resp, body := p.get(t, "GET", streamPath(honest.URL+"/f"), "")
	if resp.StatusCode != 200 || !bytes.Equal(body, honest.Content) {
		t.Fatalf("the next stream: %d, %d bytes", resp.StatusCode, len(body))
	}
}

func TestAFirstPlayIsOneRoundTrip(t *testing.T) {
	file := upstreamtest.RandomFile(3 << 16) // three 64 KiB chunks
	var mu sync.Mutex
	var ranges []string
	u := upstreamtest.New(file, upstreamtest.Options{Latency: 20 * time.Millisecond, Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
		mu.Lock()
		defer mu.Unlock()
		ranges = append(ranges, r.Header.Get("Range"))
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	resp, body := newProxy(t, nil).get(t, "GET", streamPath(u.URL+"/f"), "bytes=70000-")
	if resp.StatusCode != 206 || !bytes.Equal(body, file[70000:]) {
		t.Fatalf("%d, %d bytes", resp.StatusCode, len(body))
	}
	mu.Lock()
	defer mu.Unlock()
	// The probe asks for the player's first piece, and its answer is what the player gets first: no
	// separate probe, and no second request for that piece.
	if len(ranges) != 2 || ranges[0] != "bytes=70000-131071" || ranges[1] != "bytes=131072-196607" {
		t.Errorf("upstream requests %q, want the first piece (the probe) and the next chunk", ranges)
	}
}

func TestAProbeIsRetriedLikeAChunk(t *testing.T) {
	file := upstreamtest.RandomFile(200_000)
	for name, fault := range map[string]upstreamtest.Fault{
		"503":   {Status: http.StatusServiceUnavailable},
		"reset": {ResetAfter: 10},
		"gzip":  {Gzip: true},
		"stall": {StallAfter: 1},
	} {
		t.Run(name, func(t *testing.T) {
			u := upstreamtest.New(file, upstreamtest.Options{Fault: func(n int64, _ *http.Request) upstreamtest.Fault {
				if n == 1 {
					return fault
				}
				return upstreamtest.Fault{}
			}})
			defer u.Close()
			p := newProxy(t, func(s *server.Server) { s.Play.Engine.StallTimeout = 200 * time.Millisecond })
			resp, body := p.get(t, "GET", streamPath(u.URL+"/f"), "")
			if resp.StatusCode != 200 || !bytes.Equal(body, file) {
				t.Fatalf("%d, %d bytes: one failed probe failed the play", resp.StatusCode, len(body))
			}
		})
	}
}

func TestEveryFailedPlayLogsOneWarning(t *testing.T) {
	gone := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusNotFound}
	}})
	defer gone.Close()
	logs := &testsync.SyncBuffer{}
	p := newProxy(t, func(s *server.Server) { s.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	p.get(t, "GET", streamPath(gone.URL+"/f?sig=secret"), "")
	l := logs.String()
	if strings.Count(l, "level=WARN") != 1 || !strings.Contains(l, "status=404") || !strings.Contains(l, "play failed") || strings.Contains(l, "secret") {
		t.Errorf("log of a failed probe:\n%s", l)
	}
}

func TestPausingATaskCutsItsPlayingStream(t *testing.T) {
	file := upstreamtest.RandomFile(32 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	var gid string
	logs := &testsync.SyncBuffer{}
	p := newProxy(t, func(s *server.Server) {
		s.Logger = slog.New(slog.NewTextHandler(logs, nil))
		s.Tasks = newStore(t, s.Play.Resolver)
		gid, _ = s.Tasks.Add(task.Addition{URIs: []string{u.URL + "/film.mp4"}, Position: -1, From: access.Loopback})
	})
	for i, stop := range []string{"pause", "remove"} {
		t.Run(stop, func(t *testing.T) {
			resp, err := p.player.Get(p.URL + "/stream?gid=" + gid)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if _, err := io.ReadFull(resp.Body, make([]byte, 1<<10)); err != nil {
				t.Fatal(err)
			}
			// The player stops reading: once the sockets' buffers are full, mflow's write to it blocks and
			// the upstream goes quiet.
			testsync.WaitFor(t, "the stream to block on the player", testsync.Stable(u.Served))
			if stop == "pause" {
				_, err = p.srv.Tasks.Pause(gid)
			} else {
				_, err = p.srv.Tasks.Remove(gid)
			}
			if err != nil {
				t.Fatal(err)
			}
			// The stream must end while the player still reads nothing.
			testsync.WaitFor(t, "the stream to end on "+stop, func() bool { return strings.Count(logs.String(), "task paused or removed") > i })
			if n, err := io.Copy(io.Discard, resp.Body); err == nil {
				t.Errorf("the player got a clean end after %d more bytes", n)
			}
			testsync.WaitFor(t, "no upstream request open", func() bool { return u.Open() == 0 })
			if stop == "pause" {
				p.srv.Tasks.Unpause(gid)
			}
		})
	}
}

// TestFaultSoak plays random ranges through an upstream that injects a fault into a quarter of all
// requests, the probe included: every play must be byte-exact, or cut before its end. A clean end with a
// wrong byte, or a hang, fails it.
func TestFaultSoak(t *testing.T) {
	file := upstreamtest.RandomFile(1 << 20)
	// Faults a retry gets past, on a quarter of all requests.
	faults := []upstreamtest.Fault{
		{Status: http.StatusServiceUnavailable},
		{Status: http.StatusTooManyRequests, RetryAfter: "0"},
		{Status: http.StatusInternalServerError},
		{ResetAfter: 5000},
		{StallAfter: 3000},
		{Whole: true},
		{Shift: 333},
		{Gzip: true},
		{Latency: 100 * time.Millisecond},
	}
	// Answers of another version (a lying size, another ETag) end a play, cut: rarer, as files rarely change.
	lies := []upstreamtest.Fault{{ClaimSize: 1 << 62}, {ETag: `"another"`}}
	var mu sync.Mutex
	dice := rand.New(rand.NewPCG(20, 26))
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 16 << 20, Fault: func(int64, *http.Request) upstreamtest.Fault {
		mu.Lock()
		defer mu.Unlock()
		switch x := dice.Float64(); {
		case x < 0.25:
			return faults[dice.IntN(len(faults))]
		case x < 0.253:
			return lies[dice.IntN(len(lies))]
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	p := newProxy(t, func(s *server.Server) {
		s.Play.Engine.StallTimeout = 300 * time.Millisecond
		s.Play.Resolver = resolver(s, link.Config{StallTimeout: 300 * time.Millisecond, TTL: -1}) // every play probes, so the probe meets the faults too
	})
	r := rand.New(rand.NewPCG(1, 50))
	size := int64(len(file))
	exact, cut := 0, 0
	for i := range 50 {
		a := r.Int64N(size)
		b := a + r.Int64N(size-a)
		rng := fmt.Sprintf("bytes=%d-%d", a, b)
		req, _ := http.NewRequestWithContext(t.Context(), "GET", p.URL+streamPath(u.URL+"/f"), nil)
		req.Header.Set("Range", rng)
		resp, err := p.player.Do(req)
		if err != nil {
			cut++
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			cut++ // cut before its end: the player knows it is incomplete
		case resp.StatusCode >= 400:
			cut++ // refused with a reason, no bytes claimed
		case resp.StatusCode != 206 || resp.Header.Get("Content-Length") != strconv.Itoa(len(body)):
			t.Fatalf("play %d (%s): status %d, Content-Length %s, %d bytes", i, rng, resp.StatusCode, resp.Header.Get("Content-Length"), len(body))
		case !bytes.Equal(body, file[a:b+1]):
			t.Fatalf("play %d (%s): a clean end with wrong bytes", i, rng)
		default:
			exact++
		}
	}
	t.Logf("%d plays byte-exact, %d cut or refused, over %d upstream requests", exact, cut, u.Requests())
	if exact < 40 {
		t.Errorf("only %d of 50 plays succeeded: retries should carry most plays through a quarter of faults", exact)
	}
}

// TestAFlakyDriveFailsNoPlayItCouldServe plays a film for the first time, again and again, through a drive
// that fails one request in two: resets mid-body, 503s, a whole-file 200 to a Range request (as a CDN on
// a cache miss, saying Accept-Ranges: bytes), a range that starts a byte early. Every play must be exact:
// a 200 to the probe is a fault to retry, and an attempt that brought bytes is progress, not a spent retry.
func TestAFlakyDriveFailsNoPlayItCouldServe(t *testing.T) {
	file := upstreamtest.RandomFile(4 << 20) // 16 chunks, as 8 MiB at -s 512K
	var mu sync.Mutex
	dice := rand.New(rand.NewPCG(23, 1))
	u := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		mu.Lock()
		defer mu.Unlock()
		switch x := dice.Float64(); {
		case x < 0.25:
			return upstreamtest.Fault{ResetAfter: 1 + dice.Int64N(200_000)}
		case x < 0.40:
			return upstreamtest.Fault{Status: http.StatusServiceUnavailable}
		case x < 0.50:
			return upstreamtest.Fault{Whole: true}
		case x < 0.60:
			return upstreamtest.Fault{Shift: -1}
		}
		return upstreamtest.Fault{}
	}})
	defer u.Close()
	logs := &testsync.SyncBuffer{}
	p := newProxy(t, func(s *server.Server) {
		s.Play.Engine.ChunkSize = 256 << 10
		s.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	for i := range 100 {
		resp, body := p.get(t, "GET", streamPath(fmt.Sprintf("%s/film.mp4?play=%d", u.URL, i)), "")
		if resp.StatusCode != 200 || !bytes.Equal(body, file) {
			t.Fatalf("first play %d of 100: %d, %d bytes %.200q\n%s", i, resp.StatusCode, len(body), body, logs.String())
		}
	}
}
