package main

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/creack/pty"

	"mflow/internal/upstreamtest"
)

func TestTheBarsSpeedIsTheLastSecondsBytes(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for _, c := range []struct {
		name    string
		samples [][2]float64 // seconds, MiB in hand
		want    float64      // MiB/s after the last sample
	}{
		// An in-order writer at 4 MiB/s with 4 connections: nothing for a second, then 4 MiB at once.
		{"bursts", [][2]float64{{0.2, 0}, {0.4, 0}, {0.6, 0}, {0.8, 0}, {1, 4}, {1.2, 4}, {1.4, 4}, {1.6, 4}, {1.8, 4}, {2, 8},
			{2.2, 8}, {2.4, 8}, {2.6, 8}, {2.8, 8}, {3, 12}, {3.2, 12}, {3.4, 12}, {3.6, 12}, {3.8, 12}, {4, 16}, {4.2, 16},
			{5, 20}, {6, 24}, {7, 28}, {7.5, 28}}, (28 - 8) / (7.5 - 2.4)}, // from the newest sample 5 s back: about the true 3.7
		{"young: since the start", [][2]float64{{1, 2}, {2, 4}}, 2},
		{"a stall shows as it lasts", [][2]float64{{1, 2}, {2, 4}, {3, 6}, {4, 8}, {5, 10}, {6, 10}, {7, 10}, {8, 10}}, (10 - 6) / 5.0},
		{"nothing yet", nil, 0},
	} {
		r := &recentRate{span: 5 * time.Second, samples: []rateSample{{t0, 0}}}
		got := 0.0
		for _, s := range c.samples {
			got = r.observe(at(s[0]), int64(s[1]*(1<<20))) / (1 << 20)
		}
		if math.Abs(got-c.want) > 0.01 {
			t.Errorf("%s: %.2f MiB/s, want %.2f", c.name, got, c.want)
		}
	}
}

// TestGetShowsTheTrueSpeedOnATerminal runs mflow get on a pseudo-terminal, as a person at a terminal
// does, and holds the speeds and ETAs its bar showed against how fast the download really went.
func TestGetShowsTheTrueSpeedOnATerminal(t *testing.T) {
	const size = 16 << 20
	u := upstreamtest.New(upstreamtest.RandomFile(size), upstreamtest.Options{PerConn: 1 << 20}) // 4 MiB/s with -c 4
	defer u.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "film.mp4")
	cmd := exec.CommandContext(t.Context(), self, "get", "-c", "4", "-o", out, u.URL+"/film.mp4")
	cmd.Env = append(os.Environ(), "RUN_AS_MFLOW=1", "TERM=xterm")
	terminal, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	defer terminal.Close()
	start := time.Now()
	type frame struct {
		at    time.Duration
		speed float64 // MiB/s
		eta   time.Duration
	}
	var frames []frame
	var screen bytes.Buffer
	line := regexp.MustCompile(`([0-9.]+) ?(B|KiB|MiB)/s +ETA ([0-9hms.]+)`)
	buf := make([]byte, 4096)
	for {
		n, err := terminal.Read(buf)
		screen.Write(buf[:n])
		for _, m := range line.FindAllStringSubmatch(string(buf[:n]), -1) {
			v, _ := strconv.ParseFloat(m[1], 64)
			v /= map[string]float64{"B": 1 << 20, "KiB": 1 << 10, "MiB": 1}[m[2]]
			left, _ := time.ParseDuration(m[3])
			frames = append(frames, frame{time.Since(start), v, left})
		}
		if err != nil {
			break // the program ended: its terminal reads EIO
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mflow get: %v; its terminal:\n%s", err, screen.String())
	}
	took := time.Since(start)
	if info, err := os.Stat(out); err != nil || info.Size() != size {
		t.Fatalf("the file: %v", err)
	}
	// The frames after the first two seconds and before the last: the bar's steady state. In the first
	// second only the first chunk's bytes reach the file, in order, while the others arrive whole at its end.
	true_ := float64(size>>20) / took.Seconds()
	var checked int
	for _, f := range frames {
		if f.at < 2*time.Second || f.at > took-500*time.Millisecond || f.eta == 0 {
			continue
		}
		checked++
		if f.speed < true_/2 || f.speed > true_*2 {
			t.Errorf("at %v the bar showed %.2f MiB/s; the download went at %.2f MiB/s", f.at.Round(time.Millisecond), f.speed, true_)
		}
		if finish := f.at + f.eta; finish < took/2 || finish > took*2 {
			t.Errorf("at %v the bar showed ETA %v; the download ended at %v", f.at.Round(time.Millisecond), f.eta, took.Round(time.Millisecond))
		}
	}
	if checked < 3 {
		t.Errorf("%d frames of the bar to check in %v; its terminal:\n%q", checked, took, screen.String())
	}
}
