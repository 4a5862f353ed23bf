// Package get downloads a link to a file with the engine players stream through. A download interrupted
// (Ctrl-C, a crash, a lost network) resumes where it stopped when run again, never fetches again what it
// has, and never leaves a file that looks whole but is not: the bytes go to FILE.part, with a small state
// file beside it (FILE.part.mflow, as aria2's .aria2), and FILE appears only once every byte is in.
package get

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"mflow/internal/atomicfile"
	"mflow/internal/httprange"
	"mflow/internal/play"
	"mflow/internal/source"
	"mflow/internal/upstream"
)

// Reporter is told how a download goes. Add runs on every write: keep it cheap.
type Reporter interface {
	Start(name string, size, have int64) // size -1 when unknown; have: bytes kept from an earlier run
	Add(n int64)
}

// Downloader downloads links. Its fields are set before the first Get.
type Downloader struct {
	// Play resolves links and streams their bytes.
	Play *play.Service
	// Checkpoint is how often the bytes written are made durable and the state file updated, so that a
	// crash costs at most this much fetching again. Default 1 s.
	Checkpoint time.Duration
}

// ErrExists refuses to overwrite a file that is there already.
var ErrExists = errors.New("the file exists")

// state is what the state file keeps: which file version FILE.part holds, and how many of its first bytes
// are on disk.
type state struct {
	URL          string `json:"url"` // without its query or credentials, for the person reading it
	Size         int64  `json:"size"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Done         int64  `json:"done"` // bytes at the start of FILE.part that are on disk
}

// Get downloads l to output, or, when output is "", to a file in the current folder named by the answer's
// Content-Disposition or the link. It returns the file's path, which exists only when the download is
// whole.
func (d *Downloader) Get(ctx context.Context, l source.Link, output string, progress Reporter) (string, error) {
	pb, err := d.Play.Open(ctx, play.Request{Link: l, First: httprange.Span{Start: -1, End: -1}})
	if err != nil {
		if ctx.Err() != nil {
			return "", errors.New("interrupted before the first byte; run the same command again to start")
		}
		return "", err
	}
	defer pb.Close()
	file := pb.File
	path := output
	if path == "" {
		path = nameOf(file)
	}
	if _, err := os.Stat(path); err == nil {
		return path, fmt.Errorf("%s: %w; remove it, or name another with -o", path, ErrExists)
	}
	part, statePath := path+".part", path+".part.mflow"
	want := state{URL: upstream.Redact(l.URL), Size: file.Version.Size, ETag: file.Version.ETag, LastModified: file.Version.LastModified}
	have := int64(0)
	resumable := file.Ranges && file.Version.Size > 0
	if resumable {
		have = kept(part, statePath, want)
	}
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return path, err
	}
	defer f.Close()
	// Bytes past what the state file vouches for may be torn by a crash: they are fetched again.
	if err := f.Truncate(have); err != nil {
		return path, err
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return path, err
	}
	progress.Start(filepath.Base(path), file.Version.Size, have)

	out := &fileWriter{f: f, progress: progress}
	out.done.Store(have)
	save := func() error {
		n := out.done.Load() // what Write returned for: on the page cache, made durable by the Sync below
		if err := f.Sync(); err != nil {
			return err
		}
		if !resumable {
			return nil
		}
		s := want
		s.Done = n
		return writeState(statePath, s)
	}
	var res play.Result
	switch {
	case file.Version.Size == 0:
		res.Outcome = play.Done
	case !resumable && file.Version.Size < 0:
		res = d.play(ctx, pb, out, httprange.Span{Start: 0, End: -1}, save)
	default:
		if have < file.Version.Size {
			res = d.play(ctx, pb, out, httprange.Span{Start: have, End: file.Version.Size - 1}, save)
		} else {
			res.Outcome = play.Done
		}
	}
	saveErr := save()
	got := out.done.Load()
	if res.Outcome != play.Done {
		if ctx.Err() != nil {
			return path, fmt.Errorf("interrupted after %d bytes; run the same command again to resume", got)
		}
		return path, fmt.Errorf("failed after %d bytes: %w", got, res.Err)
	}
	if saveErr != nil {
		return path, saveErr
	}
	if file.Version.Size >= 0 && got != file.Version.Size {
		return path, fmt.Errorf("%s holds %d bytes of %d; run the same command again to fetch the rest", part, got, file.Version.Size)
	}
	if err := f.Close(); err != nil {
		return path, err
	}
	if err := os.Rename(part, path); err != nil {
		return path, err
	}
	os.Remove(statePath)
	return path, nil
}

// play streams span into out, saving a checkpoint every Checkpoint while it runs.
func (d *Downloader) play(ctx context.Context, pb *play.Playback, out *fileWriter, span httprange.Span, save func() error) play.Result {
	every := d.Checkpoint
	if every <= 0 {
		every = time.Second
	}
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_ = save() // a failed checkpoint costs a little more fetching after a crash; the last one reports
			case <-stop:
				return
			}
		}
	}()
	res := pb.Play(ctx, out, "mflow get", span)
	close(stop)
	<-stopped
	return res
}

// kept is how many bytes of part an earlier run left on disk for the same file version: 0 when there is
// no state file, when it describes another version, or when part is shorter than it says.
func kept(part, statePath string, want state) int64 {
	b, err := os.ReadFile(statePath)
	if err != nil {
		return 0
	}
	var s state
	if json.Unmarshal(b, &s) != nil || s.Size != want.Size || s.ETag != want.ETag || s.LastModified != want.LastModified {
		return 0
	}
	info, err := os.Stat(part)
	if err != nil || s.Done < 0 || info.Size() < s.Done || s.Done > want.Size {
		return 0
	}
	return s.Done
}

// writeState replaces the state file whole: a new file, synced, renamed over the old.
func writeState(path string, s state) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b)
}

// fileWriter writes a download's bytes in order and counts them.
type fileWriter struct {
	f        *os.File
	done     atomic.Int64 // bytes of the file written, from its start
	progress Reporter
}

func (w *fileWriter) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.done.Add(int64(n))
	w.progress.Add(int64(n))
	return n, err
}

// nameOf is the file name for a download: the answer's Content-Disposition filename, else the link's
// name, made safe (SafeName).
func nameOf(file play.File) string {
	name := file.Name
	if _, params, err := mime.ParseMediaType(file.Disposition); err == nil && params["filename"] != "" {
		name = params["filename"]
	}
	return SafeName(name)
}

// SafeName makes a name a server gave safe to use as a file in the current folder and to print: no path
// (separators and what is before the last one go), no control character (a terminal would obey escape
// sequences), no leading dot (a hidden file, or .bashrc), no trailing dot or space (Windows drops them),
// at most 200 bytes; "download" when nothing is left.
func SafeName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar || unicode.Is(unicode.Bidi_Control, r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(name, ""))
	name = strings.TrimRight(strings.TrimLeft(name, ". "), ". ")
	for len(name) > 200 {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	if name == "" {
		return "download"
	}
	return name
}
