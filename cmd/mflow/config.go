package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// Settings come from four places, each over the one after it: the command line, the environment
// (MFLOW_RPC_SECRET for --rpc-secret, …), the configuration file, mflow's defaults. The file is aria2's
// kind: name=value lines named after the long flags, # comments and blank lines. When --conf-path does not
// name one, mflow reads mflow.conf in systemd's CONFIGURATION_DIRECTORY, else in the user's configuration
// folder ($XDG_CONFIG_HOME/mflow on Linux), if it is there.

// envPrefix starts the name of every environment variable mflow reads a setting from.
const envPrefix = "MFLOW_"

// unsettable are the flags neither the file nor the environment sets: they ask for something else than
// serving.
var unsettable = map[string]bool{"help": true, "version": true, "conf-path": true}

// envName is the environment variable of a flag: --rpc-secret is MFLOW_RPC_SECRET.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// loadSettings sets the flags the command line left unset from the environment and, below it, the
// configuration file (confPath, or the default one when confPath is ""). It returns the file it read, ""
// when none. An error names the file and line, or the variable, and what is wrong.
func loadSettings(fl *pflag.FlagSet, confPath string, env map[string]string) (string, error) {
	explicit := confPath != ""
	if !explicit {
		confPath = env[envName("conf-path")]
		explicit = confPath != ""
	}
	if !explicit {
		confPath = defaultConfPath(env)
	}
	file, err := readConf(fl, confPath)
	switch {
	case (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) && !explicit:
		confPath = "" // no file where one would be looked for: the defaults stand
	case err != nil:
		return "", err
	}
	var setErr error
	fl.VisitAll(func(f *pflag.Flag) {
		if setErr != nil || f.Changed || unsettable[f.Name] {
			return
		}
		if v, ok := env[envName(f.Name)]; ok {
			if err := fl.Set(f.Name, v); err != nil {
				setErr = fmt.Errorf("%s=%q: %v", envName(f.Name), v, err) // pflag's error names the flag and the form
			}
			return
		}
		if s, ok := file[f.Name]; ok {
			if err := fl.Set(f.Name, s.value); err != nil {
				setErr = fmt.Errorf("%s:%d: %v", confPath, s.line, err) // pflag's error names the flag and the form
			}
		}
	})
	return confPath, setErr
}

// setting is one line of the configuration file.
type setting struct {
	value string
	line  int
}

// readConf reads a configuration file's settings by flag name. A line that is not name=value, or names no
// flag, is an error saying where; the error of a file that cannot be read wraps the system's.
func readConf(fl *pflag.FlagSet, path string) (map[string]setting, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	defer f.Close()
	out := map[string]setting{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("%s:%d: want name=value, as port=6800, not %q", path, n, line)
		}
		if fl.Lookup(name) == nil || unsettable[name] {
			return nil, fmt.Errorf("%s:%d: %q is not a setting of mflow%s", path, n, name, suggest(fl, name))
		}
		out[name] = setting{value: unquote(strings.TrimSpace(value)), line: n}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// unquote takes off one pair of quotes around a value, as a shell would: rpc-secret="a b" is the secret
// a b. A value with quotes of its own inside keeps them.
func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}

// unknownEnv says of each MFLOW_ variable of env that sets nothing that it changes nothing, and which it
// may have meant, so a typo in MFLOW_RPC_SECRET is said rather than leaving mflow without its secret.
func unknownEnv(fl *pflag.FlagSet, env map[string]string) []string {
	known := map[string]bool{}
	fl.VisitAll(func(f *pflag.Flag) {
		if !unsettable[f.Name] {
			known[envName(f.Name)] = true
		}
	})
	known[envName("conf-path")] = true
	var out []string
	for name := range env {
		if strings.HasPrefix(name, envPrefix) && !known[name] {
			said := name + " is set but is not a setting of mflow: it changes nothing"
			if flag := closest(fl, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, envPrefix), "_", "-"))); flag != "" {
				said += "; did you mean " + envName(flag) + "?"
			}
			out = append(out, said)
		}
	}
	slices.Sort(out)
	return out
}

// suggest is "; did you mean …?" naming the flag closest to name, or "" when none is close.
func suggest(fl *pflag.FlagSet, name string) string {
	if best := closest(fl, name); best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return ""
}

// closest is the settable flag whose name is nearest to name, or "" when none is within half its length.
func closest(fl *pflag.FlagSet, name string) string {
	best, dist := "", len(name)/2+1
	fl.VisitAll(func(f *pflag.Flag) {
		if d := editDistance(name, f.Name); d < dist && !unsettable[f.Name] {
			best, dist = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// defaultConfPath is where the configuration file is looked for when none is named.
func defaultConfPath(env map[string]string) string {
	if d := firstDir(env["CONFIGURATION_DIRECTORY"]); d != "" {
		return filepath.Join(d, "mflow.conf")
	}
	d, err := userDir(env, "XDG_CONFIG_HOME", ".config", "AppData")
	if err != nil {
		return ""
	}
	return filepath.Join(d, "mflow", "mflow.conf")
}

// defaultStateDir is where tasks are kept unless --state-dir says otherwise: systemd's STATE_DIRECTORY,
// else $XDG_STATE_HOME/mflow, ~/.local/state/mflow on Linux, the user's own folder for programs elsewhere.
func defaultStateDir(env map[string]string) (string, error) {
	if d := firstDir(env["STATE_DIRECTORY"]); d != "" {
		return d, nil
	}
	d, err := userDir(env, "XDG_STATE_HOME", filepath.Join(".local", "state"), "LocalAppData")
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "mflow"), nil
}

// userDir is the user's folder of a kind: the XDG variable xdg, else home/under on Linux and the other
// Unixes, the Windows variable windows, or ~/Library/Application Support on macOS.
func userDir(env map[string]string, xdg, under, windows string) (string, error) {
	if d := env[xdg]; d != "" {
		return d, nil
	}
	if runtime.GOOS == "windows" {
		if d := env[windows]; d != "" {
			return d, nil
		}
		return "", fmt.Errorf("%%%s%% is not set", windows)
	}
	home := env["HOME"]
	if home == "" {
		return "", errors.New("$HOME is not set")
	}
	if info, err := os.Stat(home); err != nil || !info.IsDir() {
		// A service account's HOME often names a folder nobody made; mflow would make it unseen.
		return "", fmt.Errorf("$HOME (%s) is not a folder", home)
	}
	if runtime.GOOS == "darwin" {
		return filepath.Join(home, "Library", "Application Support"), nil
	}
	return filepath.Join(home, under), nil
}

// firstDir is the first folder of a systemd directory variable, which lists them separated by colons.
func firstDir(dirs string) string {
	first, _, _ := strings.Cut(dirs, ":")
	return first
}

// environ is the process environment as a map.
func environ(pairs []string) map[string]string {
	env := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// secretExposed says why the configuration file read exposes a secret (the RPC's, OpenList's token) to
// other users of this machine, or "" when it does not: it sets one and others may read it. Windows has no
// such bits.
func secretExposed(confPath string) string {
	if confPath == "" || runtime.GOOS == "windows" {
		return ""
	}
	info, err := os.Stat(confPath)
	if err != nil || info.Mode().Perm()&0o004 == 0 {
		return ""
	}
	b, err := os.ReadFile(confPath)
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		name, _, ok := strings.Cut(strings.TrimSpace(line), "=")
		if name = strings.TrimSpace(name); ok && (name == "rpc-secret" || name == "openlist-token") {
			return fmt.Sprintf("%s holds the %s and every user of this machine may read it (mode %04o): chmod 600 %s, or give it as %s", confPath, name, info.Mode().Perm(), confPath, envName(name))
		}
	}
	return ""
}
