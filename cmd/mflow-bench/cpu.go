package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"mflow/internal/bytesize"
)

// cpuFileSize is the file relayed to measure CPU per GiB.
const cpuFileSize = 1 << 30

// cpuModel names the CPU measure for -only.
const cpuModel = "CPU per GiB"

// cpuResult is what relaying a GiB on loopback costs: CPU seconds of the relay and of nginx serving it,
// for mflow and for Go's httputil.ReverseProxy (one connection, no chunks: the least a relay in Go does).
type cpuResult struct {
	mflow, mflowNginx float64 // CPU seconds per GiB
	plain, plainNginx float64
	peakRSS           int64 // mflow's, bytes
}

// relayMain serves as a plain reverse proxy to target on addr: the reference the CPU is compared with,
// run as its own process (mflow-bench -relay ADDR TARGET) so its CPU is its own.
func relayMain(addr, target string) {
	u, err := url.Parse(target)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, http.ListenAndServe(addr, httputil.NewSingleHostReverseProxy(u)))
	os.Exit(1)
}

// measureCPU relays a GiB from nginx on loopback through the mflow binary (-c 4, the default budget) and
// through the plain reverse proxy, each runs times, to curl; medians. It needs nginx and curl.
func (b *bench) measureCPU() (*cpuResult, error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			return nil, nil
		}
		nginx = "/usr/sbin/nginx"
	}
	if _, err := exec.LookPath("curl"); err != nil {
		return nil, nil
	}
	dir, err := os.MkdirTemp("", "mflow-bench-cpu")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	www := filepath.Join(dir, "www")
	os.Mkdir(www, 0o755)
	f, err := os.Create(filepath.Join(www, "film.bin"))
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for range cpuFileSize / len(buf) { // real bytes in the page cache, as a film nginx read before
		f.Write(buf)
	}
	f.Close()
	port := freePort()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off; worker_processes 1; pid %[1]s/nginx.pid; error_log %[1]s/error.log;
events {} http { access_log off; client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
server { listen 127.0.0.1:%[2]d; root %[1]s/www; } }`, dir, port)), 0o644)
	ng := exec.Command(nginx, "-p", dir, "-c", conf)
	if err := ng.Start(); err != nil {
		return nil, err
	}
	defer func() { ng.Process.Kill(); ng.Wait() }()
	origin := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitListening(port); err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "mflow")
	if out, err := exec.Command("go", "build", "-o", bin, "mflow/cmd/mflow").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building mflow: %v: %s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r := &cpuResult{}
	var mflows, mflowNginx, plains, plainNginx []float64
	for range b.runs {
		for _, relay := range []struct {
			cmd       *exec.Cmd
			path      string
			cpu, ngin *[]float64
		}{
			{exec.Command(bin, "--listen", "127.0.0.1", "--port", "0", "--in-memory", "-c", strconv.Itoa(connections), "--log-level", "ERROR"), "/stream?url=" + url.QueryEscape(origin+"/film.bin"), &mflows, &mflowNginx},
			{exec.Command(self, "-relay", "127.0.0.1:0", origin), "/film.bin", &plains, &plainNginx},
		} {
			relayPort := freePort()
			args := relay.cmd.Args
			for i, a := range args {
				if a == "0" && args[i-1] == "--port" {
					args[i] = strconv.Itoa(relayPort)
				}
				if a == "127.0.0.1:0" {
					args[i] = "127.0.0.1:" + strconv.Itoa(relayPort)
				}
			}
			if err := relay.cmd.Start(); err != nil {
				return nil, err
			}
			if err := waitListening(relayPort); err != nil {
				relay.cmd.Process.Kill()
				relay.cmd.Wait()
				return nil, err
			}
			worker := workerOf(ng.Process.Pid)
			before, nginxBefore := cpuSeconds(relay.cmd.Process.Pid), cpuSeconds(worker)
			out, err := exec.Command("curl", "-sSf", "-o", "/dev/null", fmt.Sprintf("http://127.0.0.1:%d%s", relayPort, relay.path)).CombinedOutput()
			after, nginxAfter := cpuSeconds(relay.cmd.Process.Pid), cpuSeconds(worker)
			if relay.cpu == &mflows {
				r.peakRSS = max(r.peakRSS, peakRSSOf(relay.cmd.Process.Pid))
			}
			relay.cmd.Process.Kill()
			relay.cmd.Wait()
			if err != nil {
				return nil, fmt.Errorf("curl through %s: %v: %s", relay.cmd.Path, err, out)
			}
			*relay.cpu = append(*relay.cpu, after-before)
			*relay.ngin = append(*relay.ngin, nginxAfter-nginxBefore)
		}
	}
	r.mflow, r.mflowNginx, r.plain, r.plainNginx = median(mflows), median(mflowNginx), median(plains), median(plainNginx)
	return r, nil
}

// cpuSeconds is the user and system CPU a process has used; 0 when it cannot be read.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // the name may hold spaces
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// workerOf is the pid of nginx's worker, the master's one child (worker_processes 1); 0 when not found.
func workerOf(master int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", master, master))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// peakRSSOf is the most memory a process has held (VmHWM), bytes; 0 when it cannot be read.
func peakRSSOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitListening waits until something listens on the loopback port.
func waitListening(port int) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("nothing listens on port %d after 10 s", port)
}

func (b *bench) printCPU(r *cpuResult) {
	if r == nil {
		return
	}
	fmt.Printf("\nCPU to relay 1 GiB from nginx on loopback to curl, medians of %d runs: mflow -c %d (its default --max-memory) beside Go's httputil.ReverseProxy over one connection, the least a relay in Go does; nginx's own CPU beside each:\n\n", b.runs, connections)
	fmt.Println("| relay | CPU per GiB | nginx's CPU per GiB | relay ÷ plain proxy | peak RSS |")
	fmt.Println("|---|---|---|---|---|")
	fmt.Printf("| mflow -c %d | %.2f s | %.2f s | %.2f | %s |\n", connections, r.mflow, r.mflowNginx, r.mflow/r.plain, bytesize.Human(float64(r.peakRSS)))
	fmt.Printf("| httputil.ReverseProxy | %.2f s | %.2f s | 1 | – |\n", r.plain, r.plainNginx)
}
