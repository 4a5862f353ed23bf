package task

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"mflow/internal/source"
)

// Config sets up a Registry.
type Config struct {
	// Interpret says what a task's options mean. Nil treats every task as its URIs alone.
	Interpret func(uris []string, options map[string]string) (Spec, error)
	// Probe learns a new task's size in the background. Nil leaves sizes to the players' probes.
	Probe func(ctx context.Context, l source.Link) (int64, error)
	// MaxStopped is how many stopped tasks are kept, the oldest forgotten first. Default 1000.
	MaxStopped int
	// MaxWaiting bounds the waiting and paused tasks: an add beyond it is refused. Default 1000.
	MaxWaiting int
	// Logger receives a WARN line for every task that could not be persisted. Default slog.Default().
	Logger *slog.Logger
}

// Registry keeps tasks and moves them through their states. Its methods are safe for concurrent use. Over
// a Shared store, several registries (one per mflow instance) act as one: see shared.go.
type Registry struct {
	cfg    Config
	store  Persister
	shared Shared // store, when other instances share it; nil otherwise

	ctx    context.Context    // ends the background work
	cancel context.CancelFunc // ends ctx
	wg     sync.WaitGroup     // the background probes, and with a shared store the follower and the exchange

	saveMu sync.Mutex // one save at a time, so the last one written is the latest state; held over I/O

	mu    sync.Mutex              // protects the following fields, and every task's Record and streams
	tasks map[string]*task        // by GID
	queue []string                // waiting and paused tasks, in order
	done  []string                // stopped tasks, oldest first
	stops int                     // tasks stopped since the registry opened, forgotten ones included
	subs  map[chan Event]struct{} // event subscribers
}

// task is a Record with what only this process knows about it.
type task struct {
	Record                      // protected by Registry.mu; its Delivered is stale: kept plus delivered
	kept      int64             // bytes players took as the store knows them; protected by Registry.mu
	delivered atomic.Int64      // bytes players took here since: counted on every write, without a lock
	speed     meter             // the bytes players took here, over the last seconds
	streams   map[*Session]bool // players streaming it here now; protected by Registry.mu
	others    Figures           // the other instances' speed and streams of it; protected by Registry.mu
	unsaved   int               // changes made here and not yet saved; protected by Registry.mu
}

// New returns a registry of the tasks store holds. It owns store and closes it in Close.
func New(cfg Config, store Persister) (*Registry, error) {
	if cfg.MaxStopped <= 0 {
		cfg.MaxStopped = 1000
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	shared, _ := store.(Shared)
	records, err := store.Load()
	if err != nil && shared == nil { // a shared store that does not answer yet is read when it does
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{cfg: cfg, store: store, ctx: ctx, cancel: cancel, tasks: map[string]*task{}, subs: map[chan Event]struct{}{}}
	slices.SortFunc(records, func(a, b Record) int { return a.Added.Compare(b.Added) })
	for _, rec := range records {
		r._place(newTask(rec))
	}
	if shared != nil {
		r.shared = shared
		following := make(chan struct{})
		r.wg.Go(func() { r.follow(following) })
		r.wg.Go(r.exchangeEverySecond)
		// Clients are answered once the others' changes are heard, or every client that came in first
		// would miss their events; a store that does not answer yet is followed when it does.
		select {
		case <-following:
		case <-time.After(followWait):
		}
	}
	return r, nil
}

// followWait is how long a Registry with a shared store waits, when made, to hear the other instances.
const followWait = 5 * time.Second

// newTask is the task of a kept record.
func newTask(rec Record) *task {
	if rec.State == Active {
		rec.State = Waiting // a stream does not outlive the process
	}
	return &task{Record: rec, kept: rec.Delivered, streams: map[*Session]bool{}}
}

// _place puts a new task in the table and in the queue or, stopped, among the stopped tasks.
func (r *Registry) _place(t *task) {
	r.tasks[t.GID] = t
	if t.State.stopped() {
		r.done = append(r.done, t.GID)
		r.stops++
	} else {
		r._enqueue(t)
	}
}

// Close ends the background work and waits for it; with a shared store, it hands over the bytes players
// took here since the last exchange. Then it closes the store.
func (r *Registry) Close() error {
	r.cancel()
	r.wg.Wait()
	if r.shared != nil && r.shared.Ready() == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r.exchange(ctx)
	}
	return r.store.Close()
}
