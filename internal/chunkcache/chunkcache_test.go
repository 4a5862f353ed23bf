package chunkcache

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

func chunkOf(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 1<<20) }

func TestMemoryHitsMissesAndItsBound(t *testing.T) {
	m := NewMemory(16 << 20)
	if _, ok := m.Get("a"); ok {
		t.Fatal("a hit in an empty cache")
	}
	m.Put("a", chunkOf(1))
	if got, ok := m.Get("a"); !ok || !bytes.Equal(got, chunkOf(1)) {
		t.Fatal("a miss, or other bytes, for what was put")
	}
	for i := range 100 {
		m.Put(fmt.Sprint("k", i), chunkOf(i))
		if b := m.Bytes(); b > 16<<20+1<<10 {
			t.Fatalf("after %d puts the cache holds %d bytes, over its 16 MiB bound", i+1, b)
		}
	}
}

func TestTheMemoryCacheYieldsItsRoomAndTakesItBack(t *testing.T) {
	m := NewMemory(16 << 20)
	fill := func() {
		for i := range 40 {
			m.Put(fmt.Sprint("k", i), chunkOf(i))
		}
	}
	fill()
	m.Yield(4 << 20) // playing streams need the budget
	if b := m.Bytes(); b > 4<<20+1<<10 || m.Room() != 4<<20 {
		t.Errorf("yielding to 4 MiB: holds %d bytes, room %d", b, m.Room())
	}
	fill()
	if b := m.Bytes(); b > 4<<20+1<<10 {
		t.Errorf("puts while yielding: holds %d bytes", b)
	}
	m.Yield(1 << 30) // the streams ended: back to its own bound, never past it
	fill()
	if b := m.Bytes(); b < 12<<20 || b > 16<<20+1<<10 || m.Room() != 16<<20 {
		t.Errorf("after the streams ended: holds %d bytes, room %d", b, m.Room())
	}
	m.Yield(-5)
	if m.Bytes() != 0 {
		t.Errorf("no room: holds %d bytes", m.Bytes())
	}
}

func TestDiskKeepsChunksAcrossAReopen(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDisk(dir, 64<<20, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d.Put(fmt.Sprint("k", i), chunkOf(i))
	}
	os.WriteFile(filepath.Join(dir, "ab", "left-by-kill.tmp"), []byte("half"), 0o600)
	d, err = OpenDisk(dir, 64<<20, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got, ok := d.Get(fmt.Sprint("k", i)); !ok || !bytes.Equal(got, chunkOf(i)) {
			t.Errorf("chunk %d lost across a reopen", i)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ab", "left-by-kill.tmp")); !os.IsNotExist(err) {
		t.Error("a temporary file a killed mflow left behind is still there")
	}
}

func TestDiskNeverServesATornOrCorruptChunk(t *testing.T) {
	d, err := OpenDisk(t.TempDir(), 64<<20, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for name, damage := range map[string]func(path string){
		"corrupt": func(path string) {
			raw, _ := os.ReadFile(path)
			raw[len(raw)/2] ^= 0xff
			os.WriteFile(path, raw, 0o600)
		},
		"torn":  func(path string) { os.Truncate(path, 1000) },
		"empty": func(path string) { os.Truncate(path, 0) },
	} {
		d.Put(name, chunkOf(7))
		path := d.path(filename(name))
		damage(path)
		if _, ok := d.Get(name); ok {
			t.Errorf("%s chunk served", name)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s chunk file kept", name)
		}
		d.Put(name, chunkOf(7)) // fetched again, it is kept again
		if got, ok := d.Get(name); !ok || !bytes.Equal(got, chunkOf(7)) {
			t.Errorf("%s chunk not kept after it was fetched again", name)
		}
	}
}

func TestDiskEvictsTheLeastRecentlyUsed(t *testing.T) {
	d, err := OpenDisk(t.TempDir(), 3<<20+3*headerSize, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d.Put(fmt.Sprint("k", i), chunkOf(i))
	}
	d.Get("k0") // k1 is now the least recently used
	d.Put("k3", chunkOf(3))
	if _, ok := d.Get("k1"); ok {
		t.Error("k1, least recently used, was kept")
	}
	for _, k := range []string{"k0", "k2", "k3"} {
		if _, ok := d.Get(k); !ok {
			t.Errorf("%s evicted", k)
		}
	}
	if d.Bytes() > 3<<20+3*headerSize {
		t.Errorf("%d bytes on disk, over the bound", d.Bytes())
	}
}

func TestTheDiskCacheLeavesTheFilesystemItsReserve(t *testing.T) {
	// A 100 GiB disk with 1 GiB and 8 MiB free before the cache writes anything: its reserve is 5 GiB, the
	// larger of 5 % and 1 GiB, so nothing may be kept; with 5 GiB and 8 MiB free, 8 MiB may.
	for _, c := range []struct {
		free int64
		kept int
	}{{1<<30 + 8<<20, 0}, {5<<30 + 8<<20, 7}} {
		d, err := OpenDisk(t.TempDir(), 10<<30, quiet)
		if err != nil {
			t.Fatal(err)
		}
		d.space = func(string) (int64, int64, bool) { return c.free - d.Bytes(), 100 << 30, true }
		for i := range 20 {
			d.Put(fmt.Sprint(i), chunkOf(i))
			if free, total, _ := d.space(""); free < reserve(total) && d.Bytes() > 0 {
				t.Fatalf("after %d puts %d bytes are free, within the %d-byte reserve", i+1, free, reserve(total))
			}
		}
		kept := 0
		for i := range 20 {
			if _, ok := d.Get(fmt.Sprint(i)); ok {
				kept++
			}
		}
		if kept != c.kept {
			t.Errorf("%d bytes free: %d chunks kept, want %d", c.free, kept, c.kept)
		}
		if c.kept > 0 {
			if _, ok := d.Get("19"); !ok {
				t.Error("the newest chunk was not kept: the oldest must go first")
			}
		}
	}
	if got := reserve(10 << 30); got != 1<<30 {
		t.Errorf("the reserve of a 10 GiB disk: %d, want 1 GiB", got)
	}
}
