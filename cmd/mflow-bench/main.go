// Command mflow-bench measures mflow against what it competes with, side by side in one run, on an
// upstream that caps each connection's speed as cloud drives do: one direct connection, mflow with N
// connections, and aria2c -xN when it is installed. It prints a Markdown table of ratios, which hold on a
// noisy machine where absolute figures do not.
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
	"time"

	"mflow/internal/bytesize"
	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/link"
	"mflow/internal/server"
	"mflow/internal/upstream"
	"mflow/internal/upstreamtest"
)

func main() {
	size := flag.Int("size", 16<<20, "file size in bytes")
	perConn := flag.Float64("per-conn", 2<<20, "upstream speed cap per connection, bytes/s")
	firstByteRuns := flag.Int("first-byte-runs", 15, "requests to time for the first byte")
	plotTo := flag.String("plot", "", "also draw the results into this PNG (needs gnuplot)")
	flag.Parse()
	if err := run(*size, *perConn, *firstByteRuns, *plotTo); err != nil {
		fmt.Fprintln(os.Stderr, "mflow-bench:", err)
		os.Exit(1)
	}
}

// row is one connection count's results, in bytes per second; aria2c is 0 when it is not installed.
type row struct {
	n                  int
	ideal, mflow, aria float64
}

func run(size int, perConn float64, firstByteRuns int, plotTo string) error {
	file := upstreamtest.RandomFile(size)
	up := upstreamtest.New(file, upstreamtest.Options{PerConn: perConn})
	defer up.Close()
	fileURL := up.URL + "/film.mp4"
	player := &http.Client{Transport: &http.Transport{DisableCompression: true}}

	fmt.Printf("Upstream: %s file, each connection capped at %s/s. mflow chunk 1M.\n\n", bytesize.Human(float64(size)), bytesize.Human(perConn))
	one, err := timeGet(player, fileURL, size)
	if err != nil {
		return fmt.Errorf("direct download: %w", err)
	}
	oneRate := float64(size) / one.Seconds()
	fmt.Printf("One direct connection: %s/s (%v)\n\n", bytesize.Human(oneRate), one.Round(time.Millisecond))

	aria2c, _ := exec.LookPath("aria2c")
	fmt.Println("| N | N × one connection | mflow -c N | mflow ÷ (N × one) | aria2c -xN | mflow ÷ aria2c |")
	fmt.Println("|---|---|---|---|---|---|")
	var rows []row
	for _, n := range []int{1, 2, 4, 8} {
		proxy, closeProxy := startProxy(n, 1<<20, nil)
		took, err := timeGet(player, proxy+"/stream?url="+url.QueryEscape(fileURL), size)
		closeProxy()
		if err != nil {
			return fmt.Errorf("mflow -c %d: %w", n, err)
		}
		rate := float64(size) / took.Seconds()
		ariaCell, vsAria, ariaRate := "not installed", "–", 0.0
		if aria2c != "" {
			at, err := timeAria2c(aria2c, fileURL, n, size)
			if err != nil {
				return fmt.Errorf("aria2c -x%d: %w", n, err)
			}
			ariaRate = float64(size) / at.Seconds()
			ariaCell = bytesize.Human(ariaRate) + "/s"
			vsAria = fmt.Sprintf("%.2f", rate/ariaRate)
		}
		fmt.Printf("| %d | %s/s | %s/s | **%.2f** | %s | %s |\n", n, bytesize.Human(float64(n)*oneRate), bytesize.Human(rate), rate/(float64(n)*oneRate), ariaCell, vsAria)
		rows = append(rows, row{n: n, ideal: float64(n) * oneRate, mflow: rate, aria: ariaRate})
	}

	// A second play of the same film, with the memory cache on: nothing goes upstream but one probe.
	cached, closeCached := startProxy(4, 1<<20, chunkcache.NewMemory(int64(size)*2))
	streamOf := cached + "/stream?url=" + url.QueryEscape(fileURL+"?replay")
	first, err := timeGet(player, streamOf, size)
	if err != nil {
		return fmt.Errorf("first play with --cache: %w", err)
	}
	before := up.Requests()
	second, err := timeGet(player, streamOf, size)
	closeCached()
	if err != nil {
		return fmt.Errorf("second play with --cache: %w", err)
	}
	fmt.Printf("\nSecond play with --cache, -c 4: first %s/s, second %s/s (%.0f×), %d requests upstream the second time.\n",
		bytesize.Human(float64(size)/first.Seconds()), bytesize.Human(float64(size)/second.Seconds()), first.Seconds()/second.Seconds(), up.Requests()-before)

	proxy, closeProxy := startProxy(4, 4<<20, nil)
	defer closeProxy()
	var direct, viaProxy []time.Duration
	for i := range firstByteRuns {
		// A new query each time: mflow must probe the link afresh, as for a film it has not seen.
		u := fmt.Sprintf("%s?run=%d", fileURL, i)
		d, err := firstByte(player, u)
		if err != nil {
			return fmt.Errorf("first byte direct: %w", err)
		}
		p, err := firstByte(player, proxy+"/stream?url="+url.QueryEscape(u))
		if err != nil {
			return fmt.Errorf("first byte through mflow: %w", err)
		}
		direct, viaProxy = append(direct, d), append(viaProxy, p)
	}
	md, mp := median(direct), median(viaProxy)
	fmt.Printf("\nFirst byte, median of %d, 4 MiB chunks, -c 4: direct %v, through mflow %v (+%v).\n", firstByteRuns, md.Round(10*time.Microsecond), mp.Round(10*time.Microsecond), (mp - md).Round(10*time.Microsecond))
	if plotTo == "" {
		return nil
	}
	return plot(plotTo, rows, oneRate, md, mp, perConn)
}

// plot draws throughput against connection count, and the first-byte times, with gnuplot.
func plot(path string, rows []row, oneRate float64, direct, proxy time.Duration, perConn float64) error {
	gnuplot, err := exec.LookPath("gnuplot")
	if err != nil {
		return fmt.Errorf("-plot needs gnuplot (apt-get install gnuplot-nox): %w", err)
	}
	const mib = 1 << 20
	var data strings.Builder
	for _, r := range rows {
		aria := "NaN"
		if r.aria > 0 {
			aria = fmt.Sprintf("%.3f", r.aria/mib)
		}
		fmt.Fprintf(&data, "%d %.3f %.3f %s %.3f\n", r.n, r.ideal/mib, r.mflow/mib, aria, oneRate/mib)
	}
	script := fmt.Sprintf(`set terminal pngcairo size 1100,440 font "DejaVu Sans,11"
set output %q
set multiplot layout 1,2 title "mflow on an upstream capping each connection at %.0f MiB/s, measured side by side in one run"
set xlabel "connections (mflow -c N, aria2c -xN)"
set ylabel "MiB/s"
set logscale x 2
set xrange [0.8:10]
set xtics (1,2,4,8)
set key top left
set grid
plot $data using 1:2 with lines dashtype 2 lc rgb "#999999" title "N x one connection", \
     $data using 1:3 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "mflow", \
     $data using 1:4 with linespoints lw 2 pt 5 lc rgb "#ff7f0e" title "aria2c", \
     $data using 1:5 with lines lw 2 lc rgb "#2ca02c" title "one direct connection"
unset logscale x
set xlabel ""
set ylabel "first byte, ms"
set style fill solid 0.8
set boxwidth 0.5
set xrange [-0.7:1.7]
set yrange [0:%.3f]
set xtics ("direct" 0, "through mflow" 1)
unset key
plot $bars using 1:2:3 with boxes lc rgb variable, $bars using 1:2:(sprintf("%%.2f ms", $2)) with labels offset 0,1
unset multiplot
`, path, perConn/mib, 1.3*max(ms(direct), ms(proxy)))
	input := "$data << EOD\n" + data.String() + "EOD\n" +
		fmt.Sprintf("$bars << EOD\n0 %.3f 3050327\n1 %.3f 2062260\nEOD\n", ms(direct), ms(proxy)) + script
	cmd := exec.Command(gnuplot)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	fmt.Println("Drew", path)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// startProxy runs mflow in this process with n connections per stream, the given chunk size and cache.
func startProxy(n int, chunk int64, cache engine.Cache) (string, func()) {
	client := upstream.NewClient(upstream.Config{})
	quiet := slog.New(slog.DiscardHandler)
	s := &server.Server{
		Resolver:  &link.Resolver{Client: client, MaxRedirects: 3},
		Engine:    &engine.Engine{Client: client, ChunkSize: chunk, Connections: n, Retries: 5, MaxRedirects: 3, Cache: cache, Logger: quiet},
		UserAgent: "mflow-bench",
		Logger:    quiet,
	}
	ts := httptest.NewServer(s.Handler())
	return ts.URL, func() { ts.Close(); client.CloseIdleConnections() }
}

// timeGet downloads u whole and checks its length.
func timeGet(c *http.Client, u string, size int) (time.Duration, error) {
	began := time.Now()
	resp, err := c.Get(u)
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
func firstByte(c *http.Client, u string) (time.Duration, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", "bytes=0-")
	began := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(began), nil
}

// timeAria2c downloads u with aria2c -xN into a temporary folder.
func timeAria2c(aria2c, u string, n, size int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "mflow-bench")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, aria2c, "-x", strconv.Itoa(n), "-s", strconv.Itoa(n), "-k", "1M", "--min-split-size=1M",
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

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
