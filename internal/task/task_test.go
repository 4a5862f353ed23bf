package task

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/access"
	"mflow/internal/link"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func sized(context.Context, link.Link) (int64, error) { return 1234, nil }

var settings = Settings{Connections: 4, UserAgent: "mflow-test"}

func TestTasksSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, settings, sized)
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := s.Add([]string{"http://h/a.mp4"}, map[string]string{"header": "Cookie: a=b\n", "out": "A.mp4"}, -1, access.Loopback)
	paused, _ := s.Add([]string{"http://h/b.mp4"}, map[string]string{"pause": "true"}, -1, access.Loopback)
	gone, _ := s.Add([]string{"http://h/c.mp4"}, nil, -1, access.Loopback)
	if _, err := s.Remove(gone); err != nil {
		t.Fatal(err)
	}
	st, err := s.Begin(context.Background(), kept)
	if err != nil {
		t.Fatal(err)
	}
	st.Delivered(999)
	st.End()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) { // the background probe
		if v, _ := s.Get(kept); v.Size == 1234 {
			break
		} else if time.Now().After(deadline) {
			t.Fatal("the background probe never sized the task")
		}
	}
	s.Close()

	s, err = Open(dir, settings, sized)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	active, waiting, stopped := s.Lists()
	if len(active) != 0 || len(waiting) != 2 || len(stopped) != 1 {
		t.Fatalf("after a restart: %d active, %d waiting, %d stopped", len(active), len(waiting), len(stopped))
	}
	a, b := waiting[0], waiting[1]
	if a.GID != kept || a.Status != Waiting || a.Delivered != 999 || a.Size != 1234 || a.Name != "A.mp4" || a.Options["header"] != "Cookie: a=b\n" {
		t.Errorf("first task after a restart: %+v", a)
	}
	if b.GID != paused || b.Status != Paused {
		t.Errorf("second task after a restart: %+v", b)
	}
	if v, err := s.Get(gone); err != nil || v.Status != Removed {
		t.Errorf("a removed task announced as started: %+v, %v; want it kept as removed", v, err)
	}
}

func TestALockedStoreIsAClearError(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, settings, sized)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	began := time.Now()
	_, err = Open(dir, settings, sized)
	if err == nil || !strings.Contains(err.Error(), "in use by another mflow") || time.Since(began) > 5*time.Second {
		t.Fatalf("second Open: %v after %v", err, time.Since(began))
	}
}

func TestACorruptStoreIsAClearError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tasks.db"), []byte(strings.Repeat("not a database ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, settings, sized)
	if err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("Open of a corrupt file: %v", err)
	}
}

func TestConnectionsFromSplitAndMaxConnections(t *testing.T) {
	s := NewStore(settings, sized)
	defer s.Close()
	for opts, want := range map[string]int{"": 4, "split=8": 8, "max-connection-per-server=2": 2, "split=16,max-connection-per-server=3": 3} {
		o := map[string]string{}
		for kv := range strings.SplitSeq(opts, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				o[k] = v
			}
		}
		gid, err := s.Add([]string{"http://h/f"}, o, -1, access.Loopback)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Begin(context.Background(), gid)
		if err != nil {
			t.Fatal(err)
		}
		if st.Connections != want {
			t.Errorf("%q: %d connections, want %d", opts, st.Connections, want)
		}
		st.End()
	}
}

func TestTheStoreIsBounded(t *testing.T) {
	s := NewStore(Settings{Connections: 4, MaxStopped: 2, MaxWaiting: 3}, sized)
	defer s.Close()
	var gids []string
	for range 3 {
		gid, err := s.Add([]string{"http://h/a.mp4"}, nil, -1, access.Loopback)
		if err != nil {
			t.Fatal(err)
		}
		gids = append(gids, gid)
	}
	if _, err := s.Add([]string{"http://h/a.mp4"}, nil, -1, access.Loopback); !errors.Is(err, ErrTooMany) || !strings.Contains(err.Error(), "--max-waiting") {
		t.Errorf("a fourth waiting task: %v, want ErrTooMany naming --max-waiting", err)
	}
	for _, gid := range gids { // announced: each becomes a stopped, removed task
		if _, err := s.Remove(gid); err != nil {
			t.Fatal(err)
		}
	}
	_, _, stopped := s.Lists()
	if len(stopped) != 2 || stopped[0].GID != gids[1] || stopped[1].GID != gids[2] {
		t.Errorf("stopped tasks %v, want the two newest of %v", stopped, gids)
	}
	if _, err := s.Get(gids[0]); err == nil {
		t.Error("the oldest stopped task was kept past --max-download-result")
	}
}

func TestATasksOptionsAreBounded(t *testing.T) {
	s := NewStore(Settings{Connections: 4}, sized)
	defer s.Close()
	big := strings.Repeat("Cookie: "+strings.Repeat("x", 100)+"\n", 200) // 22 KB of header lines
	var opt *OptionError
	if _, err := s.Add([]string{"http://h/a.mp4"}, map[string]string{"header": big}, -1, access.Loopback); !errors.As(err, &opt) {
		t.Errorf("22 KB of headers: %v, want an option error", err)
	}
	lines := strings.Repeat("X-A: b\n", 60) // small, but too many lines
	if _, err := s.Add([]string{"http://h/a.mp4"}, map[string]string{"header": lines}, -1, access.Loopback); !errors.As(err, &opt) {
		t.Errorf("60 header lines: %v, want an option error", err)
	}
	gid, err := s.Add([]string{"http://h/a.mp4"}, map[string]string{"header": "Cookie: a=b\n"}, -1, access.Loopback)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // changes that add up past the bound
		err = s.ChangeOptions(gid, map[string]string{"user-agent": strings.Repeat("u", 6000), "referer": strings.Repeat("r", 6000)})
	}
	if err != nil {
		t.Fatal(err) // each change replaces the same options: within the bound
	}
	if err := s.ChangeOptions(gid, map[string]string{"out": strings.Repeat("o", 6000)}); !errors.As(err, &opt) {
		t.Errorf("options adding up to over 16 KiB: %v, want an option error", err)
	}
}
