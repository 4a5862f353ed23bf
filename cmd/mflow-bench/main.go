// Command mflow-bench measures mflow against what it competes with, side by side in one run, on upstreams
// that model cloud drives rather than an ideal server, each capping every connection's speed: in this
// process, where a drive's latency is a wait before its answer, and over real TCP between two network
// namespaces (when run as root), where it is a long path's: slow start, slow start after idle, losses. For
// each it measures one direct connection, N × one, mflow with the seed's defaults (-c 4 -s 1M), and aria2c
// -x4 -s4 -k1M when it is installed, runs interleaved, and reports medians; the peak of requests open at
// the upstream; the first byte of a first play and of a replay, direct and through mflow; each stream's peak
// memory; and how long a player reading at 7 MB/s waits in all after its first byte. It prints Markdown
// tables of ratios, which hold on a noisy machine where absolute figures do not.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"mflow/internal/bytesize"
	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/netns"
	"mflow/internal/upstreamtest"
)

// The seed's defaults, which the targets are stated at, and mflow's memory budget (--max-memory).
const (
	connections = 4
	chunkSize   = 1 << 20
	maxMemory   = 256 << 20
)

func main() {
	size := flag.Int("size", 64<<20, "file size in bytes")
	perConn := flag.Float64("per-conn", 2e6, "upstream speed cap per connection, bytes/s")
	runs := flag.Int("runs", 3, "interleaved runs of each measurement; the tables give their medians")
	firstByteRuns := flag.Int("first-byte-runs", 9, "plays to time for the first byte")
	playerRate := flag.Float64("player-rate", 7e6, "the reading speed of the paced player, bytes/s")
	only := flag.String("only", "", "measure only the models whose name matches this regular expression")
	plotTo := flag.String("plot", "", "also draw the results into this PNG (needs gnuplot)")
	logTo := flag.String("log", "", "write mflow's DEBUG log (each upstream request) to this file")
	relay := flag.String("relay", "", "internal: serve as a plain reverse proxy on this address to the URL given after it")
	flag.Parse()
	if *relay != "" {
		relayMain(*relay, flag.Arg(0))
	}
	if *logTo != "" {
		f, err := os.Create(*logTo)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mflow-bench:", err)
			os.Exit(1)
		}
		defer f.Close()
		mflowLog = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	b := &bench{size: *size, perConn: *perConn, runs: max(*runs, 1), firstByteRuns: *firstByteRuns, playerRate: *playerRate}
	b.aria2c, _ = exec.LookPath("aria2c")
	var err error
	if b.films, err = makeFilms(); err == nil {
		err = b.run(*only, *plotTo)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mflow-bench:", err)
		os.Exit(1)
	}
}

type bench struct {
	size          int
	perConn       float64
	runs          int
	firstByteRuns int
	playerRate    float64
	aria2c        string // "" when not installed
	films         films  // empty when ffmpeg is not installed
}

// model is one upstream to measure on.
type model struct {
	name string
	opts upstreamtest.Options
	size int         // the file's bytes
	path *netns.Path // nil: in this process over loopback
	one  bool        // one direct connection (and so N × one) is measured; else the ideal is N × the cap
}

// models are the drive models of upstreamtest, in this process, and, as root, the real paths.
func (b *bench) models() (models []model, skipped string) {
	for _, m := range upstreamtest.DriveModels(b.perConn) {
		models = append(models, model{name: m.Name, opts: m.Opts, size: b.size, one: m.Opts.SlowChance == 0})
	}
	if err := netns.Available(); err != nil {
		return models, fmt.Sprintf("The real paths are not measured: %v.", err)
	}
	paced := upstreamtest.Options{PerConn: b.perConn}
	return append(models,
		model{name: "real 150 ms", opts: paced, size: b.size, path: &netns.Path{Delay: 75 * time.Millisecond}, one: true},
		model{name: "real 150 ms, 0.5 % loss, no cap", size: min(b.size, 32<<20), path: &netns.Path{Delay: 75 * time.Millisecond, Loss: 0.005, Seed: 1}},
		model{name: "real 50 ms", opts: paced, size: b.size, path: &netns.Path{Delay: 25 * time.Millisecond}, one: true},
	), ""
}

// result is one model's figures: speeds in bytes per second, times, and memory.
type result struct {
	name                    string
	one, ideal, mflow, aria float64 // one is 0 where it is not measured
	bound                   float64 // the most any client reaches within the connections; 0 where not known
	peak                    int64   // most bytes the stream held in chunk buffers
	open                    int64   // most requests open at the upstream at once during mflow's plays
	firstDirect, firstProxy time.Duration
	replayDirect, replay    time.Duration
	waitProxy, waitDirect   time.Duration  // a paced player's total wait after its first byte; 0: not measured
	cacheFirst, cacheReplay float64        // a play and its replay with --cache, bytes/s; 0: not measured
	replayRequests          int64          // upstream requests of the replay
	players                 *playerFigures // mpv's first frame and the seek pattern; nil: not measured
}

func (b *bench) run(only, plotTo string) error {
	match, err := regexp.Compile(only)
	if err != nil {
		return fmt.Errorf("-only: %w", err)
	}
	fmt.Printf("Every connection capped at %s/s; mflow -c %d -s %s; aria2c -x%d -s%d -k1M%s; medians of %d interleaved runs.\n\n",
		bytesize.Human(b.perConn), connections, bytesize.Format(chunkSize), connections, connections,
		map[bool]string{true: "", false: " (not installed)"}[b.aria2c != ""], b.runs)
	models, skipped := b.models()
	var results []result
	for _, m := range models {
		if !match.MatchString(m.name) {
			continue
		}
		r, err := b.measure(m)
		if err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
		results = append(results, r)
	}
	var limited []limitedResult
	for _, m := range limitedModels {
		if !match.MatchString(m.name) {
			continue
		}
		r, err := b.measureLimited(m)
		if err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
		limited = append(limited, r)
	}
	var chain *openListResult
	if match.MatchString(openListModel) {
		r, err := b.measureOpenList()
		if err != nil {
			return fmt.Errorf("%s: %w", openListModel, err)
		}
		chain = &r
	}
	var cpu *cpuResult
	if match.MatchString(cpuModel) {
		if cpu, err = b.measureCPU(); err != nil {
			return fmt.Errorf("%s: %w", cpuModel, err)
		}
	}
	b.print(results)
	b.printLimited(limited)
	b.printOpenList(chain)
	b.printCPU(cpu)
	if skipped != "" {
		fmt.Println("\n" + skipped)
	}
	if plotTo == "" {
		return nil
	}
	return plot(plotTo, results, b.perConn)
}

// routeSeeds are the seeds the uneven-routes model is measured with: its routes are drawn per request, so
// one run of a tool that makes few requests (aria2c makes about four) is a lottery. Each tool gets its own
// upstream per seed, so each meets the same draws in the order of its requests.
var routeSeeds = []uint64{1, 2, 3, 4, 5, 6, 7, 8}

func (b *bench) measure(m model) (result, error) {
	r := result{name: m.name, ideal: connections * b.perConn}
	where := loopback()
	if m.path != nil {
		var err error
		if where, err = overPath(*m.path); err != nil {
			return r, err
		}
	}
	defer where.close()
	player := where.player()
	defer player.CloseIdleConnections()
	file := upstreamtest.RandomFile(m.size)
	seeds := []uint64{m.opts.Seed}
	if m.opts.SlowChance > 0 {
		seeds = routeSeeds
	}
	proxy, err := where.proxy(nil)
	if err != nil {
		return r, err
	}
	defer proxy.stop()
	// Each run: one direct connection, mflow, aria2c; each over fresh upstreams.
	var ones, mflows, arias []float64
	for run := range b.runs {
		if m.one {
			up, err := where.upstream(file, m.opts)
			if err != nil {
				return r, err
			}
			took, err := timeGet(player, up.URL+"/film.mp4", m.size)
			up.Close()
			if err != nil {
				return r, fmt.Errorf("one direct connection: %w", err)
			}
			ones = append(ones, float64(m.size)/took.Seconds())
		}
		var mflowTook, ariaTook time.Duration
		for i, seed := range seeds {
			opts := m.opts
			opts.Seed = seed
			up, err := where.upstream(file, opts)
			if err != nil {
				return r, err
			}
			peak := watchPeak(proxy.engine)
			took, err := timeGet(player, proxy.url+"/stream?url="+url.QueryEscape(fmt.Sprintf("%s/film.mp4?run=%d.%d", up.URL, run, i)), m.size)
			r.peak = max(r.peak, peak())
			r.open = max(r.open, up.MaxOpen())
			up.Close()
			if err != nil {
				return r, fmt.Errorf("mflow: %w", err)
			}
			mflowTook += took
			if b.aria2c != "" {
				up, err := where.upstream(file, opts)
				if err != nil {
					return r, err
				}
				took, err := b.timeAria2c(where, up.URL+"/film.mp4", m.size)
				up.Close()
				if err != nil {
					return r, fmt.Errorf("aria2c: %w", err)
				}
				ariaTook += took
			}
		}
		mflows = append(mflows, float64(len(seeds)*m.size)/mflowTook.Seconds())
		if b.aria2c != "" {
			arias = append(arias, float64(len(seeds)*m.size)/ariaTook.Seconds())
		}
	}
	r.mflow, r.aria = median(mflows), median(arias)
	if m.one {
		r.one = median(ones)
		r.ideal = connections * r.one
		r.bound = bound(float64(m.size), r.one, m.opts.PerConn)
	}
	up, err := where.upstream(file, m.opts)
	if err != nil {
		return r, err
	}
	defer up.Close()
	fileURL := up.URL + "/film.mp4"
	var direct, first, replayDirect, replay []time.Duration
	for i := range b.firstByteRuns {
		// A new query each time: mflow must probe the link afresh, as for a film it has not seen.
		u := fmt.Sprintf("%s?play=%d", fileURL, i)
		for _, p := range []struct {
			to  *[]time.Duration
			url string
		}{
			{&direct, u}, {&first, proxy.url + "/stream?url=" + url.QueryEscape(u)},
			{&replayDirect, u}, {&replay, proxy.url + "/stream?url=" + url.QueryEscape(u)},
		} {
			d, err := firstByte(player, p.url)
			if err != nil {
				return r, fmt.Errorf("first byte of %s: %w", p.url, err)
			}
			*p.to = append(*p.to, d)
		}
	}
	r.firstDirect, r.firstProxy, r.replayDirect, r.replay = median(direct), median(first), median(replayDirect), median(replay)
	if m.path == nil && m.opts.SlowChance == 0 && m.opts.Latency == 0 { // a replay with --cache: what the drive is not asked again
		cached, err := where.proxy(chunkcache.NewMemory(int64(m.size) * 2))
		if err != nil {
			return r, err
		}
		defer cached.stop()
		u := cached.url + "/stream?url=" + url.QueryEscape(fileURL+"?replay")
		first, err := timeGet(player, u, m.size)
		if err != nil {
			return r, fmt.Errorf("first play with --cache: %w", err)
		}
		before := up.Requests()
		replay, err := timeGet(player, u, m.size)
		if err != nil {
			return r, fmt.Errorf("replay with --cache: %w", err)
		}
		r.cacheFirst, r.cacheReplay, r.replayRequests = float64(m.size)/first.Seconds(), float64(m.size)/replay.Seconds(), up.Requests()-before
	}
	if m.opts.Latency == 150*time.Millisecond || (m.path != nil && m.path.Delay == 75*time.Millisecond && m.one) {
		if r.waitProxy, err = b.pacedWait(player, proxy.url+"/stream?url="+url.QueryEscape(fileURL+"?paced"), m.size); err != nil {
			return r, fmt.Errorf("paced player through mflow: %w", err)
		}
		if r.waitDirect, err = b.pacedWait(player, fileURL+"?paced-direct", m.size); err != nil {
			return r, fmt.Errorf("paced player direct: %w", err)
		}
		fig, err := b.measurePlayers(where, proxy, m.opts, file)
		if err != nil {
			return r, err
		}
		r.players = &fig
	}
	return r, nil
}

// bound is the fastest any client reads a file of size bytes with connections connections, where one
// connection reads it at one bytes/s and each is capped at perConn: each connection pays what one pays
// besides its bytes at the cap (connecting, the first byte, TCP's slow start) and brings a share of the
// file at the cap. Whatever requests a client makes, it cannot do better; 0 without a cap.
func bound(size, one, perConn float64) float64 {
	if perConn <= 0 || one <= 0 {
		return 0
	}
	overhead := max(size/one-size/perConn, 0)
	return size / (overhead + size/(connections*perConn))
}

// hasIdeal reports whether r's N × one connection is a bound to compare with: not on a path without a cap.
func (r result) hasIdeal() bool { return r.one > 0 || r.name == "uneven routes" }

func (b *bench) print(results []result) {
	fmt.Println("| upstream | one connection | N × one (ideal) | best within -c ÷ ideal | mflow | mflow ÷ ideal | aria2c | aria2c ÷ ideal | mflow ÷ aria2c | peak open requests | peak stream memory |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		one, ideal, best, vsIdeal, aria, ariaRatio, vsAria := "–", "–", "–", "–", "–", "–", "–"
		if r.one > 0 {
			one = bytesize.Human(r.one) + "/s"
		}
		if r.bound > 0 {
			best = fmt.Sprintf("%.2f", r.bound/r.ideal)
		}
		if r.hasIdeal() {
			ideal, vsIdeal = bytesize.Human(r.ideal)+"/s", fmt.Sprintf("**%.2f**", r.mflow/r.ideal)
		}
		if r.aria > 0 {
			aria, vsAria = bytesize.Human(r.aria)+"/s", fmt.Sprintf("**%.2f**", r.mflow/r.aria)
			if ideal != "–" {
				ariaRatio = fmt.Sprintf("%.2f", r.aria/r.ideal)
			}
		}
		fmt.Printf("| %s | %s | %s | %s | %s/s | %s | %s | %s | %s | %d | %s |\n", r.name, one, ideal, best, bytesize.Human(r.mflow), vsIdeal,
			aria, ariaRatio, vsAria, r.open, bytesize.Human(float64(r.peak)))
	}
	fmt.Printf("\nFirst byte, median of %d plays (a first play probes a new link; a replay reuses the probe):\n\n", b.firstByteRuns)
	fmt.Println("| upstream | first play direct | first play via mflow | extra | replay direct | replay via mflow | extra |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range results {
		fmt.Printf("| %s | %s | %s | %+.1f ms | %s | %s | %+.1f ms |\n", r.name, msText(r.firstDirect), msText(r.firstProxy), ms(r.firstProxy-r.firstDirect),
			msText(r.replayDirect), msText(r.replay), ms(r.replay-r.replayDirect))
	}
	for _, r := range results {
		if r.cacheFirst > 0 {
			fmt.Printf("\nA replay with --cache on the %s drive: first play %s/s, replay %s/s (%.0f×), %d requests upstream for the replay (its probe reused).\n",
				r.name, bytesize.Human(r.cacheFirst), bytesize.Human(r.cacheReplay), r.cacheReplay/r.cacheFirst, r.replayRequests)
		}
		if r.waitDirect > 0 {
			fmt.Printf("\nA player reading at %s/s on the %s drive waits, in all after its first byte: through mflow %s, over one direct connection %s.\n",
				bytesize.Human(b.playerRate), r.name, r.waitProxy.Round(time.Millisecond), r.waitDirect.Round(time.Millisecond))
		}
	}
	b.printPlayers(results)
	fmt.Printf("\nBest within -c: one connection's cost besides its bytes at the cap (connecting, the first byte, TCP's slow start), paid by each of %d connections over a %d-th of the file: no client reads faster within -c %d, whatever requests it makes.\n",
		connections, connections, connections)
	fmt.Printf("\nUneven routes: each tool over its own upstreams, seeds %v, speed = all bytes ÷ all time. The lossy path has no per-connection cap, so no ideal: one connection there settles at its loss-limited rate.\n", routeSeeds)
	fmt.Printf("\nPeak open requests are counted at the upstream (mflow's -c is %d). Peak stream memory is what the stream held in chunk buffers, plus a %s read buffer per request.\n",
		connections, bytesize.Human(32<<10))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func msText(d time.Duration) string { return fmt.Sprintf("%.1f ms", ms(d)) }

// watchPeak samples the engine's held bytes until the returned function is called, which gives the peak.
func watchPeak(e *engine.Engine) func() int64 {
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			if h := e.HeldBytes(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-t.C:
			case <-done:
				return
			}
		}
	}()
	return func() int64 { close(done); return peak.Load() }
}

// timeGet downloads u whole and checks its length.
func timeGet(player *http.Client, u string, size int) (time.Duration, error) {
	began := time.Now()
	resp, err := player.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, err
	}
	if n != int64(size) {
		return 0, fmt.Errorf("got %d bytes, want %d", n, size)
	}
	return time.Since(began), nil
}

// firstByte times a request for u until its first body byte.
func firstByte(player *http.Client, u string) (time.Duration, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", "bytes=0-")
	began := time.Now()
	resp, err := player.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(began), nil
}

// pacedWait plays u as a player that plays at playerRate from its first byte on, keeping at most a second
// of playback buffered, and returns how long its playback stood still waiting for bytes.
func (b *bench) pacedWait(player *http.Client, u string, size int) (time.Duration, error) {
	resp, err := player.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	buf := make([]byte, 64<<10)
	var got int64
	var start time.Time
	var stalled time.Duration
	playedAt := func(pos int64) time.Time { // when playback reaches byte pos
		return start.Add(stalled + time.Duration(float64(pos)/b.playerRate*float64(time.Second)))
	}
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			now := time.Now()
			if start.IsZero() {
				start = now
			} else if due := playedAt(got); now.After(due) {
				stalled += now.Sub(due)
			}
			got += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		if ahead := time.Until(playedAt(got)) - time.Second; ahead > 0 {
			time.Sleep(ahead)
		}
	}
	if got != int64(size) {
		return 0, fmt.Errorf("got %d bytes, want %d", got, size)
	}
	return stalled, nil
}

// timeAria2c downloads u with aria2c -x4 -s4 -k1M into a temporary folder, where players are.
func (b *bench) timeAria2c(where *place, u string, size int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "mflow-bench")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	n := strconv.Itoa(connections)
	cmd := where.command(ctx, b.aria2c, "-x", n, "-s", n, "-k", "1M", "--min-split-size=1M",
		"--file-allocation=none", "--allow-overwrite=true", "--console-log-level=error", "--summary-interval=0",
		"-d", dir, "-o", "f", u)
	began := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	took := time.Since(began)
	if st, err := os.Stat(filepath.Join(dir, "f")); err != nil || st.Size() != int64(size) {
		return 0, fmt.Errorf("aria2c wrote a file of the wrong size: %v", err)
	}
	return took, nil
}

func median[T float64 | time.Duration](d []T) T {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
