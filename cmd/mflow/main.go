// Command mflow is a parallel chunked HTTP streaming proxy: a player asks it for a range of a file, and it
// fetches that range over several upstream connections at once and plays it back in order.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"mflow/internal/access"
	"mflow/internal/app"
	"mflow/internal/bytesize"
	"mflow/internal/cluster"
	"mflow/internal/engine"
	"mflow/internal/engine/limit"
	"mflow/internal/logging"
	"mflow/internal/server"
	"mflow/internal/task"
	"mflow/internal/upstream/slots"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the first signal shuts down; a second one ends the process at once
	}()
	os.Exit(run(ctx, os.Args[1:], environ(os.Environ()), os.Stdout, os.Stderr))
}

// options are the command line's values: mflow's settings, bound straight into app.Config's fields, and
// what only this command uses (where it listens and logs, which stores and caches it opens).
type options struct {
	app.Config

	listen       string
	logLevel     string
	logFormat    string
	cache        bool
	cacheSize    int64
	cacheDir     string
	cacheDirSize int64
	drives       []limit.Rule
	allowTarget  []netip.Prefix
	denyTarget   []netip.Prefix
	allowHosts   []string
	stateDir     string
	inMemory     bool
	redis        string

	confPath   string   // --conf-path
	confRead   string   // the configuration file read; "" when none
	unknownEnv []string // what to say of MFLOW_ variables that name no setting
}

// parseFlags reads args, then what the environment (env) and the configuration file set (see
// loadSettings). It returns help or version text to print, or an error of one line naming the flag and the
// form it takes.
func parseFlags(args []string, env map[string]string) (options, string, error) {
	var o options
	fs := pflag.NewFlagSet("mflow", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.StringVar(&o.listen, "listen", "0.0.0.0", "address to listen on")
	fs.VarP(newIntFlag(&o.Port, 80, 0, 65535), "port", "p", "port to listen on")
	fs.VarP(newIntFlag(&o.Connections, 4, 1, 64), "connections", "c", "upstream connections per stream (and chunks read ahead)")
	fs.VarP(bytesize.NewValue(&o.ChunkSize, 1<<20), "chunk-size", "s", "chunk size: 512K, 1M, 0.5M, 2M…")
	fs.Var(bytesize.NewValue(&o.ReadAhead, engine.DefaultReadAhead), "read-ahead", "the most one stream reads ahead of its player, and holds in memory (K, M, G)")
	fs.Var(bytesize.NewValue(&o.MaxMemory, defaultMaxMemory), "max-memory", "what every stream's read-ahead and the memory cache hold together (K, M, G; 0 = no bound): streams share it, the cache yields to them")
	fs.VarP(newIntFlag(&o.Retry, 5, 0, 100), "retry", "r", "retries of one chunk before the stream fails")
	o.logLevel = "INFO"
	fs.Var(levelFlag{&o.logLevel}, "log-level", "DEBUG, INFO, WARNING, ERROR or CRITICAL")
	o.logFormat = logging.FormatText
	fs.Var(choiceFlag{&o.logFormat, []string{logging.FormatText, logging.FormatJSON}}, "log-format", "text: lines a person reads; json: one JSON object a line, for a log collector")
	fs.BoolVar(&o.cache, "cache", false, "keep fetched chunks in memory, up to --cache-size")
	fs.Var(bytesize.NewValue(&o.cacheSize, 256<<20), "cache-size", "the memory cache's size (K, M, G)")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "keep fetched chunks on disk in this folder, across restarts")
	fs.Var(bytesize.NewValue(&o.cacheDirSize, 10<<30), "cache-dir-size", "the disk cache's size (K, M, G); the least recently used chunks go first")
	fs.Var(bytesize.NewValue(&o.MinSpeed, 0), "min-speed", "replace a connection slower than this per second for 3 s (100K, 0.5M; 0 = off)")
	fs.Var(newIntFlag(&o.MaxRedirects, 3, 0, 30), "max-redirects", "redirects followed per request")
	fs.Var(newIntFlag(&o.HostConnections, 16, 1, 256), "host-connections", "connections to one upstream host across all streams")
	fs.Var(driveFlag{&o.drives}, "drive", "connections a drive allows one file, as DOMAIN=N, comma-separated or repeated (115cdn.net=2); mflow knows 115, PikPak, Baidu, Quark, Aliyun and Thunder, and learns the rest from their refusals")
	fs.BoolVar(&o.Insecure, "insecure", false, "skip TLS certificate verification upstream")
	fs.BoolVar(&o.RelayNoRange, "relay-no-range", false, "relay upstreams without Range support over one connection instead of answering 403")
	fs.StringVar(&o.RPCSecret, "rpc-secret", "", "aria2 JSON-RPC secret: calls must send token:SECRET; without one, only this machine is answered")
	fs.BoolVar(&o.RPCListenAll, "rpc-listen-all", false, "answer the JSON-RPC from any address even without --rpc-secret (aria2's flag)")
	fs.BoolVar(&o.RPCAllowOriginAll, "rpc-allow-origin-all", false, "let web pages of any site use the JSON-RPC, with CORS headers (aria2's flag; AriaNg served from elsewhere needs it)")
	fs.Var(prefixFlag{&o.allowTarget}, "allow-target", "addresses mflow may fetch from for any player, as comma-separated CIDRs (192.168.1.0/24,fd00::/8)")
	fs.Var(prefixFlag{&o.denyTarget}, "deny-target", "addresses mflow never fetches from, as comma-separated CIDRs")
	fs.StringSliceVar(&o.allowHosts, "allow-host", nil, "names clients may reach mflow by besides its IP addresses, localhost and this machine's name (nas.fritz.box, .example.com for its subdomains, * for any)")
	fs.Var(prefixFlag{&o.Proxies.Trusted}, "trusted-proxy", "reverse proxies whose X-Forwarded-For names the client, as comma-separated CIDRs (127.0.0.1 for nginx on this machine)")
	fs.StringVar(&o.Proxies.Header, "real-ip-header", "X-Forwarded-For", "the one header a --trusted-proxy names its client in: X-Forwarded-For, X-Real-IP or Forwarded (nginx's real_ip_header)")
	fs.Var(newIntFlag(&o.MaxStreams, 64, 1, 100000), "max-streams", "streams played at once; more are answered 503")
	fs.DurationVar(&o.PlayerTimeout, "player-timeout", time.Minute, "cut a player that takes no byte for this long, freeing its stream (a paused player asks again when it resumes; 0 = never)")
	fs.Var(newIntFlag(&o.MaxStopped, 1000, 0, 1000000), "max-download-result", "stopped tasks kept, the oldest forgotten first (aria2's flag)")
	fs.Var(newIntFlag(&o.MaxWaiting, 1000, 1, 1000000), "max-waiting", "waiting and paused tasks kept; more adds are refused")
	fs.StringVar(&o.stateDir, "state-dir", "", "where tasks are kept across restarts (default: the user's state folder, ~/.local/state/mflow on Linux)")
	fs.BoolVar(&o.inMemory, "in-memory", false, "keep tasks in memory only: they are gone when mflow stops")
	fs.StringVar(&o.redis, "redis", "", "share tasks and --host-connections with the other mflow instances on this Redis (instead of --state-dir): redis://[user:pass@]host:port/db, rediss:// for TLS")
	fs.StringVar(&o.OpenList.URL, "openlist", "", "be the download proxy of the OpenList (or AList) at this address (http://127.0.0.1:5244): its storages' Download proxy URL is then http://HOST:PORT/openlist")
	fs.StringVar(&o.OpenList.Token, "openlist-token", "", "OpenList's token (Settings → Other), which signs its links and lets mflow ask it where files are; better given as MFLOW_OPENLIST_TOKEN")
	fs.StringVar(&o.confPath, "conf-path", "", "the configuration file: name=value lines named after these flags (default: mflow.conf in $XDG_CONFIG_HOME/mflow or the user's configuration folder, if there)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	help := fs.BoolP("help", "h", false, "print this help and exit")

	if err := fs.Parse(args); err != nil {
		if name, ok := strings.CutPrefix(err.Error(), "unknown flag: --"); ok {
			err = fmt.Errorf("%v%s", err, suggest(fs, name))
		}
		return o, "", err
	}
	if *help {
		return o, "Usage: mflow [flags]\n       mflow get [flags] URL   (download a file; see mflow get --help)\n" +
			"       mflow health [flags]    (exit 0 when the mflow these flags describe answers)\n\n" +
			"A parallel chunked HTTP streaming proxy. Players open http://HOST:PORT/stream?url=URL.\n\n" +
			"Each setting is taken from the first of: the command line; the environment, as MFLOW_ and the flag's\n" +
			"name (--rpc-secret is MFLOW_RPC_SECRET); the configuration file (--conf-path), name=value lines\n" +
			"as rpc-secret=…; the default shown here.\n\nFlags:\n" + fs.FlagUsages(), nil
	}
	if *showVersion {
		return o, "mflow " + versionString() + "\n", nil
	}
	if fs.NArg() > 0 {
		return o, "", fmt.Errorf("unexpected argument %q: mflow takes flags only", fs.Arg(0))
	}
	read, err := loadSettings(fs, o.confPath, env)
	if err != nil {
		return o, "", err
	}
	o.confRead, o.unknownEnv = read, unknownEnv(fs, env)
	if o.cacheDir == "" && !fs.Changed("cache-dir") {
		o.cacheDir = firstDir(env["CACHE_DIRECTORY"]) // a systemd unit's CacheDirectory=
	}
	if o.redis != "" {
		if _, err := redis.ParseURL(o.redis); err != nil {
			return o, "", fmt.Errorf("invalid argument %q for \"--redis\" flag: want redis://[user:password@]host:port/db or rediss://…", o.redis)
		}
		if fs.Changed("state-dir") || o.inMemory {
			return o, "", fmt.Errorf("--redis keeps the tasks in Redis: leave out --state-dir and --in-memory")
		}
	}
	if o.OpenList.URL != "" && o.OpenList.Token == "" {
		return o, "", fmt.Errorf("--openlist needs --openlist-token (or MFLOW_OPENLIST_TOKEN): OpenList's token, from its Settings → Other")
	}
	if o.Proxies.Header, err = access.CheckHeader(o.Proxies.Header); err != nil {
		return o, "", fmt.Errorf("invalid argument for \"--real-ip-header\" flag: %v", err)
	}
	if o.ReadAhead < 0 || o.ReadAhead > 1<<34 {
		return o, "", fmt.Errorf("invalid argument %q for \"--read-ahead\" flag: want up to 16G, such as 32M or 64M", bytesize.Format(o.ReadAhead))
	}
	if o.ChunkSize < 16<<10 || o.ChunkSize > 1<<30 {
		return o, "", fmt.Errorf("invalid argument %q for \"-s, --chunk-size\" flag: want 16K to 1G, such as 512K or 1M", bytesize.Format(o.ChunkSize))
	}
	return o, "", nil
}

// run is mflow's main, testable: it serves until ctx ends and returns the exit code. env is the process
// environment.
func run(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "get" {
		return runGet(ctx, args[1:], stdout, stderr)
	}
	health := len(args) > 0 && args[0] == "health"
	if health {
		args = args[1:]
	}
	o, text, err := parseFlags(args, env)
	if err != nil {
		fmt.Fprintf(stderr, "mflow: %v (see --help)\n", err)
		return 2
	}
	if text != "" {
		fmt.Fprint(stdout, text)
		return 0
	}
	if health {
		return checkHealth(ctx, o, stderr)
	}
	level, _ := logging.ParseLevel(o.logLevel)
	var log *slog.Logger
	if f, ok := stderr.(*os.File); ok {
		log = logging.New(f, level, o.logFormat)
		slog.SetDefault(log) // what libraries write with the log package comes out in mflow's form
	} else {
		log = logging.NewTo(stderr, level, o.logFormat, true)
	}

	addr := net.JoinHostPort(o.listen, strconv.Itoa(o.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "mflow: %s\n", listenProblem(addr, o.Port, err))
		return 1
	}

	policy := &access.Policy{Allow: o.allowTarget, Deny: o.denyTarget, Own: ownAddresses(ln.Addr())}
	var rdb *redis.Client
	if o.redis != "" {
		if rdb, err = cluster.Connect(o.redis, log); err != nil {
			ln.Close()
			fmt.Fprintf(stderr, "mflow: %v\n", err)
			return 1
		}
		defer rdb.Close()
	}
	store, err := openTaskStore(o, env, rdb, log)
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "mflow: %v\n", err)
		return 1
	}
	setMemoryLimit(o, log)
	cache, err := openCache(o, log)
	if err != nil {
		store.Close()
		ln.Close()
		fmt.Fprintf(stderr, "mflow: %v\n", err)
		return 1
	}
	var shared slots.Shared
	drives := engine.NewDrives(o.drives)
	if rdb != nil {
		budget := cluster.NewBudget(rdb, o.HostConnections, 0, log)
		defer budget.Close()
		shared = budget
		limits := cluster.NewLimits(rdb, drives.Learn, log)
		defer limits.Close()
		drives.Share = limits
	}
	// aria2.shutdown stops mflow as a signal does; aria2.forceShutdown without the grace for the streams.
	ctx, requestStop := context.WithCancel(ctx)
	defer requestStop()
	var forced atomic.Bool
	cfg := o.Config
	cfg.Shutdown = func(force bool) { forced.Store(force); requestStop() }
	cfg.Dir, _ = os.Getwd()
	cfg.ConfPath = o.confRead
	cfg.Drives, cfg.Policy, cfg.Shared = drives, policy, shared
	cfg.Memory, cfg.Disk, cfg.Tasks = cache.Memory, cache.Disk, store
	cfg.Hosts = append(access.MachineNames(), o.allowHosts...)
	cfg.Version, cfg.Logger = versionString(), log
	mflow, err := app.New(cfg)
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "mflow: %v\n", err)
		return 1
	}
	defer mflow.Close()
	base, cancelStreams := context.WithCancelCause(context.Background())
	defer cancelStreams(server.ErrShuttingDown)
	hs := &http.Server{
		Handler:           mflow.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return base },
		ConnContext:       server.ConnContext, // a stream cut short resets its player's connection
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	listening := []any{"address", ln.Addr().String(), "version", versionString(), "connections", o.Connections, "chunk", bytesize.Format(o.ChunkSize), "memory", memoryText(o), "cache", cacheText(o)}
	if o.confRead != "" {
		listening = append(listening, "settings", o.confRead)
	}
	log.Info("mflow listening", listening...)
	log.Info(reach(o, ln.Addr()))
	if why := cacheBeyondBudget(o); why != "" {
		log.Warn(why)
	}
	if why := secretExposed(o.confRead); why != "" {
		log.Warn(why)
	}
	for _, said := range o.unknownEnv {
		log.Warn(said)
	}
	if o.OpenList.URL != "" {
		log.Info("OpenList's download proxy: set its storages' Download proxy URL to http://HOST:"+strconv.Itoa(o.Port)+"/openlist", "openlist", o.OpenList.URL)
	}
	if rdb != nil {
		log.Info("tasks, their events and the connection budget are shared with the instances on this Redis", "redis", rdb.Options().Addr, "db", rdb.Options().DB)
	}

	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	select {
	case err := <-served:
		log.Error("server stopped", "err", err)
		return 1
	case <-ctx.Done():
	}
	log.Info("shutting down")
	cancelStreams(server.ErrShuttingDown) // every stream ends now, its player's connection cut
	grace := time.Second
	if forced.Load() {
		grace = 0
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		hs.Close()
	}
	<-served
	return 0
}

// openTaskStore opens the store the flags choose for tasks: Redis (rdb), memory, or a bbolt file in
// --state-dir or the default state folder (see defaultStateDir). It says where they are kept.
func openTaskStore(o options, env map[string]string, rdb *redis.Client, log *slog.Logger) (task.Persister, error) {
	if rdb != nil {
		return cluster.NewTasks(rdb, log), nil // its start-up line names the Redis
	}
	if o.inMemory {
		log.Info("tasks are kept in memory only (--in-memory): they are gone when mflow stops")
		return task.NewMemory(), nil
	}
	dir := o.stateDir
	if dir == "" {
		var err error
		if dir, err = defaultStateDir(env); err != nil {
			return nil, fmt.Errorf("no folder to keep tasks in (%v): give one with --state-dir, or keep them in memory with --in-memory", err)
		}
	}
	store, err := task.OpenBolt(dir)
	if err != nil {
		if o.stateDir == "" {
			err = fmt.Errorf("%w; give a folder with --state-dir, or keep tasks in memory with --in-memory", err)
		}
		return nil, err
	}
	log.Info("tasks are kept in "+store.File(), "store", "bbolt")
	return store, nil
}

func listenProblem(addr string, port int, err error) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Sprintf("cannot listen on %s: the port is in use; choose another with --port", addr)
	case errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission):
		return fmt.Sprintf("cannot listen on %s: no permission to use port %d (ports below 1024 need privileges); choose another with --port, such as --port 8080", addr, port)
	default:
		return fmt.Sprintf("cannot listen on %s: %v; check --listen and --port", addr, err)
	}
}
