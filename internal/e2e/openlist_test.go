package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"mflow/internal/openlisttest"
	"mflow/internal/testskip"
	"mflow/internal/upstreamtest"
)

// openListChain is the chain OpenList's users watch through: a stand-in OpenList (openlisttest, from its
// protocol) whose storage's Download proxy URL is mflow, its files on drives that cap each connection,
// and a real mflow with --openlist.
type openListChain struct {
	ol    *openlisttest.Server
	mflow *mflowRun
	files map[string][]byte // by OpenList path
}

// openListFiles are the films, by OpenList path: names that need every kind of escaping.
var openListFiles = map[string]string{"/电影/长 片 #1 100%.mp4": "long.mp4", "/films/film?.mp4": "film.mp4"}

// newOpenListChain starts the chain. Each link OpenList gives lives for life (0: for ever), then the drive
// refuses it (403), as a drive's signed link.
func newOpenListChain(t *testing.T, perConn float64, life time.Duration) *openListChain {
	c := &openListChain{files: map[string][]byte{}}
	sizes := map[string]int64{}
	drives := map[string]*upstreamtest.Upstream{}
	for p, name := range openListFiles {
		b, err := os.ReadFile(filepath.Join(env.dir, "www", "files", name))
		if err != nil {
			t.Fatal(err)
		}
		c.files[p], sizes[p] = b, int64(len(b))
		drive := upstreamtest.New(b, upstreamtest.Options{PerConn: perConn, Fault: func(_ int64, r *http.Request) upstreamtest.Fault {
			deadline, _ := strconv.ParseInt(r.URL.Query().Get("expires"), 10, 64)
			if r.Header.Get("User-Agent") != "pan.example/1.0" || time.Now().UnixMilli() > deadline {
				return upstreamtest.Fault{Status: http.StatusForbidden}
			}
			return upstreamtest.Fault{}
		}})
		t.Cleanup(drive.Close)
		drives[p] = drive
	}
	c.ol = openlisttest.New(openlisttest.Options{Token: "t0ken-e2e", Files: sizes, Link: func(p string) (string, http.Header) {
		deadline := time.Now().Add(time.Hour)
		if life > 0 {
			deadline = time.Now().Add(life)
		}
		return drives[p].URL + "/cdn/file?expires=" + strconv.FormatInt(deadline.UnixMilli(), 10), http.Header{"User-Agent": {"pan.example/1.0"}}
	}})
	t.Cleanup(c.ol.Close)
	c.mflow = startMflow(t, nil, []string{"MFLOW_OPENLIST_TOKEN=t0ken-e2e"}, "--in-memory", "-c", "4", "--openlist", c.ol.URL)
	c.ol.SetProxyURL(c.mflow.base + "/openlist/") // as a user types it, the trailing slash doubling the path's
	return c
}

// d is OpenList's /d/ link of p, the one strm files and browsers hold.
func (c *openListChain) d(p string) string { return c.ol.URL + "/d" + openlisttest.EncodePath(p) }

func TestOpenListsUsersPlayThroughMflowWithRealClients(t *testing.T) {
	c := newOpenListChain(t, 4<<20, 0)
	const long, film = "/电影/长 片 #1 100%.mp4", "/films/film?.mp4"

	// The README's check: OpenList's link answers with a redirect to mflow.
	out, err := exec.CommandContext(t.Context(), "curl", "-sSI", c.d(long)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 302") || !strings.Contains(string(out), "Location: "+c.mflow.base+"/openlist//") {
		t.Errorf("curl -I %s: %v\n%s", c.d(long), err, out)
	}
	// curl following the redirect gets the film byte for byte.
	got := filepath.Join(t.TempDir(), "film")
	if out, err := exec.CommandContext(t.Context(), "curl", "-sSfL", "-o", got, c.d(long)).CombinedOutput(); err != nil {
		t.Fatalf("curl -L: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, c.files[long]) {
		t.Errorf("curl -L got %d bytes unlike the film's %d", len(b), len(c.files[long]))
	}
	// ffprobe reads the duration, and ffmpeg seeks into the film and decodes, through the redirect.
	out, err = exec.CommandContext(t.Context(), tools["ffprobe"], "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", c.d(long)).CombinedOutput()
	if d, perr := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err != nil || perr != nil || d < 59.9 || d > 60.2 {
		t.Errorf("ffprobe: %q, %v", out, err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), tools["ffmpeg"], "-v", "error", "-ss", "40", "-i", c.d(long), "-t", "2", "-f", "null", "-")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("ffmpeg -ss 40: %v: %s", err, stderr.String())
	}
	// mpv seeks as a person does: starts at 40 s, plays 2 s.
	if tools["mpv"] == "" || tools["rclone"] == "" {
		testskip.Say("skipped: mpv or rclone not installed, the OpenList test played without them (bash .ci/e2e-deps)")
	}
	if mpv := tools["mpv"]; mpv != "" {
		out, err := exec.CommandContext(t.Context(), mpv, "--no-config", "--vo=null", "--ao=null", "--start=40", "--length=2", "--msg-level=all=error", c.d(long)).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("mpv --start=40: %v: %s", err, out)
		}
	}
	// rclone's webdav backend lists OpenList's share and copies a film through the redirect to mflow.
	if rclone := tools["rclone"]; rclone != "" {
		remote := []string{"--config", filepath.Join(t.TempDir(), "rclone.conf"), "--webdav-url", c.ol.URL + "/dav"}
		out, err := exec.CommandContext(t.Context(), rclone, append([]string{"lsjson", "-R", ":webdav:"}, remote...)...).Output()
		var listed []struct {
			Path string
			Size int64
		}
		if err != nil || json.Unmarshal(out, &listed) != nil {
			t.Fatalf("rclone lsjson: %v: %s", err, out)
		}
		seen := map[string]int64{}
		for _, l := range listed {
			seen["/"+l.Path] = l.Size
		}
		for p, b := range c.files {
			if seen[p] != int64(len(b)) {
				t.Errorf("rclone lists %q with size %d, want %d (%s)", p, seen[p], len(b), out)
			}
		}
		dst := filepath.Join(t.TempDir(), "copied.mp4")
		if out, err := exec.CommandContext(t.Context(), rclone, append([]string{"copyto", ":webdav:" + film, dst}, remote...)...).CombinedOutput(); err != nil {
			t.Fatalf("rclone copyto: %v: %s", err, out)
		}
		if b, _ := os.ReadFile(dst); !bytes.Equal(b, c.files[film]) {
			t.Errorf("rclone copied %d bytes unlike the film's %d", len(b), len(c.files[film]))
		}
	}
	if !strings.Contains(c.mflow.logs.String(), "openlist=") {
		t.Errorf("mflow's log names no OpenList path")
	}
	if strings.Contains(c.mflow.logs.String(), "t0ken-e2e") {
		t.Errorf("mflow's log shows the OpenList token")
	}
}

func TestAnOpenListLinkThatExpiresEveryFewSecondsPlaysThrough(t *testing.T) {
	// Each link dies 1.5 s after OpenList gave it; the drive brings 512 KiB/s per connection, so a play of
	// the 15 MB film takes 7 s or more and outlives its link several times.
	c := newOpenListChain(t, 512<<10, 1500*time.Millisecond)
	const long = "/电影/长 片 #1 100%.mp4"
	got := filepath.Join(t.TempDir(), "film")
	if out, err := exec.CommandContext(t.Context(), "curl", "-sSfL", "-o", got, c.d(long)).CombinedOutput(); err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, c.files[long]) {
		t.Fatalf("the player got %d bytes unlike the film's %d", len(b), len(c.files[long]))
	}
	if n := strings.Count(c.mflow.logs.String(), "signed link expired; resolved it again"); n < 2 || c.ol.Calls() < 3 {
		t.Errorf("the link was resolved again %d times, OpenList asked %d times: the play did not outlive its link", n, c.ol.Calls())
	}
	if n := strings.Count(c.mflow.logs.String(), "drive limit learned"); n > 0 {
		t.Errorf("a link expiring was taken %d times for the drive's limit", n)
	}
	// ffmpeg decodes the whole film through links that keep dying.
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), tools["ffmpeg"], "-v", "error", "-i", c.d(long), "-f", "null", "-")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("ffmpeg: %v: %s", err, stderr.String())
	}
}
