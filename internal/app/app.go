// Package app puts mflow's parts together from its settings: the upstream client, the resolver, the
// engine, the task registry, the RPC and the HTTP edge. The mflow command and the benchmark both build
// mflow with it, so the benchmark measures what users run.
package app

import (
	"cmp"
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"mflow/internal/access"
	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/link"
	"mflow/internal/mediaindex"
	"mflow/internal/metrics"
	"mflow/internal/openlist"
	"mflow/internal/play"
	"mflow/internal/rpc"
	"mflow/internal/server"
	"mflow/internal/status"
	"mflow/internal/task"
	"mflow/internal/upstream"
	"mflow/internal/upstream/slots"
)

// Config is what mflow's flags set.
type Config struct {
	Connections int   // per stream (-c)
	ChunkSize   int64 // -s
	ReadAhead   int64 // --read-ahead; 0 is the engine's default
	// MaxMemory bounds what the streams' read-ahead and the memory cache hold together (--max-memory); 0 is
	// no bound.
	MaxMemory       int64
	Retry           int   // retries of a chunk or a probe (-r)
	MinSpeed        int64 // bytes/s, 0 = off
	MaxRedirects    int   // per request
	HostConnections int   // per upstream host, across all streams
	Insecure        bool  // skip TLS verification upstream
	// Dial, when set, replaces the network dialer upstream (the benchmark dials into a network
	// namespace); the target policy is not applied to it.
	Dial         func(ctx context.Context, network, addr string) (net.Conn, error)
	RelayNoRange bool           // relay upstreams without Range over one connection
	Policy       *access.Policy // where requests may connect; nil allows all
	// Shared, when set, is the per-host connection budget shared with other instances (--redis).
	Shared slots.Shared
	// Drives keeps streams within each drive's limit (--drive, and what the drives teach); nil knows only
	// the drives mflow knows.
	Drives     *engine.Drives
	Memory     *chunkcache.Memory // the memory chunk cache; nil for none
	Disk       *chunkcache.Disk   // the disk chunk cache; nil for none
	MaxStreams int                // streams played at once, 0 = no bound
	// PlayerTimeout cuts a player that takes no byte for that long (--player-timeout); 0 never does.
	PlayerTimeout time.Duration

	// OpenList, when its URL is set, makes mflow OpenList's download proxy at /openlist/ (--openlist).
	OpenList openlist.Config

	// Tasks keeps the aria2 tasks; nil turns the JSON-RPC and /stream?gid= off.
	Tasks      task.Persister
	MaxStopped int // stopped tasks kept
	MaxWaiting int // waiting and paused tasks kept

	RPCSecret         string // --rpc-secret
	RPCListenAll      bool   // --rpc-listen-all
	RPCAllowOriginAll bool   // --rpc-allow-origin-all
	// Shutdown, when set, stops mflow for the JSON-RPC's aria2.shutdown (at once for forceShutdown).
	Shutdown func(force bool)
	// Dir, Port and ConfPath are what getGlobalOption reports: the working folder, the port, and the
	// configuration file read.
	Dir      string
	Port     int
	ConfPath string

	// Hosts are the names requests may carry in Host besides IP literals and localhost: this machine's
	// own and --allow-host's. Proxies are the reverse proxies trusted to name their clients
	// (--trusted-proxy).
	Hosts   access.Hosts
	Proxies access.Proxies

	Version string       // mflow's, for the index page, the RPC and the User-Agent
	Logger  *slog.Logger // default slog.Default()
	Started time.Time    // when mflow started, for the status page; default now
}

// App is mflow put together.
type App struct {
	Handler http.Handler   // every route mflow serves
	Engine  *engine.Engine // for the benchmark's memory watch
	Play    *play.Service  // plays links: for mflow get

	client   *upstream.Client
	resolver *link.Resolver
	tasks    *task.Registry   // nil without Config.Tasks
	openList *openlist.Client // nil without Config.OpenList
}

// New puts mflow together. It owns cfg.Tasks from then on, even when it fails.
func New(cfg Config) (*App, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	d := derive(cfg)
	client := upstream.NewClient(upstream.Config{HostConnections: cfg.HostConnections, Insecure: cfg.Insecure, Policy: cfg.Policy, Shared: cfg.Shared, MaxRedirects: cfg.MaxRedirects, UserAgent: d.userAgent, Dial: cfg.Dial})
	drives := cmp.Or(cfg.Drives, engine.NewDrives(nil))
	resolver := link.New(link.Config{Client: client, Retry: upstream.Retry{Max: cfg.Retry}, Hedge: d.probeTries, DriveLimit: drives.Limit, Warm: d.warm, Logger: log})
	var cache engine.Cache
	if cfg.Memory != nil || cfg.Disk != nil {
		cache = chunkcache.Tiered{Memory: cfg.Memory, Disk: cfg.Disk}
	}
	var cacheRoom func(int64)
	if cfg.Memory != nil {
		cacheRoom = cfg.Memory.Yield
	}
	var m *metrics.Metrics // reads the engine, and hears of its requests: made below, before any stream
	a := &App{
		Engine: &engine.Engine{Client: client, IndexOf: mediaindex.Locate, ChunkSize: cfg.ChunkSize, ReadAhead: cfg.ReadAhead, MaxMemory: cfg.MaxMemory,
			Connections: cfg.Connections, Retries: cfg.Retry, MinSpeed: cfg.MinSpeed, Logger: log, Drives: drives, Cache: cache, CacheRoom: cacheRoom,
			Observe: func(d engine.RequestDone) { m.Observe(d) }},
		client:   client,
		resolver: resolver,
	}
	playback := &play.Service{Resolver: resolver, Engine: a.Engine, RelayNoRange: cfg.RelayNoRange, Logger: log}
	a.Play = playback
	srv := &server.Server{
		Play:          playback,
		MaxStreams:    cfg.MaxStreams,
		PlayerTimeout: cfg.PlayerTimeout,
		Hosts:         cfg.Hosts,
		Proxies:       cfg.Proxies,
		Version:       cfg.Version,
		Logger:        log,
	}
	if cfg.OpenList.URL != "" {
		ol, err := openlist.New(cfg.OpenList)
		if err != nil {
			if cfg.Tasks != nil {
				cfg.Tasks.Close()
			}
			return nil, err
		}
		a.openList, srv.OpenList = ol, ol
	}
	if cfg.Tasks != nil {
		defaults := rpc.Defaults{Connections: cfg.Connections, MinSpeed: cfg.MinSpeed, UserAgent: d.userAgent, PieceLength: cfg.ChunkSize, Dir: cfg.Dir,
			Retries: cfg.Retry, MaxStreams: cfg.MaxStreams, MaxStopped: cfg.MaxStopped, Port: cfg.Port, Insecure: cfg.Insecure, ConfPath: cfg.ConfPath}
		tasks, err := task.New(task.Config{Interpret: defaults.Interpret, Probe: resolver.Size, MaxStopped: d.maxStopped, MaxWaiting: cfg.MaxWaiting, Logger: log}, cfg.Tasks)
		if err != nil {
			cfg.Tasks.Close()
			if a.openList != nil {
				a.openList.Close()
			}
			return nil, err
		}
		a.tasks = tasks
		srv.Tasks = tasks
		rpcHandler := &rpc.Handler{Tasks: tasks, Defaults: defaults, Secret: cfg.RPCSecret, ListenAll: cfg.RPCListenAll, AllowOriginAll: cfg.RPCAllowOriginAll,
			Version: cfg.Version, Logger: log, Shutdown: cfg.Shutdown, Connections: connectionsOf(playback), MaxAnswer: d.maxAnswer}
		srv.RPC, srv.Guard, srv.Prefixes, srv.Login = rpcHandler, rpcHandler.Guard, rpcHandler.Trusts, rpcHandler.Login
	}
	m = metrics.New(metrics.Sources{Play: playback, Engine: a.Engine, Client: client, Tasks: a.tasks, Memory: cfg.Memory, Disk: cfg.Disk})
	started := cfg.Started
	if started.IsZero() {
		started = time.Now()
	}
	srv.Metrics = m
	srv.Status = status.New(status.Sources{Play: playback, Tasks: a.tasks, Client: client, Memory: cfg.Memory, Disk: cfg.Disk, Version: cfg.Version, Started: started, Drives: a.Engine.Drives.States,
		Budget: cfg.MaxMemory, Held: a.Engine.HeldBytes, Withheld: a.Engine.Withheld, StatusWord: rpc.StatusWord})
	a.Handler = srv.Handler()
	return a, nil
}

// derived are the settings mflow computes from its flags, each in one place here.
type derived struct {
	userAgent  string // "mflow/VERSION": requests whose link and task name no User-Agent send it
	probeTries int    // tries at once after a failed probe: a stream's connections (-c)
	warm       int    // connections a play's probe opens ahead for the stream: -c less the probe's own
	maxStopped int    // stopped tasks kept: --max-download-result, but at least the one just stopped
	maxAnswer  int    // the largest RPC answer built: rpc's default, within an eighth of --max-memory
}

func derive(cfg Config) derived {
	d := derived{
		userAgent:  "mflow/" + cfg.Version,
		probeTries: cfg.Connections,
		warm:       cfg.Connections - 1,
		maxStopped: max(cfg.MaxStopped, 1),
		maxAnswer:  rpc.DefaultMaxAnswer,
	}
	if cfg.MaxMemory > 0 {
		d.maxAnswer = int(min(rpc.DefaultMaxAnswer, cfg.MaxMemory/8))
	}
	return d
}

// connectionsOf is getServers' view of the upstream requests a task's players have open now.
func connectionsOf(playback *play.Service) func(gid string) []rpc.Connection {
	return func(gid string) []rpc.Connection {
		var out []rpc.Connection
		for _, p := range playback.Playing() {
			if p.Task != gid {
				continue
			}
			for _, r := range p.Progress.Requests {
				out = append(out, rpc.Connection{Mirror: r.Mirror, URL: r.URL, Speed: r.Speed})
			}
		}
		return out
	}
}

// Close ends the tasks' background work and closes their store, ends the probes no caller waits for any
// more, and closes idle upstream connections; every goroutine mflow started has ended when it returns.
// Streams must have ended first.
func (a *App) Close() error {
	defer a.client.CloseIdleConnections()
	defer a.resolver.Close() // after the tasks': their probes' callers are gone then
	a.Engine.Close()
	if a.openList != nil {
		a.openList.Close()
	}
	if a.tasks != nil {
		return a.tasks.Close()
	}
	return nil
}
