package engine_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/httprange"
	"mflow/internal/upstreamtest"
)

func TestASecondPlayIsServedFromTheCache(t *testing.T) {
	file := upstreamtest.RandomFile(3 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	e := newEngine(t, u, 256<<10, 4)
	e.Cache = chunkcache.NewMemory(64 << 20)
	span := httprange.Span{Start: 300_000, End: 2_500_000} // starts and ends inside chunks
	req := engine.Job{Target: target(u), Span: span, FileKey: "film"}
	for play := range 2 {
		before := u.Requests()
		got, _, err := stream(t, e, req)
		if err != nil {
			t.Fatal(err)
		}
		checkBytes(t, got, file, span)
		if n := u.Requests() - before; play == 1 && n != 0 {
			t.Errorf("the second play sent %d chunk requests upstream, want none", n)
		}
	}
	other := req
	other.FileKey = "film, another version"
	before := u.Requests()
	if _, _, err := stream(t, e, other); err != nil {
		t.Fatal(err)
	}
	if u.Requests() == before {
		t.Error("another version of the file was served from the first version's chunks")
	}
}

func TestAChunkTheCacheKeepsIsNeverOverwrittenByAnotherFilm(t *testing.T) {
	// The memory cache keeps a chunk's buffer as it is: the engine must never hand it to another chunk.
	films := [][]byte{upstreamtest.RandomFile(2 << 20), upstreamtest.RandomFile(2 << 20)}
	var ups []*upstreamtest.Upstream
	for _, f := range films {
		u := upstreamtest.New(f, upstreamtest.Options{})
		defer u.Close()
		ups = append(ups, u)
	}
	e := newEngine(t, ups[0], 256<<10, 4)
	e.Cache = chunkcache.NewMemory(64 << 20)
	span := httprange.Span{Start: 0, End: 2<<20 - 1}
	for _, i := range []int{0, 1, 0} { // film 0, film 1 through the buffers film 0 let go of, film 0 from the cache
		streamOK(t, e, engine.Job{Target: target(ups[i]), Span: span, FileKey: fmt.Sprint("film ", i)}, films[i])
	}
}

func TestDiskCacheSurvivesARestartAndRefetchesACorruptChunk(t *testing.T) {
	file := upstreamtest.RandomFile(2 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	dir := t.TempDir()
	span := httprange.Span{Start: 0, End: int64(len(file)) - 1}
	req := engine.Job{Target: target(u), Span: span, FileKey: "film"}
	play := func() int64 {
		disk, err := chunkcache.OpenDisk(dir, 1<<30, quiet) // a new mflow on the same folder
		if err != nil {
			t.Fatal(err)
		}
		e := newEngine(t, u, 256<<10, 4)
		e.Cache = chunkcache.Tiered{Disk: disk}
		before := u.Requests()
		got, _, err := stream(t, e, req)
		if err != nil {
			t.Fatal(err)
		}
		checkBytes(t, got, file, span)
		return u.Requests() - before
	}
	if n := play(); n < 1 || n > 8 {
		t.Fatalf("the first play sent %d requests, want one to eight (at most one per chunk)", n)
	}
	if n := play(); n != 0 {
		t.Errorf("after a restart the play sent %d requests, want none", n)
	}
	var files []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	raw, _ := os.ReadFile(files[3])
	raw[len(raw)-1] ^= 1
	os.WriteFile(files[3], raw, 0o600)
	if n := play(); n != 1 {
		t.Errorf("with one corrupt chunk file the play sent %d requests, want exactly one", n)
	}
}

// slowDisk is a cache whose Get of one key blocks until released, as a busy disk would.
type slowDisk struct {
	key     string
	blocked chan struct{} // closed when the slow Get starts
	release chan struct{}
	once    sync.Once
}

func (d *slowDisk) Get(key string) ([]byte, bool) {
	if strings.HasSuffix(key, d.key) {
		d.once.Do(func() { close(d.blocked) })
		<-d.release
	}
	return nil, false
}

func (d *slowDisk) Put(string, []byte) bool { return false }

func TestASlowCacheDoesNotHoldUpTheFilesOtherPlayers(t *testing.T) {
	file := upstreamtest.RandomFile(1 << 20)
	u := upstreamtest.New(file, upstreamtest.Options{})
	defer u.Close()
	e := newEngine(t, u, 64<<10, 2)
	disk := &slowDisk{key: "\x0015", blocked: make(chan struct{}), release: make(chan struct{})}
	e.Cache = disk
	slow := make(chan error, 1)
	go func() { // its lookup of the last chunk blocks
		_, err := e.Stream(t.Context(), io.Discard, engine.Job{Target: target(u), FileKey: "film", Span: httprange.Span{Start: 15 << 16, End: 1<<20 - 1}})
		slow <- err
	}()
	<-disk.blocked
	// Another player of the same file, elsewhere in it, must not wait for that disk.
	other := make(chan struct{})
	go func() {
		defer close(other)
		streamOK(t, e, engine.Job{Target: target(u), FileKey: "film", Span: httprange.Span{Start: 0, End: 3<<16 - 1}}, file)
	}()
	select {
	case <-other:
	case <-time.After(30 * time.Second):
		close(disk.release)
		t.Fatal("a player waited for another player's cache lookup")
	}
	close(disk.release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
}
