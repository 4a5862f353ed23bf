// Package testskip skips a test for what this machine lacks (a program, root) and says so in a line the
// person running `go test ./...` sees without -v: go test shows a passing package's output only with -v,
// and a suite that passes without its real players would otherwise look like one that played.
package testskip

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// said keeps each line to one showing per test binary, however many tests it skips.
var said sync.Map

// Unless skips t with why, said once, unless ok (the condition that lets the test run) holds. Under CI,
// which installs everything (.ci/run), it fails instead: a CI run must never pass by skipping.
func Unless(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s: CI installs what the suite needs and runs it as root", why)
	}
	Say("skipped: " + why)
	t.Skip(why)
}

// Say shows line once, where go test's own output goes.
func Say(line string) {
	if _, dup := said.LoadOrStore(line, true); dup {
		return
	}
	w, done := goCommandOutput()
	defer done()
	fmt.Fprintln(w, line)
}

// goCommandOutput is the go command's standard error when it ran this test binary, so the line reaches
// the person (or CI's log) even when go test keeps the binary's own output to itself; else this binary's.
func goCommandOutput() (io.Writer, func()) {
	if runtime.GOOS == "linux" {
		parent := "/proc/" + strconv.Itoa(os.Getppid())
		if name, err := os.ReadFile(parent + "/comm"); err == nil && strings.TrimSpace(string(name)) == "go" {
			// O_APPEND: a log file the go command's standard error goes to is added to, never overwritten.
			if f, err := os.OpenFile(parent+"/fd/2", os.O_WRONLY|os.O_APPEND, 0); err == nil {
				return f, func() { f.Close() }
			}
		}
	}
	return os.Stderr, func() {}
}
