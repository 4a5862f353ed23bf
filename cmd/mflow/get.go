package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/mattn/go-isatty"
	"github.com/spf13/pflag"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"mflow/internal/access"
	"mflow/internal/app"
	"mflow/internal/bytesize"
	"mflow/internal/get"
	"mflow/internal/logging"
	"mflow/internal/source"
)

// runGet is "mflow get [flags] URL": a download with the engine players stream through. It returns 0
// only when the whole file is there, and 130 when interrupted (Ctrl-C).
func runGet(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("mflow get", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	var (
		output                           string
		connections, retry, maxRedirects int
		chunkSize, minSpeed              int64
		headers                          []string
		insecure                         bool
	)
	fs.StringVarP(&output, "output", "o", "", "the file to write (default: the name from Content-Disposition or the URL)")
	fs.VarP(newIntFlag(&connections, 4, 1, 64), "connections", "c", "upstream connections")
	fs.VarP(bytesize.NewValue(&chunkSize, 1<<20), "chunk-size", "s", "chunk size: 512K, 1M, 2M…")
	fs.VarP(newIntFlag(&retry, 5, 0, 100), "retry", "r", "retries of one chunk before the download fails")
	fs.Var(bytesize.NewValue(&minSpeed, 0), "min-speed", "replace a connection slower than this per second for 3 s (0 = off)")
	fs.StringArrayVarP(&headers, "header", "H", nil, `a header to send, as "Name: value" (repeatable): a drive's Cookie, Referer, User-Agent`)
	fs.BoolVar(&insecure, "insecure", false, "skip TLS certificate verification")
	fs.Var(newIntFlag(&maxRedirects, 3, 0, 30), "max-redirects", "redirects followed per request")
	help := fs.BoolP("help", "h", false, "print this help and exit")
	usage := func() string {
		return "Usage: mflow get [flags] URL\n\nDownloads URL over several connections. Run it again after an interruption to resume.\n\nFlags:\n" + fs.FlagUsages()
	}
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "mflow get: %v (see mflow get --help)\n", err)
		return 2
	}
	if *help {
		fmt.Fprint(stdout, usage())
		return 0
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "mflow get: want one URL, got %d arguments (see mflow get --help)\n", fs.NArg())
		return 2
	}
	u, err := url.Parse(fs.Arg(0))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "mflow get: %q is not an http or https URL\n", fs.Arg(0))
		return 2
	}
	h := http.Header{}
	for _, line := range headers {
		name, value, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "" {
			fmt.Fprintf(stderr, "mflow get: --header %q is not \"Name: value\"\n", line)
			return 2
		}
		h.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}

	terminal := false
	if f, ok := stderr.(*os.File); ok {
		terminal = isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
	}
	log := logging.NewTo(stderr, slog.LevelWarn, logging.FormatText, terminal) // problems only: the progress says the rest
	mflow, err := app.New(app.Config{Connections: connections, ChunkSize: chunkSize, Retry: retry, MinSpeed: minSpeed, MaxRedirects: maxRedirects, RelayNoRange: true,
		HostConnections: max(16, connections), Insecure: insecure, Version: versionString(), Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "mflow get: %v\n", err)
		return 1
	}
	defer mflow.Close()
	var progress reporter
	if terminal {
		progress = newBar(ctx, stderr)
	} else {
		progress = newLines(stderr)
	}
	d := &get.Downloader{Play: mflow.Play}
	// The user's own machine: every address it could reach itself may be fetched.
	l := source.Link{Location: source.Location{URL: u.String(), Header: h, From: access.Loopback}}
	path, err := d.Get(ctx, l, output, progress)
	progress.finish(err)
	if err != nil {
		fmt.Fprintf(stderr, "mflow get: %s\n", printable(err.Error())) // it may quote what the server said
		if ctx.Err() != nil {
			return 130 // interrupted, as a shell reports Ctrl-C
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", printable(path))
	return 0
}

// printable is s with its control characters escaped (\x1b), so that what a server wrote (a status line,
// a file name) cannot retitle or recolour the terminal.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
			b.WriteString(strings.Trim(strconv.QuoteRuneToASCII(r), "'"))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// reporter shows a download's progress.
type reporter interface {
	get.Reporter
	finish(err error) // the download is over
}

// bar is the progress bar on a terminal: name, bytes, percentage, speed and ETA.
type bar struct {
	ctx   context.Context
	out   io.Writer
	p     *mpb.Progress
	bar   *mpb.Bar
	mu    sync.Mutex  // protects the following fields, which the bar's decorators share
	rate  *recentRate // the speed the bar shows, and its ETA
	speed float64     // the speed of the frame being drawn
}

func newBar(ctx context.Context, out io.Writer) *bar { return &bar{ctx: ctx, out: out} }

func (b *bar) Start(name string, size, have int64) {
	b.p = mpb.NewWithContext(b.ctx, mpb.WithOutput(b.out), mpb.WithWidth(40), mpb.WithRefreshRate(200*time.Millisecond))
	total := size
	if total < 0 {
		total = 0 // unknown: the bar grows
	}
	b.rate = &recentRate{span: rateSpan, samples: []rateSample{{time.Now(), have}}}
	b.bar = b.p.AddBar(total,
		mpb.PrependDecorators(decor.Name(name+" "), decor.CountersKibiByte("% .1f / % .1f")),
		mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace),
			decor.Any(func(st decor.Statistics) string { // measures the frame's speed, which the ETA then uses
				b.mu.Lock()
				defer b.mu.Unlock()
				b.speed = b.rate.observe(time.Now(), st.Current)
				return bytesize.Human(b.speed) + "/s"
			}, decor.WCSyncSpace),
			decor.Any(func(st decor.Statistics) string {
				b.mu.Lock()
				defer b.mu.Unlock()
				return " ETA " + eta(st.Total-st.Current, b.speed)
			})))
	b.bar.SetCurrent(have)
}

func (b *bar) Add(n int64) { b.bar.IncrInt64(n) }

// rateSpan is how far back the bar's speed looks: long enough to span the bursts of an in-order writer
// (a chunk arrives whole, several at once), short enough to follow a change of the drive's speed.
const rateSpan = 5 * time.Second

// recentRate is a download's speed over its last rateSpan, from the byte counts it observes. A moving
// average of each write's speed, as the bar had, weighs a burst's writes over the wait before it: it
// showed a third of the true speed.
type recentRate struct {
	span    time.Duration
	samples []rateSample // oldest first; the first is the newest at or before the span's start
}

type rateSample struct {
	at    time.Time
	bytes int64
}

// observe notes that bytes were in hand at now and returns the bytes per second since the span began
// (since the first sample, while younger).
func (r *recentRate) observe(now time.Time, bytes int64) float64 {
	r.samples = append(r.samples, rateSample{now, bytes})
	for len(r.samples) > 2 && now.Sub(r.samples[1].at) >= r.span {
		r.samples = r.samples[1:]
	}
	first := r.samples[0]
	if d := now.Sub(first.at).Seconds(); d > 0 {
		return float64(bytes-first.bytes) / d
	}
	return 0
}

// eta is the time left for left bytes at speed bytes/s, to the second; "?" when it cannot be told.
func eta(left int64, speed float64) string {
	if left <= 0 {
		return "0s"
	}
	if speed <= 0 {
		return "?"
	}
	return time.Duration(float64(left) / speed * float64(time.Second)).Round(time.Second).String()
}

func (b *bar) finish(err error) {
	if b.bar == nil {
		return
	}
	if err != nil {
		b.bar.Abort(false)
	} else {
		b.bar.SetTotal(-1, true)
	}
	b.p.Wait()
}

// lines is the progress when stderr is not a terminal: a plain line every few seconds and at the end.
type lines struct {
	out   io.Writer
	every time.Duration

	mu    sync.Mutex // protects the following fields
	name  string
	size  int64
	have  int64 // bytes so far
	began time.Time
	start int64 // have when this run began
	shown time.Time
}

func newLines(out io.Writer) *lines { return &lines{out: out, every: 5 * time.Second} }

func (l *lines) Start(name string, size, have int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.name, l.size, l.have, l.start, l.began, l.shown = name, size, have, have, time.Now(), time.Now()
	if have > 0 {
		fmt.Fprintf(l.out, "%s: resuming after %s\n", name, bytesize.Human(float64(have)))
	}
}

func (l *lines) Add(n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.have += n
	if now := time.Now(); now.Sub(l.shown) >= l.every {
		l.shown = now
		l.show(now)
	}
}

// show writes the progress line. Call with mu held.
func (l *lines) show(now time.Time) {
	speed := float64(l.have-l.start) / max(now.Sub(l.began).Seconds(), 1e-3)
	line := fmt.Sprintf("%s: %s", l.name, bytesize.Human(float64(l.have)))
	if l.size > 0 {
		line += fmt.Sprintf(" of %s (%.1f%%)", bytesize.Human(float64(l.size)), 100*float64(l.have)/float64(l.size))
	}
	line += ", " + bytesize.Human(speed) + "/s"
	if l.size > 0 && speed > 0 {
		line += ", ETA " + eta(l.size-l.have, speed)
	}
	fmt.Fprintln(l.out, line)
}

func (l *lines) finish(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.name != "" && err == nil {
		l.show(time.Now())
	}
}
