package chunkcache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"mflow/internal/atomicfile"
)

// Disk keeps chunks as files in a folder, across restarts, bounded in bytes, the least recently used
// evicted first. Each file is written whole (a temporary file, then a rename) and carries a checksum, so
// a torn or corrupt chunk is found when read, removed and fetched again, never served.
type Disk struct {
	Lookups Lookups // lookups, for metrics

	dir      string
	maxBytes int64
	log      *slog.Logger
	// space reports the space left on the cache's filesystem and its size (diskSpace; tests fake it).
	space func(dir string) (free, total int64, ok bool)

	mu    sync.Mutex        // protects the following fields; no file is touched while it is held
	files map[string]*entry // by file name
	bytes int64             // the size of all files
}

// entry is one chunk file.
type entry struct {
	size int64     // bytes on disk
	used time.Time // last written or read
}

// header is what precedes a chunk's bytes in its file.
const (
	magic      = "MFC1"
	headerSize = 4 + 8 + 4 // magic, length, CRC-32C
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// OpenDisk opens (or creates) a disk cache in dir of at most maxBytes. Temporary files that a killed
// mflow left behind are removed.
func OpenDisk(dir string, maxBytes int64, log *slog.Logger) (*Disk, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	d := &Disk{dir: dir, maxBytes: maxBytes, log: log, files: map[string]*entry{}, space: diskSpace}
	err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		switch {
		case strings.HasSuffix(path, atomicfile.TempSuffix):
			os.Remove(path)
		case strings.HasSuffix(path, ".chunk"):
			if info, err := de.Info(); err == nil {
				d.files[filepath.Base(path)] = &entry{size: info.Size(), used: info.ModTime()}
				d.bytes += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("chunk cache %s: %w", dir, err)
	}
	d.removeFiles(d.evict())
	return d, nil
}

// filename is the file name of key: a hash, so any key makes a safe name.
func filename(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16]) + ".chunk"
}

func (d *Disk) path(name string) string { return filepath.Join(d.dir, name[:2], name) }

// Get reads the chunk stored under key, checking it whole; a bad file is removed.
func (d *Disk) Get(key string) ([]byte, bool) {
	n := filename(key)
	e := d.lookup(n)
	if e == nil {
		d.Lookups.count(false)
		return nil, false
	}
	raw, err := os.ReadFile(d.path(n))
	data, err := unpack(raw, err)
	if err != nil {
		d.log.Warn("chunk cache: dropping a bad chunk file", "file", d.path(n), "err", err)
		d.drop(n)
		d.Lookups.count(false)
		return nil, false
	}
	now := time.Now()
	os.Chtimes(d.path(n), now, now) // the order of eviction survives a restart
	d.touch(e, now)
	d.Lookups.count(true)
	return data, true
}

func (d *Disk) lookup(n string) *entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.files[n]
}

func (d *Disk) touch(e *entry, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e.used = now
}

// unpack checks a chunk file's header and checksum and returns its bytes.
func unpack(raw []byte, err error) ([]byte, error) {
	switch {
	case err != nil:
		return nil, err
	case len(raw) < headerSize || string(raw[:4]) != magic:
		return nil, errors.New("not a chunk file")
	}
	length := binary.BigEndian.Uint64(raw[4:12])
	sum := binary.BigEndian.Uint32(raw[12:16])
	data := raw[headerSize:]
	if uint64(len(data)) != length {
		return nil, fmt.Errorf("torn: %d of %d bytes", len(data), length)
	}
	if crc32.Checksum(data, castagnoli) != sum {
		return nil, errors.New("checksum mismatch")
	}
	return data, nil
}

// Put writes data under key: to a temporary file first, renamed into place once whole.
func (d *Disk) Put(key string, data []byte) {
	n := filename(key)
	path := d.path(n)
	size := int64(headerSize + len(data))
	if !d.roomFor(size) {
		return
	}
	if err := d.write(path, data); err != nil {
		d.log.Warn("chunk cache: cannot write a chunk", "file", path, "err", err)
		return
	}
	d.removeFiles(d.record(n, size))
}

// reserve is what the cache leaves free on its filesystem of total bytes, whatever --cache-dir-size
// says: the larger of 5 % and 1 GiB, so a cache larger than the disk never fills it for the system, the
// task store and the logs.
func reserve(total int64) int64 { return max(total/20, 1<<30) }

// roomFor makes room for a file of size within the filesystem's reserve, evicting the cache's own least
// recently used files as far as needed, and reports whether there is room.
func (d *Disk) roomFor(size int64) bool {
	free, total, ok := d.space(d.dir)
	if !ok {
		return true
	}
	short := reserve(total) - (free - size)
	if short <= 0 {
		return true
	}
	gone, freed := d.shrink(short)
	d.removeFiles(gone)
	if freed < short {
		d.log.Debug("chunk cache: not kept, the disk is nearly full", "dir", d.dir, "free", free, "reserve", reserve(total))
		return false
	}
	return true
}

// shrink forgets the least recently used files until they add up to want bytes or none is left, and
// returns them, to be removed, and their size.
func (d *Disk) shrink(want int64) (gone []string, freed int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d._evictTo(max(d.bytes-want, 0))
}

// record counts a file just written, and returns the files eviction chose, to be removed.
func (d *Disk) record(n string, size int64) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.files[n]; old != nil {
		d.bytes -= old.size
	}
	d.files[n] = &entry{size: size, used: time.Now()}
	d.bytes += size
	return d._evict()
}

func (d *Disk) write(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	var hdr [headerSize]byte
	copy(hdr[:], magic)
	binary.BigEndian.PutUint64(hdr[4:], uint64(len(data)))
	binary.BigEndian.PutUint32(hdr[12:], crc32.Checksum(data, castagnoli))
	return atomicfile.Write(path, hdr[:], data)
}

// drop forgets and removes a chunk file.
func (d *Disk) drop(n string) {
	func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d._forget(n)
	}()
	d.removeFiles([]string{n})
}

// _forget stops counting a file.
func (d *Disk) _forget(n string) {
	if e := d.files[n]; e != nil {
		d.bytes -= e.size
		delete(d.files, n)
	}
}

// evict forgets the least recently used files until the cache fits, and returns them to be removed.
func (d *Disk) evict() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d._evict()
}

func (d *Disk) _evict() []string {
	gone, _ := d._evictTo(d.maxBytes)
	return gone
}

// _evictTo forgets the least recently used files until the cache holds at most limit bytes, and returns
// them and their size.
func (d *Disk) _evictTo(limit int64) (gone []string, freed int64) {
	if d.bytes <= limit {
		return nil, 0
	}
	names := make([]string, 0, len(d.files))
	for n := range d.files {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return d.files[a].used.Compare(d.files[b].used) })
	for _, n := range names {
		if d.bytes <= limit {
			break
		}
		freed += d.files[n].size
		d._forget(n)
		gone = append(gone, n)
	}
	return gone, freed
}

// removeFiles removes files the cache no longer counts. A Put of the same chunk in between may lose its
// file too; its next Get then finds it missing and fetches it again.
func (d *Disk) removeFiles(names []string) {
	for _, n := range names {
		os.Remove(d.path(n))
	}
}

// Bytes is the size of the files the cache holds now.
func (d *Disk) Bytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bytes
}
