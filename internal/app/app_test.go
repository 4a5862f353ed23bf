package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"mflow/internal/app"
	"mflow/internal/chunkcache"
	"mflow/internal/status"
	"mflow/internal/task"
	"mflow/internal/testsync"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs mflow as cfg says (with tasks in memory, quiet) until the test ends.
func serve(t *testing.T, cfg app.Config) *httptest.Server {
	t.Helper()
	cfg.Retry, cfg.MaxRedirects, cfg.HostConnections = 3, 3, 16
	var logs testsync.SyncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	cfg.Tasks, cfg.Version, cfg.Logger = task.NewMemory(), "test", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mflow, err := app.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mflow.Handler)
	t.Cleanup(func() {
		srv.Close()
		http.DefaultClient.CloseIdleConnections()
		mflow.Close()
	})
	return srv
}

// scrape reads /metrics into series → value, and checks every mflow_ family has HELP text and a TYPE.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("/metrics: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	out := map[string]float64{}
	helped, typed := map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# HELP mflow_"):
			f := strings.Fields(line)
			if helped[f[2]] || len(f) < 4 {
				t.Errorf("HELP twice or without text: %q", line)
			}
			helped[f[2]] = true
		case strings.HasPrefix(line, "# TYPE mflow_"):
			typed[strings.Fields(line)[2]] = true
		case strings.HasPrefix(line, "mflow_"):
			name, value, _ := strings.Cut(line, " ")
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Errorf("bad sample %q", line)
			}
			out[name] = v
			family := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(strings.SplitN(name, "{", 2)[0], "_bucket"), "_sum"), "_count")
			if !helped[family] || !typed[family] {
				t.Errorf("series %s has no HELP or TYPE before it", name)
			}
		}
	}
	return out
}

func TestMetricsCountWhatAStreamDid(t *testing.T) {
	file := upstreamtest.RandomFile(1 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	memory := chunkcache.NewMemory(16 << 20)
	srv := serve(t, app.Config{Connections: 4, ChunkSize: 64 << 10, Memory: memory, Tasks: task.NewMemory()})

	before := scrape(t, srv.URL)
	if before["mflow_tasks_available"] != 1 {
		t.Errorf("mflow_tasks_available %v with the embedded store, want 1", before["mflow_tasks_available"])
	}
	play := func() {
		resp, err := http.Get(srv.URL + "/stream?url=" + url.QueryEscape(u.URL+"/film.mp4"))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n != 1<<20 {
			t.Fatalf("played %d bytes", n)
		}
	}
	play()
	after := scrape(t, srv.URL)
	moved := func(name string) float64 { return after[name] - before[name] }
	requests := u.Requests()
	for name, want := range map[string]float64{
		"mflow_player_bytes_total":                    1 << 20,
		"mflow_upstream_bytes_total":                  1 << 20,
		"mflow_streams_started_total":                 1,
		`mflow_upstream_requests_total{outcome="ok"}`: float64(requests),
		`mflow_upstream_responses_total{class="2xx"}`: float64(requests),
		"mflow_upstream_first_byte_seconds_count":     float64(requests),
		"mflow_upstream_request_seconds_count":        float64(requests),
		`mflow_cache_misses_total{tier="memory"}`:     16, // each of the 16 chunks looked up once
	} {
		if got := moved(name); got != want {
			t.Errorf("%s moved by %v, want %v", name, got, want)
		}
	}
	if after["mflow_streams_active"] != 0 || after["mflow_upstream_host_connections_limit"] != 16 || after[`mflow_tasks{status="waiting"}`] != 0 {
		t.Errorf("gauges after the stream: %v active, limit %v, %v tasks waiting", after["mflow_streams_active"], after["mflow_upstream_host_connections_limit"], after[`mflow_tasks{status="waiting"}`])
	}

	play() // again: every chunk from the cache, no upstream request
	again := scrape(t, srv.URL)
	if hits := again[`mflow_cache_hits_total{tier="memory"}`] - after[`mflow_cache_hits_total{tier="memory"}`]; hits != 16 {
		t.Errorf("a replay hit the cache %v times, want 16", hits)
	}
	if got := again["mflow_upstream_bytes_total"] - after["mflow_upstream_bytes_total"]; got >= 1<<20 {
		t.Errorf("a cached replay took %v bytes from the upstream", got)
	}
	for name := range again {
		if strings.Contains(name, "127.0.0.1") || strings.Contains(name, "film") {
			t.Errorf("a label names a link: %s", name)
		}
	}
}

func TestTheStatusShowsAStreamAsItPlays(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 256 << 10})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 2, ChunkSize: 256 << 10})

	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/stream?url="+url.QueryEscape(u.URL+"/film.mp4?sig=secret"), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	go io.Copy(io.Discard, resp.Body)
	var st status.Status
	testsync.WaitFor(t, "the stream with a request reading on /status.json", func() bool {
		r, err := http.Get(srv.URL + "/status.json")
		if err != nil {
			return false
		}
		defer r.Body.Close()
		st = status.Status{}
		return json.NewDecoder(r.Body).Decode(&st) == nil && len(st.Streams) == 1 && len(st.Streams[0].Requests) > 0 &&
			st.Streams[0].Requests[0].State == "reading" && st.Streams[0].Requests[0].Speed > 0
	})
	s := st.Streams[0]
	if s.Name != "film.mp4" || strings.Contains(s.URL, "secret") || s.Range != "0-2097151/2097152" || st.Version != "test" || st.Connections.PerHostLimit != 16 {
		t.Errorf("status: %+v", st)
	}
	page, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if !strings.Contains(string(body), "status.json") || strings.Contains(string(body), `src="http`) || strings.Contains(string(body), `href="http`) {
		t.Errorf("the page does not read status.json, or loads something from outside")
	}
}

func TestFailedPlaysAreListedAndCounted(t *testing.T) {
	gone := upstreamtest.New(upstreamtest.RandomFile(1000), upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusNotFound}
	}})
	defer gone.Close()
	srv := serve(t, app.Config{Connections: 2, ChunkSize: 64 << 10})
	for i := range 25 {
		resp, err := http.Get(srv.URL + "/stream?url=" + url.QueryEscape(fmt.Sprintf("%s/film%d.mp4?sig=secret", gone.URL, i)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if resp, err := http.Get(srv.URL + "/stream?gid=0123456789abcdef"); err == nil { // an unknown task: a play that fails too
		resp.Body.Close()
	}
	r, err := http.Get(srv.URL + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var st status.Status
	err = json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	if err != nil || len(st.FailedPlays) < 20 {
		t.Fatalf("%d failed plays listed, %v: want the last 20 at least", len(st.FailedPlays), err)
	}
	newest, last := st.FailedPlays[0], st.FailedPlays[1]
	if newest.Task != "0123456789abcdef" || newest.Status != 404 || !strings.Contains(newest.Reason, "no such task") {
		t.Errorf("the newest failed play: %+v", newest)
	}
	if last.File != gone.URL+"/film24.mp4?…" || last.Status != 404 || !strings.Contains(last.Reason, "404") || !strings.HasPrefix(last.Player, "127.0.0.1:") || last.At.IsZero() {
		t.Errorf("the play before it: %+v", last)
	}
	if m := scrape(t, srv.URL); m[`mflow_plays_failed_total{status="404"}`] != 26 {
		t.Errorf("mflow_plays_failed_total{status=\"404\"} = %v, want 26", m[`mflow_plays_failed_total{status="404"}`])
	}
}

func TestATaskPlayedTwiceShowsNoMoreThanItsSize(t *testing.T) {
	file := upstreamtest.RandomFile(300_000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 2, ChunkSize: 64 << 10})
	gid := addTask(t, srv.URL, "", u.URL+"/film.mp4")
	for range 2 {
		if status, body := ask(t, srv.URL, "GET", "/stream?gid="+gid, "", "", nil); status != 200 || body != string(file) {
			t.Fatalf("play: %d, %d bytes", status, len(body))
		}
	}
	_, body := ask(t, srv.URL, "GET", "/status.json", "", "", nil)
	var st status.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Tasks) != 1 {
		t.Fatalf("status %s: %v", body, err)
	}
	if tk := st.Tasks[0]; tk.Size != int64(len(file)) || tk.Played != tk.Size {
		t.Errorf("a task of %d bytes played twice shows %d played, want its size", tk.Size, tk.Played)
	}
}

func TestADrivesLimitIsShownWhereUsersLook(t *testing.T) {
	file := upstreamtest.RandomFile(4 << 20)
	lim := &upstreamtest.DriveLimit{PerFile: 2, Refuse: http.StatusForbidden}
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 8 << 20, Limit: lim})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 4, ChunkSize: 256 << 10})
	resp, err := http.Get(srv.URL + "/stream?url=" + url.QueryEscape(u.URL+"/film.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, file) {
		t.Fatalf("played %d bytes of a drive that allows 2 connections, not the file", len(got))
	}
	if lim.Refused() > 2 || lim.MaxServing() > 2 {
		t.Errorf("%d refusals, %d served at once", lim.Refused(), lim.MaxServing())
	}
	var st struct {
		Drives []struct {
			Drive      string
			Limit      int
			Learned    bool
			Refusals   int
			LastStatus int `json:"last_status"`
		}
	}
	status, body := ask(t, srv.URL, "GET", "/status.json", "", "", nil)
	if err := json.Unmarshal([]byte(body), &st); status != 200 || err != nil || len(st.Drives) != 1 {
		t.Fatalf("/status.json: %d %v %.300s", status, err, body)
	}
	if d := st.Drives[0]; d.Drive != "127.0.0.1" || d.Limit != 2 || !d.Learned || d.Refusals != lim.Refused() || (d.Refusals > 0 && d.LastStatus != 403) {
		t.Errorf("the status page's drive: %+v; the drive refused %d", d, lim.Refused())
	}
	m := scrape(t, srv.URL)
	if m[`mflow_drive_refusals_total{drive="127.0.0.1"}`] != float64(lim.Refused()) || m[`mflow_drive_connections_limit{drive="127.0.0.1"}`] != 2 {
		t.Errorf("metrics: refusals %v, limit %v", m[`mflow_drive_refusals_total{drive="127.0.0.1"}`], m[`mflow_drive_connections_limit{drive="127.0.0.1"}`])
	}
}

func TestTheMemoryBudgetIsShownWhereUsersLook(t *testing.T) {
	file := upstreamtest.RandomFile(8 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	srv := serve(t, app.Config{Connections: 2, ChunkSize: 256 << 10, MaxMemory: 1 << 20, Memory: chunkcache.NewMemory(4 << 20)})
	// A player that reads on, then stops: its stream wants more read-ahead than the budget gives.
	resp, err := http.Get(srv.URL + "/stream?url=" + url.QueryEscape(u.URL+"/film.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.CopyN(io.Discard, resp.Body, 2<<20); err != nil {
		t.Fatal(err)
	}
	var st status.Status
	testsync.WaitFor(t, "the stream holding chunks and wanting more", func() bool {
		r, err := http.Get(srv.URL + "/status.json")
		if err != nil {
			return false
		}
		defer r.Body.Close()
		st = status.Status{}
		return json.NewDecoder(r.Body).Decode(&st) == nil && st.Memory.Streams > 0 && st.Memory.Withheld > 0
	})
	if st.Memory.Budget != 1<<20 || st.Memory.CacheRoom > 1<<20 {
		t.Errorf("status: %+v, want the budget and a cache yielding its room", st.Memory)
	}
	m := scrape(t, srv.URL)
	if m["mflow_memory_budget_bytes"] != 1<<20 || m["mflow_memory_streams_bytes"] <= 0 || m["mflow_readahead_withheld_bytes"] <= 0 || m["mflow_memory_cache_room_bytes"] > 1<<20 {
		t.Errorf("metrics: budget %v, streams %v, withheld %v, cache room %v", m["mflow_memory_budget_bytes"], m["mflow_memory_streams_bytes"],
			m["mflow_readahead_withheld_bytes"], m["mflow_memory_cache_room_bytes"])
	}
}
