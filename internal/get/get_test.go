package get_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/access"
	"mflow/internal/app"
	"mflow/internal/get"
	"mflow/internal/source"
	"mflow/internal/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func downloader(t *testing.T) *get.Downloader {
	mflow, err := app.New(app.Config{Connections: 4, ChunkSize: 64 << 10, Retry: 3, MaxRedirects: 3, HostConnections: 16, Version: "test",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mflow.Close() })
	return &get.Downloader{Play: mflow.Play, Checkpoint: 20 * time.Millisecond}
}

// progress records what a download reports, and can stop it after some bytes, as Ctrl-C would.
type progress struct {
	name       string
	size, have int64
	added      atomic.Int64
	stopAt     int64
	stop       context.CancelFunc
}

func (p *progress) Start(name string, size, have int64) { p.name, p.size, p.have = name, size, have }
func (p *progress) Add(n int64) {
	if p.added.Add(n) >= p.stopAt && p.stop != nil {
		p.stop()
	}
}

func linkTo(u *upstreamtest.Upstream, path string) source.Link {
	return source.Link{Location: source.Location{URL: u.URL + path}}
}

func TestAnInterruptedDownloadResumesAndFetchesTheFileAboutOnce(t *testing.T) {
	file := upstreamtest.RandomFile(4 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{PerConn: 4 << 20})
	defer u.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "film.mkv")
	d := downloader(t)

	ctx, cancel := context.WithCancel(t.Context())
	first := &progress{stopAt: 2 << 20, stop: cancel}
	if _, err := d.Get(ctx, linkTo(u, "/film.mkv?sig=1"), out, first); err == nil {
		t.Fatal("an interrupted download reported success")
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after an interruption %s exists (%v): it would look whole", out, err)
	}
	if _, err := os.Stat(out + ".part"); err != nil {
		t.Fatalf("no .part after an interruption: %v", err)
	}
	servedFirst := u.Served()

	second := &progress{stopAt: -1}
	if _, err := d.Get(t.Context(), linkTo(u, "/film.mkv?sig=2"), out, second); err != nil { // a link signed anew
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("the resumed file is not the file (%d bytes, %v)", len(got), err)
	}
	if second.have == 0 || second.have+second.added.Load() != int64(len(file)) {
		t.Errorf("the second run kept %d bytes and added %d; want it to resume, not start over", second.have, second.added.Load())
	}
	// Fetched about once: what the first run had fetched but not made durable, and the probes, at most.
	if total, bound := u.Served(), int64(len(file))+servedFirst-second.have+64<<10; total > bound {
		t.Errorf("the upstream served %d bytes for a %d-byte file, want at most %d", total, len(file), bound)
	}
	if _, err := os.Stat(out + ".part.mflow"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the state file is left after a whole download: %v", err)
	}
}

func TestAChangedFileStartsOver(t *testing.T) {
	old := upstreamtest.RandomFile(1 << 20)
	u := upstreamtest.New(old, upstreamtest.Options{})
	defer u.Close()
	out := filepath.Join(t.TempDir(), "f.bin")
	d := downloader(t)
	ctx, cancel := context.WithCancel(t.Context())
	if _, err := d.Get(ctx, linkTo(u, "/f.bin"), out, &progress{stopAt: 512 << 10, stop: cancel}); err == nil {
		t.Fatal("an interrupted download reported success")
	}
	file := upstreamtest.RandomFile(1<<20 + 1) // another version: another size and ETag
	v2 := upstreamtest.New(file, upstreamtest.Options{})
	defer v2.Close()
	p := &progress{stopAt: -1}
	if _, err := d.Get(t.Context(), linkTo(v2, "/f.bin"), out, p); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, file) || p.have != 0 {
		t.Errorf("a changed file: kept %d bytes of the old one; the result is %d bytes", p.have, len(got))
	}
}

func TestNamesAndRefusals(t *testing.T) {
	file := upstreamtest.RandomFile(1000)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	dir := t.TempDir()
	t.Chdir(dir)
	d := downloader(t)
	path, err := d.Get(t.Context(), linkTo(u, "/some/dir/My%20Film.mkv?sig=x"), "", &progress{stopAt: -1})
	if err != nil || path != "My Film.mkv" {
		t.Fatalf("named %q, %v; want the link's last segment", path, err)
	}
	if _, err := d.Get(t.Context(), linkTo(u, "/some/dir/My%20Film.mkv"), "", &progress{stopAt: -1}); !errors.Is(err, get.ErrExists) {
		t.Errorf("downloading over an existing file: %v, want ErrExists", err)
	}
	missing := upstreamtest.New(file, upstreamtest.Options{Fault: func(int64, *http.Request) upstreamtest.Fault {
		return upstreamtest.Fault{Status: http.StatusNotFound}
	}})
	defer missing.Close()
	if _, err := d.Get(t.Context(), linkTo(missing, "/gone.mkv"), "", &progress{stopAt: -1}); err == nil {
		t.Error("a 404 downloaded")
	}
	if _, err := os.Stat("gone.mkv"); !errors.Is(err, os.ErrNotExist) {
		t.Error("a 404 left a file")
	}
}

func TestAServersFileNameIsMadeSafe(t *testing.T) {
	for given, want := range map[string]string{
		"My Film.mkv":                     "My Film.mkv",
		"\x1b]0;TITLE\x07\x1b[31mred.txt": "]0;TITLE[31mred.txt",
		"a\nb.txt":                        "ab.txt",
		".bashrc":                         "bashrc",
		"../../etc/passwd":                "passwd",
		`C:\Windows\evil.exe`:             "evil.exe",
		"film.mkv. ":                      "film.mkv",
		"\u202egnp.exe":                   "gnp.exe", // a right-to-left override would show it as exe.png
		"...":                             "download",
		"":                                "download",
		"\xff\xfe":                        "download",
		strings.Repeat("é", 150):          strings.Repeat("é", 100),
	} {
		if got := get.SafeName(given); got != want {
			t.Errorf("SafeName(%q) = %q, want %q", given, got, want)
		}
	}
	file := upstreamtest.RandomFile(100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Disposition", `attachment; filename*=UTF-8''%1B%5D0%3BTITLE%07.bashrc%0Ax`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(file))
	}))
	defer srv.Close()
	t.Chdir(t.TempDir())
	path, err := downloader(t).Get(t.Context(), source.Link{Location: source.Location{URL: srv.URL + "/f", From: access.Loopback}}, "", &progress{stopAt: -1})
	if err != nil || path != "]0;TITLE.bashrcx" {
		t.Errorf("named %q, %v", path, err)
	}
}
