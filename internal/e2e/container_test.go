package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"mflow/internal/testskip"
)

// podman runs podman as this machine allows: runc (crun refuses a kernel with hybrid cgroups) and
// cgroupfs (no systemd to ask).
func podman(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "podman", append([]string{"--runtime", "runc", "--cgroup-manager", "cgroupfs"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestTheContainerImagePlaysAndAnswersTheRPC builds the image from the README's Dockerfile as a NAS user
// would (the static binary first, nothing downloaded), runs it as the README says, and plays through it.
func TestTheContainerImagePlaysAndAnswersTheRPC(t *testing.T) {
	_, err := exec.LookPath("podman")
	testskip.Unless(t, err == nil && os.Geteuid() == 0, "podman or root missing, the container image is not tested (bash .ci/e2e-deps, as root)")
	// The build context as the repository's root has it: the Dockerfile, its ignore file, the binary.
	ctxDir := t.TempDir()
	for _, f := range []string{"Dockerfile", ".dockerignore", "contrib/container/volume/README.txt"} {
		b, err := os.ReadFile(filepath.Join("..", "..", f))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(ctxDir, f)), 0o755)
		os.WriteFile(filepath.Join(ctxDir, f), b, 0o644)
	}
	build := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", filepath.Join(ctxDir, "mflow"), "mflow/cmd/mflow")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the static binary: %v: %s", err, out)
	}
	image := fmt.Sprintf("localhost/mflow-e2e:%d", time.Now().UnixNano())
	if out, err := podman(t, "build", "--format", "docker", "-q", "-t", image, ctxDir); err != nil {
		t.Fatalf("podman build: %v: %s", err, out)
	}
	t.Cleanup(func() { podman(t, "rmi", "-f", image) })

	// The host's network, so the container reaches nginx on this machine's loopback as a player here does.
	port := freePort()
	name := strings.ReplaceAll(strings.TrimPrefix(image, "localhost/"), ":", "-")
	if out, err := podman(t, "run", "-d", "--name", name, "--network", "host",
		"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
		"-e", "MFLOW_PORT="+strconv.Itoa(port), "-e", "MFLOW_RPC_SECRET=s3", "-e", "TZ=Asia/Shanghai",
		image, "--listen", "127.0.0.1", "-c", "4"); err != nil {
		t.Fatalf("podman run: %v: %s", err, out)
	}
	t.Cleanup(func() {
		podman(t, "rm", "-f", "-v", name)
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	if err := waitHTTP(base + "/"); err != nil {
		logs, _ := podman(t, "logs", name)
		t.Fatalf("%v; the container's log:\n%s", err, logs)
	}

	// A link plays byte for byte.
	status, body, err := get(t, base+"/stream?url="+url.QueryEscape(env.upstream+"/files/data.bin"), "")
	if err != nil || status != 200 || !bytes.Equal(body, env.data) {
		t.Errorf("a link through the container: %d, %d bytes, %v; want 200 and the file's %d", status, len(body), err, len(env.data))
	}
	// The JSON-RPC answers with the secret, and its task plays.
	_, v := rpcPost(t, base+"/jsonrpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"aria2.addUri","params":["token:s3",[%q]]}`, env.upstream+"/files/data.bin"))
	gid, _ := v.(map[string]any)["result"].(string)
	if gid == "" {
		t.Fatalf("aria2.addUri through the container: %v", v)
	}
	status, body, err = get(t, base+"/stream?gid="+gid, "bytes=1000-1999")
	if err != nil || status != 206 || !bytes.Equal(body, env.data[1000:2000]) {
		t.Errorf("the task's range through the container: %d, %d bytes, %v", status, len(body), err)
	}

	// It runs as mflow's own user, keeps its tasks in the /data volume, and its health check passes.
	out, _ := podman(t, "inspect", "--format", "{{.Config.User}} {{json .Mounts}}", name)
	user, mounts, _ := strings.Cut(out, " ")
	if user != "65532:65532" {
		t.Errorf("the container runs as %q, want 65532:65532", user)
	}
	var volumes []struct{ Destination, Source string }
	json.Unmarshal([]byte(mounts), &volumes)
	kept := false
	for _, m := range volumes {
		if _, err := os.Stat(filepath.Join(m.Source, "tasks.db")); err == nil && m.Destination == "/data" {
			kept = true
		}
	}
	if !kept {
		t.Errorf("no tasks.db in the /data volume: %s", mounts)
	}
	if out, err := podman(t, "healthcheck", "run", name); err != nil {
		t.Errorf("the health check: %v: %s", err, out)
	}
	// Every line of its log is mflow's own, dated in the time zone asked for.
	logs, _ := podman(t, "logs", name)
	for line := range strings.Lines(logs) {
		if len(line) < 24 || line[4] != '-' || line[13] != ':' || !strings.Contains(" INF WRN ERR DBG ", line[23:28]) {
			t.Errorf("a line not in mflow's form: %q", line)
		}
	}
	if shanghai := time.Now().In(time.FixedZone("CST", 8*3600)).Format("2006-01-02 15"); !strings.Contains(logs, shanghai) {
		t.Errorf("the log's times are not in TZ=Asia/Shanghai (%s…):\n%s", shanghai, logs)
	}
	if !strings.Contains(logs, "tasks are kept in /data/tasks.db") || !strings.Contains(logs, `cache="10G on disk in /cache"`) {
		t.Errorf("the start-up lines do not name the volumes:\n%s", logs)
	}
}
