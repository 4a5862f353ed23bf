package task

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mflow/internal/access"
	"mflow/internal/source"
	"mflow/internal/upstream"
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

// change collects what a change under the lock must do once the lock is released: the tasks to save, and
// what happened to them for the other instances to hear.
type change struct {
	saves  []*task
	events []Event
	told   bool // a retry: the subscribers here heard its events when it was first made
}

// retries is how many times a client's change that another instance's change beat to the store (often
// the background probe's size) is made again over what that one left.
const retries = 3

// save marks t changed, with the lock held: it is saved as it is when the change is committed, and no
// other instance's version of it replaces it here until then.
func (c *change) save(t *task) {
	t.unsaved++
	c.saves = append(c.saves, t)
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

// commit does, outside the lock, what a change left to do: it saves each task it touched as it is now,
// or forgets it when it is gone, and tells the other instances sharing the store. When another instance
// saved the task first, this change is lost and the task is read again as that one left it. Every failure
// is logged, and the first returned.
func (r *Registry) commit(c change) error {
	if len(c.saves) == 0 {
		return nil
	}
	lost, err := r.save(c)
	r.saved(c)
	if len(lost) > 0 {
		r.reread(lost, true)
	}
	return err
}

// save writes c's tasks to the store and tells the other instances; it returns the changes lost to
// another instance's.
func (r *Registry) save(c change) (lost []Change, first error) {
	if err := r.Ready(); err != nil {
		return nil, err // the store said once that it is away; all is read afresh when it is back
	}
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	var unsaved []string // the other instances are told only of what is kept
	for _, t := range c.saves {
		gid := t.GID
		rec, ok := r.record(gid)
		var err error
		if ok {
			rec.Rev++
			if err = r.store.Save(rec); err == nil {
				r.savedAs(t, rec.Rev)
			}
		} else {
			err = r.store.Delete(gid)
		}
		switch {
		case errors.Is(err, ErrConflict):
			r.cfg.Logger.Debug("task changed by another instance first: its change stands", "gid", gid)
			lost = append(lost, Change{GID: gid})
			err = &Error{GID: gid, Err: ErrConflict}
		case err != nil:
			r.cfg.Logger.Warn("task not saved: it may be lost when mflow stops", "gid", gid, "err", err)
			unsaved = append(unsaved, gid)
			err = fmt.Errorf("saving task %s: %w", gid, err)
		}
		if first == nil {
			first = err
		}
	}
	if r.shared != nil {
		changes := slices.DeleteFunc(c.changes(), func(ch Change) bool {
			return slices.ContainsFunc(lost, func(l Change) bool { return l.GID == ch.GID }) || slices.Contains(unsaved, ch.GID)
		})
		if err := r.shared.Publish(r.ctx, changes); err != nil && first == nil {
			r.cfg.Logger.Warn("the other instances were not told of a task's change", "err", err)
			first = fmt.Errorf("telling the other instances: %w", err)
		}
	}
	return lost, first
}

// savedAs notes that t is kept at revision rev.
func (r *Registry) savedAs(t *task, rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Rev = max(t.Rev, rev)
}

// saved notes that c's changes were committed.
func (r *Registry) saved(c change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range c.saves {
		t.unsaved--
	}
}

// changes is what c tells the other instances: each task it touched, once, with what happened to it.
func (c change) changes() []Change {
	var out []Change
	at := map[string]int{}
	for _, t := range c.saves {
		if _, ok := at[t.GID]; !ok {
			at[t.GID] = len(out)
			out = append(out, Change{GID: t.GID})
		}
	}
	for _, ev := range c.events {
		i, ok := at[ev.GID]
		if !ok {
			i, at[ev.GID] = len(out), len(out)
			out = append(out, Change{GID: ev.GID})
		}
		out[i].Events = append(out[i].Events, ev.Kind)
	}
	return out
}

// record is a copy of gid's task as it is now; false when it is gone.
func (r *Registry) record(gid string) (Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tasks[gid]
	if t == nil {
		return Record{}, false
	}
	return t._snapshot(), true
}

// _snapshot is a copy of t's Record with the bytes delivered so far.
func (t *task) _snapshot() Record {
	rec := t.Record.clone()
	rec.Delivered = t.kept + t.delivered.Load()
	return rec
}

// Subscribe returns a channel of events and the function that ends the subscription. Events are dropped
// for a subscriber that does not keep up, rather than holding the registry.
func (r *Registry) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs[ch] = struct{}{}
	return ch, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.subs, ch)
	}
}

// _notify tells the subscribers what happened, and c keeps it for the other instances.
func (r *Registry) _notify(kind EventKind, gid string, c *change) {
	if !c.told {
		r._send(Event{Kind: kind, GID: gid})
	}
	c.events = append(c.events, Event{Kind: kind, GID: gid})
}

// _send sends an event to every subscriber without waiting: under the lock, so that subscribers see the
// events of one task in the order they happened.
func (r *Registry) _send(ev Event) {
	for ch := range r.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// _announce marks t started and tells the subscribers.
func (r *Registry) _announce(t *task, c *change) {
	t.Announced = true
	r._notify(EventStarted, t.GID, c)
}

// Addition is a task to add.
type Addition struct {
	URIs     []string          // mirrors of one file; the first is asked first
	Options  map[string]string // kept as given; Config.Interpret says what they mean
	Position int               // in the queue; negative or past the end adds it last
	Paused   bool              // added paused: not announced, not streamed until unpaused
	GID      string            // the GID to give it; "" for a new random one
	From     access.Network    // the class of the client adding it
}

// Bounds on one task: a signed drive link is 0.5 to 3 KiB, a drive's cookies a few; more is an attempt to
// fill mflow's memory and its store.
const (
	MaxURIBytes  = 16 << 10 // one URI
	MaxURIs      = 16       // a task's URIs, mirrors included
	MaxTaskBytes = 64 << 10 // its URIs and its options together
)

// Add registers a task and starts probing its size in the background. It returns the GID. A task whose
// save fails is not added: it would vanish at the next start.
func (r *Registry) Add(a Addition) (string, error) {
	if len(a.URIs) == 0 || slices.ContainsFunc(a.URIs, func(u string) bool { return !httpURI(u) }) {
		return "", &Error{GID: a.GID, Err: ErrBadURI}
	}
	if err := checkSize(a.URIs, a.Options); err != nil {
		return "", &Error{GID: a.GID, Err: err}
	}
	gid, c, err := r.add(a)
	if err != nil {
		return "", err
	}
	if err := r.commit(c); err != nil {
		r.forgetAdded(gid)
		return "", err
	}
	if !a.Paused {
		r.announced(gid)
	}
	r.wg.Go(func() { r.probeSize(gid) })
	return gid, nil
}

// checkSize refuses a task larger than the bounds, counting each string as the store keeps it: a URI of
// control characters or invalid UTF-8 takes up to six bytes a byte there.
func checkSize(uris []string, options map[string]string) error {
	total := 0
	for _, u := range uris {
		n := storedLen(u)
		if n > MaxURIBytes {
			return ErrTooLarge
		}
		total += n
	}
	for k, v := range options {
		total += storedLen(k) + storedLen(v)
	}
	if len(uris) > MaxURIs || total > MaxTaskBytes {
		return ErrTooLarge
	}
	return nil
}

// forgetAdded takes out again a task whose first save failed.
func (r *Registry) forgetAdded(gid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.tasks[gid]; t != nil {
		r._drop(t)
	}
}

// announced tells this instance's subscribers that a task was added and may be streamed, once it is kept.
// The other instances hear of it in the change committed.
func (r *Registry) announced(gid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tasks[gid] != nil {
		r._send(Event{Kind: EventStarted, GID: gid})
	}
}

func (r *Registry) add(a Addition) (string, change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) >= r.cfg.MaxWaiting {
		return "", change{}, &Error{Err: ErrTooMany, Limit: r.cfg.MaxWaiting}
	}
	gid := a.GID
	if gid == "" {
		gid = r._newGID()
	} else if err := checkGID(gid); err != nil {
		return "", change{}, &Error{GID: gid, Err: err}
	} else if len(gid) != 16 {
		return "", change{}, &Error{GID: gid, Err: ErrBadGID}
	} else if r.tasks[gid] != nil {
		return "", change{}, &Error{GID: gid, Err: ErrGIDTaken}
	}
	opts := make(map[string]string, len(a.Options))
	for k, v := range a.Options {
		opts[k] = v
	}
	t := &task{Record: Record{GID: gid, URIs: slices.Clone(a.URIs), Options: opts, State: Waiting, Size: -1, Added: time.Now(), From: a.From}, streams: map[*Session]bool{}}
	if a.Paused {
		t.State = Paused
	}
	c := change{told: true} // this instance's subscribers hear of it once it is kept
	t.Queue = r._lastKey()
	r.tasks[gid] = t
	if pos := a.Position; pos >= 0 && pos < len(r.queue) {
		r.queue = slices.Insert(r.queue, pos, gid)
		r._renumber(&c)
	} else {
		r.queue = append(r.queue, gid)
	}
	c.save(t)
	if !a.Paused {
		r._announce(t, &c)
	}
	return gid, c, nil
}

// _newGID returns an unused random GID: 16 lowercase hex digits, not all zero.
func (r *Registry) _newGID() string {
	for {
		var b [8]byte
		rand.Read(b[:])
		gid := hex.EncodeToString(b[:])
		if r.tasks[gid] == nil && gid != "0000000000000000" {
			return gid
		}
	}
}

// checkGID refuses what cannot be a GID or a prefix of one.
func checkGID(gid string) error {
	switch {
	case gid == "" || len(gid) > 16 || strings.Trim(gid, "0123456789abcdef") != "":
		return ErrBadGID
	case gid == "0000000000000000":
		return ErrZeroGID
	}
	return nil
}

// probeSize learns a new task's size; a refusal marks it Failed.
func (r *Registry) probeSize(gid string) {
	if r.cfg.Probe == nil {
		return
	}
	l, _, err := r.linkOf(gid)
	if err != nil {
		return
	}
	size, err := r.cfg.Probe(r.ctx, l)
	if r.ctx.Err() != nil {
		return
	}
	_ = r.commit(r.probed(gid, size, err))
}

// probed records what the background probe of gid found.
func (r *Registry) probed(gid string, size int64, err error) change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var c change
	t := r.tasks[gid]
	switch {
	case t == nil:
	case err != nil:
		// A player streaming it meanwhile probed it again: its own answer counts, not this older one.
		if !t.State.stopped() && len(t.streams) == 0 {
			r._fail(t, err, &c)
		}
	default:
		t.Size = size
		c.save(t)
	}
	return c
}

// linkOf is what gid fetches and how, as its options say now.
func (r *Registry) linkOf(gid string) (source.Link, Spec, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tasks[gid]
	if t == nil {
		return source.Link{}, Spec{}, &Error{GID: gid, Err: ErrNotFound}
	}
	return r._link(t)
}

// _link is what t fetches: its first URI as its options say, its other URIs as mirrors.
func (r *Registry) _link(t *task) (source.Link, Spec, error) {
	var spec Spec
	if r.cfg.Interpret != nil {
		var err error
		if spec, err = r.cfg.Interpret(t.URIs, t.Options); err != nil {
			return source.Link{}, Spec{}, err
		}
	}
	l := source.Link{
		Location: source.Location{URL: t.URIs[0], Header: spec.Header, Proxy: spec.Proxy, From: t.From},
		Name:     spec.Name,
		Mirrors:  slices.Clone(t.URIs[1:]),
	}
	return l, spec, nil
}

// _fail marks t Failed because of err, and tells the subscribers.
func (r *Registry) _fail(t *task, err error, c *change) {
	f := upstream.Classify(err)
	t.Failure = &f
	r._stop(t, Failed, c)
	r._notify(EventFailed, t.GID, c)
}

// _stop moves t to the stopped tasks with state, and forgets the oldest stopped tasks beyond MaxStopped.
// Removing it ends its streams; failing it does not, as each stream meets its upstream's answers itself.
func (r *Registry) _stop(t *task, state State, c *change) {
	t.State = state
	r.queue = slices.DeleteFunc(r.queue, func(g string) bool { return g == t.GID })
	r.done = append(r.done, t.GID)
	r.stops++
	if state == Removed {
		t._endStreams()
	}
	c.save(t)
	for len(r.done) > r.cfg.MaxStopped {
		r._forget(r.tasks[r.done[0]], c)
	}
}

// _forget drops t.
func (r *Registry) _forget(t *task, c *change) {
	r._drop(t)
	c.save(t)
}

// _drop takes t out of the tables.
func (r *Registry) _drop(t *task) {
	delete(r.tasks, t.GID)
	r.queue = slices.DeleteFunc(r.queue, func(g string) bool { return g == t.GID })
	r.done = slices.DeleteFunc(r.done, func(g string) bool { return g == t.GID })
}

// _find resolves a GID or a unique prefix of one.
func (r *Registry) _find(gid string) (*task, error) {
	if err := checkGID(gid); err != nil {
		return nil, &Error{GID: gid, Err: err}
	}
	if t := r.tasks[gid]; t != nil {
		return t, nil
	}
	var found *task
	for g, t := range r.tasks {
		if strings.HasPrefix(g, gid) {
			if found != nil {
				return nil, &Error{GID: gid, Err: ErrAmbiguous}
			}
			found = t
		}
	}
	if found == nil {
		return nil, &Error{GID: gid, Err: ErrNotFound}
	}
	return found, nil
}

// update runs do on the task gid names, with the lock held, then commits the change; it returns the
// task's full GID.
func (r *Registry) update(gid string, do func(t *task, c *change) error) (string, error) {
	for attempt := 0; ; attempt++ {
		r.refresh(gid)
		full, c, err := func() (string, change, error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			c := change{told: attempt > 0}
			t, err := r._find(gid)
			if err != nil {
				return "", c, err
			}
			if err := do(t, &c); err != nil {
				return "", c, &Error{GID: t.GID, Err: err}
			}
			return t.GID, c, nil
		}()
		if err != nil {
			return "", err
		}
		if err := r.commit(c); !errors.Is(err, ErrConflict) || attempt == retries {
			return full, err
		}
	}
}

// all runs do on every task in the queue, with the lock held, then commits the change.
func (r *Registry) all(do func(t *task, c *change)) error {
	for attempt := 0; ; attempt++ {
		c := func() change {
			r.mu.Lock()
			defer r.mu.Unlock()
			c := change{told: attempt > 0}
			for _, gid := range slices.Clone(r.queue) {
				do(r.tasks[gid], &c)
			}
			return c
		}()
		if err := r.commit(c); !errors.Is(err, ErrConflict) || attempt == retries {
			return err
		}
	}
}

// Remove stops a task. One announced as started (or being streamed) becomes Removed, its streams end and
// EventStopped is sent; one never announced (added paused) is forgotten silently.
func (r *Registry) Remove(gid string) (string, error) {
	return r.update(gid, func(t *task, c *change) error {
		switch {
		case t.State.stopped():
			return ErrNotRunning
		case len(t.streams) > 0 || t.Announced:
			r._stop(t, Removed, c)
			r._notify(EventStopped, t.GID, c)
		default:
			r._forget(t, c)
		}
		return nil
	})
}

// Pause pauses a waiting or active task; its streams end, and new ones are refused.
func (r *Registry) Pause(gid string) (string, error) {
	return r.update(gid, func(t *task, c *change) error {
		if t.State != Waiting {
			return ErrNotPausable
		}
		r._pause(t, c)
		return nil
	})
}

func (r *Registry) _pause(t *task, c *change) {
	t.State = Paused
	t._endStreams()
	c.save(t)
	r._notify(EventPaused, t.GID, c)
}

// Unpause lets a paused task be streamed again.
func (r *Registry) Unpause(gid string) (string, error) {
	return r.update(gid, func(t *task, c *change) error {
		if t.State != Paused {
			return ErrNotPaused
		}
		r._unpause(t, c)
		return nil
	})
}

func (r *Registry) _unpause(t *task, c *change) {
	t.State = Waiting
	r._announce(t, c)
	c.save(t)
}

// PauseAll pauses every waiting or active task.
func (r *Registry) PauseAll() error {
	return r.all(func(t *task, c *change) {
		if t.State == Waiting {
			r._pause(t, c)
		}
	})
}

// UnpauseAll unpauses every paused task.
func (r *Registry) UnpauseAll() error {
	return r.all(func(t *task, c *change) {
		if t.State == Paused {
			r._unpause(t, c)
		}
	})
}

// RemoveResult forgets a stopped task.
func (r *Registry) RemoveResult(gid string) error {
	_, err := r.update(gid, func(t *task, c *change) error {
		if !t.State.stopped() {
			return ErrNotStopped
		}
		r._forget(t, c)
		return nil
	})
	return err
}

// PurgeResults forgets every stopped task.
func (r *Registry) PurgeResults() error {
	c := func() change {
		r.mu.Lock()
		defer r.mu.Unlock()
		var c change
		for _, gid := range slices.Clone(r.done) {
			r._forget(r.tasks[gid], &c)
		}
		return c
	}()
	return r.commit(c)
}

// ChangeOptions replaces a task's options by what edit makes of them. edit runs with the lock held and
// must not block; an error from it leaves the options as they were. Changes to a task being streamed apply
// to its next stream.
func (r *Registry) ChangeOptions(gid string, edit func(old map[string]string) (map[string]string, error)) error {
	_, err := r.update(gid, func(t *task, c *change) error {
		opts, err := edit(t.Record.clone().Options)
		if err != nil {
			return err
		}
		if err := checkSize(t.URIs, opts); err != nil {
			return err
		}
		t.Options = opts
		c.save(t)
		return nil
	})
	return err
}

// View is a task as it is now.
type View struct {
	Record
	State   State  // with Active computed
	Speed   int64  // bytes/s players took over the last seconds
	Streams int    // players streaming it now
	Name    string // the file name players are told: the options', else the first URI's last segment
}

// Get returns a view of one task.
func (r *Registry) Get(gid string) (View, error) {
	r.refresh(gid)
	r.mu.Lock()
	defer r.mu.Unlock()
	t, err := r._find(gid)
	if err != nil {
		return View{}, err
	}
	return r._view(t, time.Now()), nil
}

// Lists returns the active tasks; the waiting and paused ones in queue order; the stopped ones, oldest
// first.
func (r *Registry) Lists() (active, waiting, stopped []View) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, gid := range r.queue {
		v := r._view(r.tasks[gid], now)
		if v.State == Active {
			active = append(active, v)
		} else {
			waiting = append(waiting, v)
		}
	}
	for _, gid := range r.done {
		stopped = append(stopped, r._view(r.tasks[gid], now))
	}
	return active, waiting, stopped
}

// StoppedTotal is the number of tasks stopped since the registry opened, forgotten ones included.
func (r *Registry) StoppedTotal() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stops
}

// _view is t as it is at now. It changes nothing.
func (r *Registry) _view(t *task, now time.Time) View {
	v := View{Record: t._snapshot(), State: t.State, Streams: len(t.streams) + t.others.Streams, Name: source.FileName(t.URIs[0])}
	if _, spec, err := r._link(t); err == nil && spec.Name != "" {
		v.Name = spec.Name
	}
	if v.Streams > 0 && t.State == Waiting {
		v.State = Active
		v.Speed = t.speed.rate(now) + t.others.Speed
	}
	return v
}
