package main

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"mflow/internal/bytesize"
	"mflow/internal/upstreamtest"
)

// limitedModel is a drive that allows two requests of a file at once and refuses one more, as 115 and
// PikPak do, with risk control: after banAfter refusals it refuses every request of the file for a minute.
type limitedModel struct {
	name   string
	refuse int    // the third request's answer
	after  string // its Retry-After
}

const (
	perFile  = 2
	banAfter = 5
)

var limitedModels = []limitedModel{
	{"2 per file, 403 beyond (115), risk control", http.StatusForbidden, ""},
	{"2 per file, 429 beyond, risk control", http.StatusTooManyRequests, "1"},
}

// limitedResult is what one limited drive measured.
type limitedResult struct {
	name                   string
	one                    float64 // one direct connection, bytes/s
	first, later           float64 // mflow's first play (the limit unknown) and a later one, bytes/s
	firstRefused, laterRef int     // refusals the drive counted in them
	maxServing             int     // most requests it served at once through mflow
	aria                   float64 // aria2c -x4, bytes/s; 0 when not installed or it failed
	ariaRefused            int
	ariaErr                string
}

// measureLimited plays the file from a limited drive in this process: one direct connection, mflow's
// first play of the drive (a fresh mflow), a later play (the limit learned), and aria2c, interleaved, with
// medians of the speeds and the largest refusal counts.
func (b *bench) measureLimited(m limitedModel) (limitedResult, error) {
	r := limitedResult{name: m.name}
	where := loopback()
	player := where.player()
	defer player.CloseIdleConnections()
	file := upstreamtest.RandomFile(b.size)
	drive := func() (*upstreamtest.Upstream, *upstreamtest.DriveLimit) {
		lim := &upstreamtest.DriveLimit{PerFile: perFile, Refuse: m.refuse, RetryAfter: m.after, BanAfter: banAfter, BanFor: time.Minute}
		return upstreamtest.New(file, upstreamtest.Options{PerConn: b.perConn, Latency: 50 * time.Millisecond, Limit: lim}), lim
	}
	var ones, firsts, laters, arias []float64
	for run := range b.runs {
		up, _ := drive()
		took, err := timeGet(player, up.URL+"/film.mp4", b.size)
		up.Close()
		if err != nil {
			return r, fmt.Errorf("one direct connection: %w", err)
		}
		ones = append(ones, float64(b.size)/took.Seconds())

		proxy, err := where.proxy(nil) // a fresh mflow: it knows nothing of this drive
		if err != nil {
			return r, err
		}
		for i, to := range []*[]float64{&firsts, &laters} {
			up, lim := drive()
			took, err := timeGet(player, proxy.url+"/stream?url="+url.QueryEscape(fmt.Sprintf("%s/film.mp4?run=%d", up.URL, run)), b.size)
			up.Close()
			if err != nil {
				proxy.stop()
				return r, fmt.Errorf("mflow: %w", err)
			}
			*to = append(*to, float64(b.size)/took.Seconds())
			r.maxServing = max(r.maxServing, lim.MaxServing())
			if i == 0 {
				r.firstRefused = max(r.firstRefused, lim.Refused())
			} else {
				r.laterRef = max(r.laterRef, lim.Refused())
			}
		}
		proxy.stop()

		if b.aria2c != "" {
			up, lim := drive()
			took, err := b.timeAria2c(where, up.URL+"/film.mp4", b.size)
			up.Close()
			r.ariaRefused = max(r.ariaRefused, lim.Refused())
			if err != nil {
				r.ariaErr = fmt.Sprintf("failed (%d refusals)", lim.Refused())
				continue
			}
			arias = append(arias, float64(b.size)/took.Seconds())
		}
	}
	r.one, r.first, r.later, r.aria = median(ones), median(firsts), median(laters), median(arias)
	return r, nil
}

func (b *bench) printLimited(results []limitedResult) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\nDrives that allow %d requests of a file at once, %s/s each, 50 ms away; risk control refuses everything for a minute after %d refusals. mflow -c %d, first play of the drive (a fresh mflow) and a later one:\n\n",
		perFile, bytesize.Human(b.perConn), banAfter, connections)
	fmt.Println("| drive | one connection | 2 × one (ideal) | mflow first play | ÷ ideal | refused | mflow later play | ÷ ideal | refused | most served at once | aria2c -x4 | ÷ ideal | refused |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		ideal := perFile * r.one
		aria, ariaRatio := "–", "–"
		switch {
		case r.ariaErr != "":
			aria = r.ariaErr
		case r.aria > 0:
			aria, ariaRatio = bytesize.Human(r.aria)+"/s", fmt.Sprintf("%.2f", r.aria/ideal)
		}
		fmt.Printf("| %s | %s/s | %s/s | %s/s | **%.2f** | %d | %s/s | **%.2f** | %d | %d | %s | %s | %d |\n", r.name, bytesize.Human(r.one), bytesize.Human(ideal),
			bytesize.Human(r.first), r.first/ideal, r.firstRefused, bytesize.Human(r.later), r.later/ideal, r.laterRef, r.maxServing, aria, ariaRatio, r.ariaRefused)
	}
}
