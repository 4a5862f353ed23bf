package rpc

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"mflow/internal/source"
	"mflow/internal/task"
)

func TestConnectionsFromSplitAndMaxConnections(t *testing.T) {
	d := Defaults{Connections: 4}
	for opts, want := range map[string]int{"": 4, "split=8": 8, "max-connection-per-server=2": 2, "split=16,max-connection-per-server=3": 3, "split=200": 64} {
		o := map[string]string{}
		for kv := range strings.SplitSeq(opts, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				o[k] = v
			}
		}
		spec, err := d.Interpret([]string{"http://h/f"}, o)
		if err != nil {
			t.Fatal(err)
		}
		if spec.Connections != want {
			t.Errorf("%q: %d connections, want %d", opts, spec.Connections, want)
		}
	}
}

func TestATasksOptionsAreBounded(t *testing.T) {
	var opt *optionError
	big := strings.Repeat("Cookie: "+strings.Repeat("x", 100)+"\n", 200) // 22 KB of header lines
	if _, err := normalize(map[string]string{"header": big}); !errors.As(err, &opt) {
		t.Errorf("22 KB of headers: %v, want an option error", err)
	}
	lines := strings.Repeat("X-A: b\n", 60) // small, but too many lines
	if _, err := normalize(map[string]string{"header": lines}); !errors.As(err, &opt) {
		t.Errorf("60 header lines: %v, want an option error", err)
	}
	// changeOption merges, then checks the whole: changes that replace the same options stay within the
	// bound, options adding up past it do not.
	tasks, err := task.New(task.Config{}, task.NewMemory())
	if err != nil {
		t.Fatal(err)
	}
	defer tasks.Close()
	h := &Handler{Tasks: tasks}
	call := func(method string, args ...any) (any, error) {
		var params []json.RawMessage
		for _, a := range args {
			b, _ := json.Marshal(a)
			params = append(params, b)
		}
		return h.call(call{ctx: t.Context()}, method, params)
	}
	gid, err := call("aria2.addUri", []string{"http://h/a.mp4"}, map[string]string{"header": "Cookie: a=b"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := call("aria2.changeOption", gid, map[string]string{"user-agent": strings.Repeat("u", 6000), "referer": strings.Repeat("r", 6000)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := call("aria2.changeOption", gid, map[string]string{"out": strings.Repeat("o", 6000)}); !errors.As(err, &opt) {
		t.Errorf("options adding up to over 16 KiB: %v, want an option error", err)
	}
}

func TestFileNamesAreUnescapedOnce(t *testing.T) {
	// files[].path and the player's Content-Disposition both come from source.FileName.
	for raw, want := range map[string]string{
		"http://h/d/My%20Film.mkv?sig=1": "My Film.mkv",
		"http://h/d/100%2525.mkv":        "100%25.mkv",
		"http://h/":                      "",
	} {
		if got := source.FileName(raw); got != want {
			t.Errorf("FileName(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestEveryMethodListedIsAnsweredAndEveryOneAnsweredIsListed(t *testing.T) {
	for _, name := range methodNames {
		if methods[name] == nil {
			t.Errorf("%s is listed but not answered", name)
		}
	}
	for name := range methods {
		if !slices.Contains(methodNames, name) {
			t.Errorf("%s is answered but not listed", name)
		}
	}
}
