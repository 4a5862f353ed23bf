package main

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"mflow/internal/app"
	"mflow/internal/bytesize"
	"mflow/internal/openlist"
	"mflow/internal/openlisttest"
	"mflow/internal/server"
	"mflow/internal/upstreamtest"
)

// openListModel is the chain OpenList's users watch through: a player follows OpenList's /d/ link, whose
// 302 leads to mflow as the storage's download proxy; mflow asks OpenList's /api/fs/link where the file is
// and plays it from the drive, here the 150 ms drive model.
const openListModel = "through OpenList, 150 ms"

// openListResult is what the chain measured, beside /stream?url= on the same drive.
type openListResult struct {
	one, stream, chain float64 // one direct connection, mflow's /stream?url=, the OpenList chain; bytes/s
	calls              int64   // API calls in all the chain's plays
	plays              int
}

// measureOpenList plays the file from the drive model three ways, interleaved: one direct connection,
// /stream?url=, and the OpenList chain; medians. Each chain play is of a path OpenList has not given a
// link for yet, so each pays its API call.
func (b *bench) measureOpenList() (openListResult, error) {
	var r openListResult
	where := loopback()
	player := where.player()
	defer player.CloseIdleConnections()
	file := upstreamtest.RandomFile(b.size)
	opts := upstreamtest.Options{PerConn: b.perConn, Latency: 150 * time.Millisecond}
	drive := upstreamtest.New(file, opts)
	defer drive.Close()
	files := map[string]int64{}
	for run := range b.runs {
		files[fmt.Sprintf("/films/run %d.mp4", run)] = int64(b.size)
	}
	ol := openlisttest.New(openlisttest.Options{Token: "bench", Files: files, Link: func(p string) (string, http.Header) {
		return drive.URL + "/cdn/film.mp4?path=" + url.QueryEscape(p), http.Header{"User-Agent": {"pan.example/1.0"}}
	}})
	defer ol.Close()
	mflow, err := app.New(app.Config{Connections: connections, ChunkSize: chunkSize, MaxMemory: maxMemory, Retry: 5, MaxRedirects: 3, HostConnections: 16,
		OpenList: openlist.Config{URL: ol.URL, Token: "bench"}, Version: "bench", Logger: mflowLog})
	if err != nil {
		return r, err
	}
	defer mflow.Close()
	ln, err := where.listen()
	if err != nil {
		return r, err
	}
	srv := &http.Server{Handler: mflow.Handler, ConnContext: server.ConnContext}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	ol.SetProxyURL(base + "/openlist")
	var ones, streams, chains []float64
	for run := range b.runs {
		for _, p := range []struct {
			to *[]float64
			u  string
		}{
			{&ones, fmt.Sprintf("%s/film.mp4?one=%d", drive.URL, run)},
			{&streams, base + "/stream?url=" + url.QueryEscape(fmt.Sprintf("%s/film.mp4?stream=%d", drive.URL, run))},
			{&chains, ol.URL + "/d" + openlisttest.EncodePath(fmt.Sprintf("/films/run %d.mp4", run))},
		} {
			took, err := timeGet(player, p.u, b.size)
			if err != nil {
				return r, fmt.Errorf("%s: %w", p.u, err)
			}
			*p.to = append(*p.to, float64(b.size)/took.Seconds())
		}
	}
	r.one, r.stream, r.chain, r.calls, r.plays = median(ones), median(streams), median(chains), ol.Calls(), b.runs
	return r, nil
}

func (b *bench) printOpenList(r *openListResult) {
	if r == nil {
		return
	}
	ideal := connections * r.one
	fmt.Printf("\nThrough OpenList: a player follows OpenList's /d/ link to mflow, its download proxy, on the 150 ms drive capping each connection at %s/s; beside /stream?url= on the same drive, interleaved:\n\n", bytesize.Human(b.perConn))
	fmt.Println("| drive | one connection | N × one (ideal) | /stream?url= | ÷ ideal | OpenList /d/ → mflow | ÷ ideal | API calls |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	fmt.Printf("| %s | %s/s | %s/s | %s/s | **%.2f** | %s/s | **%.2f** | %d for %d plays |\n", openListModel, bytesize.Human(r.one), bytesize.Human(ideal),
		bytesize.Human(r.stream), r.stream/ideal, bytesize.Human(r.chain), r.chain/ideal, r.calls, r.plays)
}
