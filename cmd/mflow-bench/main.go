// Command mflow-bench measures mflow against what it competes with, side by side in one run, on upstreams
// that model cloud drives rather than an ideal server: each caps every connection's speed, one answers
// each request after 150 ms, and one sends one request in five down a slow route. For each it measures one
// direct connection, N × one, mflow with the seed's defaults (-c 4 -s 1M), and aria2c -x4 -s4 -k1M when it
// is installed; the first byte of a first play and of a replay, direct and through mflow; each stream's
// peak memory; and how long a player reading at 7 MB/s waits in all after its first byte. It prints
// Markdown tables of ratios, which hold on a noisy machine where absolute figures do not.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"mflow/internal/app"
	"mflow/internal/bytesize"
	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/upstreamtest"
)

// The seed's defaults, which the targets are stated at.
const (
	connections = 4
	chunkSize   = 1 << 20
)

func main() {
	size := flag.Int("size", 64<<20, "file size in bytes")
	perConn := flag.Float64("per-conn", 2e6, "upstream speed cap per connection, bytes/s")
	firstByteRuns := flag.Int("first-byte-runs", 9, "plays to time for the first byte")
	playerRate := flag.Float64("player-rate", 7e6, "the reading speed of the paced player, bytes/s")
	only := flag.String("only", "", "measure only the drive models whose name contains this")
	plotTo := flag.String("plot", "", "also draw the results into this PNG (needs gnuplot)")
	flag.Parse()
	b := &bench{size: *size, perConn: *perConn, firstByteRuns: *firstByteRuns, playerRate: *playerRate,
		player: &http.Client{Transport: &http.Transport{DisableCompression: true}}}
	b.aria2c, _ = exec.LookPath("aria2c")
	if err := b.run(*only, *plotTo); err != nil {
		fmt.Fprintln(os.Stderr, "mflow-bench:", err)
		os.Exit(1)
	}
}

type bench struct {
	size          int
	perConn       float64
	firstByteRuns int
	playerRate    float64
	player        *http.Client
	aria2c        string // "" when not installed
}

// result is one drive model's figures: speeds in bytes per second, times, and memory.
type result struct {
	name                    string
	one, ideal, mflow, aria float64 // one is 0 where it is not measured (uneven routes)
	peak                    int64   // most bytes the stream held in chunk buffers
	firstDirect, firstProxy time.Duration
	replayDirect, replay    time.Duration
	waitProxy, waitDirect   time.Duration // a paced player's total wait after its first byte; 0: not measured
	cacheFirst, cacheReplay float64       // a play and its replay with --cache, bytes/s; 0: not measured
	replayRequests          int64         // upstream requests of the replay
}

func (b *bench) run(only, plotTo string) error {
	fmt.Printf("%s file; every connection capped at %s/s; mflow -c %d -s %s; aria2c -x%d -s%d -k1M%s.\n\n",
		bytesize.Human(float64(b.size)), bytesize.Human(b.perConn), connections, bytesize.Format(chunkSize), connections, connections,
		map[bool]string{true: "", false: " (not installed)"}[b.aria2c != ""])
	var results []result
	for _, m := range upstreamtest.DriveModels(b.perConn) {
		if !strings.Contains(m.Name, only) {
			continue
		}
		r, err := b.measure(m.Name, m.Opts)
		if err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
		results = append(results, r)
	}
	b.print(results)
	if plotTo == "" {
		return nil
	}
	return plot(plotTo, results, b.perConn)
}

// routeSeeds are the seeds the uneven-routes model is measured with: its routes are drawn per request, so
// one run of a tool that makes few requests (aria2c makes about four) is a lottery. Each tool gets its own
// upstream per seed, so each meets the same draws in the order of its requests.
var routeSeeds = []uint64{1, 2, 3, 4, 5, 6, 7, 8}

func (b *bench) measure(name string, opts upstreamtest.Options) (result, error) {
	r := result{name: name, ideal: connections * b.perConn}
	file := upstreamtest.RandomFile(b.size)
	seeds := []uint64{opts.Seed}
	if opts.SlowChance > 0 {
		seeds = routeSeeds
	} else { // on uneven routes one connection's figure is a lottery too; the ideal there is 4 × the fast route
		up := upstreamtest.New(file, opts)
		took, err := b.timeGet(up.URL + "/film.mp4")
		up.Close()
		if err != nil {
			return r, fmt.Errorf("one direct connection: %w", err)
		}
		r.one = float64(b.size) / took.Seconds()
		r.ideal = connections * r.one
	}
	proxy, eng, stop := startProxy(nil)
	defer stop()
	var mflowTook, ariaTook time.Duration
	for i, seed := range seeds {
		opts.Seed = seed
		up := upstreamtest.New(file, opts)
		peak := watchPeak(eng)
		took, err := b.timeGet(proxy + "/stream?url=" + url.QueryEscape(fmt.Sprintf("%s/film.mp4?run=%d", up.URL, i)))
		r.peak = max(r.peak, peak())
		up.Close()
		if err != nil {
			return r, fmt.Errorf("mflow: %w", err)
		}
		mflowTook += took
		if b.aria2c != "" {
			up := upstreamtest.New(file, opts)
			took, err := b.timeAria2c(up.URL + "/film.mp4")
			up.Close()
			if err != nil {
				return r, fmt.Errorf("aria2c: %w", err)
			}
			ariaTook += took
		}
	}
	r.mflow = float64(len(seeds)*b.size) / mflowTook.Seconds()
	if b.aria2c != "" {
		r.aria = float64(len(seeds)*b.size) / ariaTook.Seconds()
	}
	up := upstreamtest.New(file, opts)
	defer up.Close()
	fileURL := up.URL + "/film.mp4"
	var direct, first, replayDirect, replay []time.Duration
	for i := range b.firstByteRuns {
		// A new query each time: mflow must probe the link afresh, as for a film it has not seen.
		u := fmt.Sprintf("%s?play=%d", fileURL, i)
		for _, m := range []struct {
			to  *[]time.Duration
			url string
		}{
			{&direct, u}, {&first, proxy + "/stream?url=" + url.QueryEscape(u)},
			{&replayDirect, u}, {&replay, proxy + "/stream?url=" + url.QueryEscape(u)},
		} {
			d, err := b.firstByte(m.url)
			if err != nil {
				return r, fmt.Errorf("first byte of %s: %w", m.url, err)
			}
			*m.to = append(*m.to, d)
		}
	}
	r.firstDirect, r.firstProxy, r.replayDirect, r.replay = median(direct), median(first), median(replayDirect), median(replay)
	if opts.SlowChance == 0 && opts.Latency == 0 { // a replay with --cache: what the drive is not asked again
		cached, _, stopCached := startProxy(chunkcache.NewMemory(int64(b.size) * 2))
		defer stopCached()
		u := cached + "/stream?url=" + url.QueryEscape(fileURL+"?replay")
		first, err := b.timeGet(u)
		if err != nil {
			return r, fmt.Errorf("first play with --cache: %w", err)
		}
		before := up.Requests()
		replay, err := b.timeGet(u)
		if err != nil {
			return r, fmt.Errorf("replay with --cache: %w", err)
		}
		r.cacheFirst, r.cacheReplay, r.replayRequests = float64(b.size)/first.Seconds(), float64(b.size)/replay.Seconds(), up.Requests()-before
	}
	if opts.Latency == 150*time.Millisecond {
		var err error
		if r.waitProxy, err = b.pacedWait(proxy + "/stream?url=" + url.QueryEscape(fileURL+"?paced")); err != nil {
			return r, fmt.Errorf("paced player through mflow: %w", err)
		}
		if r.waitDirect, err = b.pacedWait(fileURL + "?paced-direct"); err != nil {
			return r, fmt.Errorf("paced player direct: %w", err)
		}
	}
	return r, nil
}

func (b *bench) print(results []result) {
	fmt.Println("| upstream | one connection | N × one (ideal) | mflow | mflow ÷ ideal | aria2c | aria2c ÷ ideal | mflow ÷ aria2c | peak stream memory |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		one, aria, ariaRatio, vsAria := "–", "–", "–", "–"
		if r.one > 0 {
			one = bytesize.Human(r.one) + "/s"
		}
		if r.aria > 0 {
			aria, ariaRatio, vsAria = bytesize.Human(r.aria)+"/s", fmt.Sprintf("%.2f", r.aria/r.ideal), fmt.Sprintf("**%.2f**", r.mflow/r.aria)
		}
		fmt.Printf("| %s | %s | %s/s | %s/s | **%.2f** | %s | %s | %s | %s |\n", r.name, one, bytesize.Human(r.ideal), bytesize.Human(r.mflow),
			r.mflow/r.ideal, aria, ariaRatio, vsAria, bytesize.Human(float64(r.peak)))
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
	fmt.Printf("\nUneven routes: each tool over its own upstreams, seeds %v, speed = all bytes ÷ all time.\n", routeSeeds)
	fmt.Printf("\nPeak stream memory is what the stream held in chunk buffers: at most 2 × -c × --chunk-size (%s), plus a %s read buffer per request.\n",
		bytesize.Human(2*connections*chunkSize), bytesize.Human(32<<10))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func msText(d time.Duration) string { return fmt.Sprintf("%.1f ms", ms(d)) }

// startProxy runs mflow in this process with the seed's defaults and cache (nil: none), through the same
// server it serves with.
func startProxy(cache *chunkcache.Memory) (string, *engine.Engine, func()) {
	mflow, err := app.New(app.Config{Connections: connections, ChunkSize: chunkSize, Retry: 5, MaxRedirects: 3, HostConnections: 16, Memory: cache,
		Version: "bench", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err) // New fails only on a task store, and the benchmark has none
	}
	ts := httptest.NewServer(mflow.Handler)
	return ts.URL, mflow.Engine, func() { ts.Close(); mflow.Close() }
}

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
func (b *bench) timeGet(u string) (time.Duration, error) {
	began := time.Now()
	resp, err := b.player.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, err
	}
	if n != int64(b.size) {
		return 0, fmt.Errorf("got %d bytes, want %d", n, b.size)
	}
	return time.Since(began), nil
}

// firstByte times a request for u until its first body byte.
func (b *bench) firstByte(u string) (time.Duration, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", "bytes=0-")
	began := time.Now()
	resp, err := b.player.Do(req)
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
func (b *bench) pacedWait(u string) (time.Duration, error) {
	resp, err := b.player.Get(u)
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
	if got != int64(b.size) {
		return 0, fmt.Errorf("got %d bytes, want %d", got, b.size)
	}
	return stalled, nil
}

// timeAria2c downloads u with aria2c -x4 -s4 -k1M into a temporary folder.
func (b *bench) timeAria2c(u string) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "mflow-bench")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := strconv.Itoa(connections)
	cmd := exec.CommandContext(ctx, b.aria2c, "-x", n, "-s", n, "-k", "1M", "--min-split-size=1M",
		"--file-allocation=none", "--allow-overwrite=true", "--console-log-level=error", "--summary-interval=0",
		"-d", dir, "-o", "f", u)
	began := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	took := time.Since(began)
	if st, err := os.Stat(filepath.Join(dir, "f")); err != nil || st.Size() != int64(b.size) {
		return 0, fmt.Errorf("aria2c wrote a file of the wrong size: %v", err)
	}
	return took, nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// plot draws each drive model's speeds against its ideal, and the first-byte times, with gnuplot.
func plot(path string, results []result, perConn float64) error {
	gnuplot, err := exec.LookPath("gnuplot")
	if err != nil {
		return fmt.Errorf("-plot needs gnuplot (apt-get install gnuplot-nox): %w", err)
	}
	var speeds, firsts strings.Builder
	for i, r := range results {
		fmt.Fprintf(&speeds, "%d \"%s\" %.3f %.3f\n", i, r.name, r.mflow/r.ideal, r.aria/r.ideal)
		fmt.Fprintf(&firsts, "%d \"%s\" %.1f %.1f %.1f\n", i, r.name, ms(r.firstDirect), ms(r.firstProxy), ms(r.replay))
	}
	script := fmt.Sprintf(`set terminal pngcairo size 1100,440 font "DejaVu Sans,11"
set output %q
set multiplot layout 1,2 title "mflow -c 4 -s 1M on drive models (each connection capped at %.0f MB/s), measured side by side in one run"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set ylabel "speed ÷ (4 × one connection)"
set yrange [0:1.2]
plot $speeds using 3:xtic(2) title "mflow" lc rgb "#1f77b4", '' using 4 title "aria2c -x4" lc rgb "#ff7f0e", 1 notitle dt 2 lc rgb "#999999"
set ylabel "first byte, ms"
set yrange [0:*]
set key top left
plot $firsts using 3:xtic(2) title "direct" lc rgb "#2ca02c", '' using 4 title "mflow, first play" lc rgb "#1f77b4", '' using 5 title "mflow, replay" lc rgb "#9ecae1"
unset multiplot
`, path, perConn/1e6)
	input := "$speeds << EOD\n" + speeds.String() + "EOD\n$firsts << EOD\n" + firsts.String() + "EOD\n" + script
	cmd := exec.Command(gnuplot)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	fmt.Println("Drew", path)
	return nil
}
