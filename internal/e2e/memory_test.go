package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"mflow/internal/upstreamtest"
)

// playAtPace reads u as a player at bytesPerSecond for d, checks that every byte it got is the file's, in
// order, and returns how many it got.
func playAtPace(ctx context.Context, u string, file []byte, bytesPerSecond float64, d time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	pace := rate.NewLimiter(rate.Limit(bytesPerSecond), 64<<10)
	buf := make([]byte, 64<<10)
	var got int64
	for {
		if err := pace.WaitN(ctx, len(buf)); err != nil {
			return got, nil // its time is up
		}
		n, err := io.ReadFull(resp.Body, buf)
		if !bytes.Equal(buf[:n], file[got:got+int64(n)]) {
			return got, fmt.Errorf("bytes %d-%d are not the file's", got, got+int64(n)-1)
		}
		got += int64(n)
		if err != nil {
			if ctx.Err() != nil {
				return got, nil
			}
			return got, err
		}
	}
}

func TestSixteenSlowPlayersStayWithinTheMemoryBudget(t *testing.T) {
	// A fast drive, and 16 players each watching its own film at a film's pace (1.3 MB/s): without a
	// budget each stream reads ahead up to --read-ahead (64 MiB), 1 GiB in all.
	file := upstreamtest.RandomFile(160 << 20)
	drive := upstreamtest.New(file, upstreamtest.Options{})
	defer drive.Close()
	m := startMflow(t, nil, nil, "--in-memory", "--max-memory", "128M", "--cache", "--cache-size", "32M")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			u := m.base + "/stream?url=" + url.QueryEscape(fmt.Sprintf("%s/film-%d.mkv", drive.URL, i))
			got, err := playAtPace(t.Context(), u, file, 1.3e6, 12*time.Second)
			if err != nil || got < 8<<20 {
				t.Errorf("player %d got %d bytes in 12 s at 1.3 MB/s: %v", i, got, err)
			}
		})
	}
	wg.Wait()
	if peak := peakRSS(t, m.cmd.Process.Pid); peak > 176<<20 {
		t.Errorf("peak RSS %d MiB, over 176 MiB for a budget of 128 MiB", peak>>20)
	} else {
		t.Logf("peak RSS %d MiB", peak>>20)
	}
}

func TestAFilmPlayedTwiceWithASmallBudgetStaysWithinIt(t *testing.T) {
	file := upstreamtest.RandomFile(64 << 20)
	drive := upstreamtest.New(file, upstreamtest.Options{})
	defer drive.Close()
	m := startMflow(t, nil, nil, "--in-memory", "--max-memory", "64M", "--cache", "--cache-size", "32M")
	for range 2 {
		status, body, err := get(t, m.base+"/stream?url="+url.QueryEscape(drive.URL+"/film.mkv"), "")
		if err != nil || status != 200 || !bytes.Equal(body, file) {
			t.Fatalf("%d, %d bytes, %v", status, len(body), err)
		}
	}
	if peak := peakRSS(t, m.cmd.Process.Pid); peak > 112<<20 {
		t.Errorf("peak RSS %d MiB, over 112 MiB for a budget of 64 MiB", peak>>20)
	} else {
		t.Logf("peak RSS %d MiB", peak>>20)
	}
}
