package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"mflow/internal/bytesize"
	"mflow/internal/upstreamtest"
)

// What a person feels: how soon mpv shows a film's first frame, and what a seek costs.

// films are two encodings of one minute of film (2 Mbit/s, 15 MB): its index in front (+faststart), and
// at the end, as many files on drives are; both nil when ffmpeg is not installed.
type films struct {
	front, tail []byte
}

// makeFilms encodes the films with ffmpeg.
func makeFilms() (films, error) {
	var f films
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		return f, nil
	}
	dir, err := os.MkdirTemp("", "mflow-bench-films")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	for _, film := range []struct {
		to    *[]byte
		flags []string
	}{{&f.front, []string{"-movflags", "+faststart"}}, {&f.tail, nil}} {
		out := filepath.Join(dir, "film.mp4")
		args := append([]string{"-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
			"-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2M", "-pix_fmt", "yuv420p", "-c:a", "aac"}, film.flags...)
		if msg, err := exec.Command(ffmpeg, append(args, out)...).CombinedOutput(); err != nil {
			return f, fmt.Errorf("ffmpeg: %v: %s", err, msg)
		}
		if *film.to, err = os.ReadFile(out); err != nil {
			return f, err
		}
	}
	return f, nil
}

// playerFigures are one model's figures as a person sees them.
type playerFigures struct {
	frameDirect, frameProxy [2]time.Duration // mpv's first frame: the film indexed in front, at the end; 0: not measured
	seekDirect, seekProxy   time.Duration    // seeks' total time, over one direct connection and through mflow
	seekRequests            int64            // upstream requests of mflow's seeks
}

// seekCount and seekRead are the seek pattern: mpv's on every jump (bytes=X-, a couple of MiB read, the
// connection closed).
const (
	seekCount = 20
	seekRead  = 2 << 20
)

// measurePlayers measures mpv's first frame for both films (when mpv is installed) and the seek pattern,
// direct and through mflow, runs interleaved; medians.
func (b *bench) measurePlayers(where *place, p *proxy, opts upstreamtest.Options, file []byte) (playerFigures, error) {
	var fig playerFigures
	mpv, _ := exec.LookPath("mpv")
	var direct, via [2][]time.Duration
	var seekDirect, seekProxy []time.Duration
	for run := range b.runs {
		for i, film := range [][]byte{b.films.front, b.films.tail} {
			if mpv == "" || film == nil {
				continue
			}
			up, err := where.upstream(film, opts)
			if err != nil {
				return fig, err
			}
			u := fmt.Sprintf("%s/film.mp4?run=%d", up.URL, run) // a link mflow has not seen: it probes afresh
			d, err := firstFrame(where, mpv, u)
			if err == nil {
				direct[i] = append(direct[i], d)
				d, err = firstFrame(where, mpv, p.url+"/stream?url="+url.QueryEscape(u))
				via[i] = append(via[i], d)
			}
			up.Close()
			if err != nil {
				return fig, err
			}
		}
		up, err := where.upstream(file, opts)
		if err != nil {
			return fig, err
		}
		rng := rand.New(rand.NewPCG(uint64(run), 7))
		offsets := make([]int64, seekCount)
		for i := range offsets {
			offsets[i] = rng.Int64N(int64(len(file) - 2*seekRead))
		}
		d, err := seeks(where, up.URL+"/film.mp4", offsets)
		if err != nil {
			up.Close()
			return fig, fmt.Errorf("seeks direct: %w", err)
		}
		seekDirect = append(seekDirect, d)
		before := up.Requests()
		d, err = seeks(where, p.url+"/stream?url="+url.QueryEscape(fmt.Sprintf("%s/film.mp4?seeks=%d", up.URL, run)), offsets)
		fig.seekRequests = max(fig.seekRequests, up.Requests()-before)
		up.Close()
		if err != nil {
			return fig, fmt.Errorf("seeks through mflow: %w", err)
		}
		seekProxy = append(seekProxy, d)
	}
	for i := range 2 {
		if len(direct[i]) > 0 {
			fig.frameDirect[i], fig.frameProxy[i] = median(direct[i]), median(via[i])
		}
	}
	fig.seekDirect, fig.seekProxy = median(seekDirect), median(seekProxy)
	return fig, nil
}

// firstFrame is how long mpv takes, where players are, from its start to quitting after the first frame of
// u (its start-up included alike, direct and through mflow).
func firstFrame(where *place, mpv, u string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	began := time.Now()
	out, err := where.command(ctx, mpv, "--no-config", "-v", "--vo=null", "--ao=null", "--frames=1", u).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("mpv %s: %v: %s", u, err, out)
	}
	return time.Since(began), nil
}

// seeks reads seekRead bytes from each offset of u, each on a new connection closed after, as mpv seeks,
// and returns the total time.
func seeks(where *place, u string, offsets []int64) (time.Duration, error) {
	began := time.Now()
	for _, at := range offsets {
		player := where.player() // mpv's jump closes its connection and opens another
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", at))
		resp, err := player.Do(req)
		if err != nil {
			return 0, err
		}
		n, err := io.CopyN(io.Discard, resp.Body, seekRead)
		resp.Body.Close()
		player.CloseIdleConnections()
		if err != nil || n != seekRead {
			return 0, fmt.Errorf("seek to %d: %d bytes, %v", at, n, err)
		}
	}
	return time.Since(began), nil
}

func (b *bench) printPlayers(results []result) {
	fmt.Printf("\nAs a person sees it, medians of %d: mpv --frames=1 from its start to the first frame of a minute of film (15 MB), its index in front (+faststart) or at the end; %d seeks of %s (bytes=X-, read, closed) over one direct connection and through mflow:\n\n",
		b.runs, seekCount, bytesize.Human(seekRead))
	fmt.Println("| upstream | index in front: direct | via mflow | index at the end: direct | via mflow | seeks: direct | via mflow | speed-up | upstream requests |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		p := r.players
		if p == nil {
			continue
		}
		frame := func(d time.Duration) string {
			if d == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f s", d.Seconds())
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %.2f s | %.2f s | **%.2f** | %d |\n", r.name, frame(p.frameDirect[0]), frame(p.frameProxy[0]),
			frame(p.frameDirect[1]), frame(p.frameProxy[1]), p.seekDirect.Seconds(), p.seekProxy.Seconds(), p.seekDirect.Seconds()/p.seekProxy.Seconds(), p.seekRequests)
	}
}
