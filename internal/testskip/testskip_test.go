package testskip

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// TestASkipIsSaidWithoutVerbose runs go test, without -v, on a package whose test lacks a program, and
// finds the line in what go test prints.
func TestASkipIsSaidWithoutVerbose(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the line goes through /proc")
	}
	cmd := exec.Command("go", "test", "-count=1", "./testdata/fixture")
	cmd.Env = append(os.Environ(), "CI=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "skipped: frobnicate not installed (apt-get install frobnicate)"); n != 1 {
		t.Errorf("the skip is said %d times, want once:\n%s", n, out)
	}
}
