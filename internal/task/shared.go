package task

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Shared is a Persister other mflow instances use at the same time (Redis). With one, the Registry follows
// what the others change, adds their players' bytes, speeds and streams to its own, and refuses calls
// while the store does not answer, rather than answer from what may be stale.
type Shared interface {
	Persister
	// Get returns gid's record as kept now; false when none is kept.
	Get(ctx context.Context, gid string) (Record, bool, error)
	// Publish tells every instance on the store, this one included, which tasks changed and how.
	Publish(ctx context.Context, changes []Change) error
	// Follow calls changed with every batch of changes any instance publishes, in the order the store took
	// them (own is true for this instance's own), and resync whenever some may have been missed: when it
	// starts, and each time the store answers again after it was away. It returns when ctx ends.
	Follow(ctx context.Context, changed func(changes []Change, own bool), resync func())
	// Ready is nil while the store answers, else why it does not. It does no I/O.
	Ready() error
	// Exchange adds this instance's figures to the store's. mine holds, per task, the bytes players took
	// here since the last exchange and the speed and streams here now. It returns, per task, the bytes
	// kept in all, and the speed and streams of the other instances.
	Exchange(ctx context.Context, mine map[string]Figures) (map[string]Figures, error)
}

// Change names a task that changed, for every instance to read again, and what happened to it.
type Change struct {
	GID    string      `json:"gid"`
	Events []EventKind `json:"events,omitempty"`
}

// Figures are what players do with one task, on one instance or on several.
type Figures struct {
	Delivered int64 `json:"delivered,omitempty"` // bytes players took
	Speed     int64 `json:"speed,omitempty"`     // bytes/s over the last seconds
	Streams   int   `json:"streams,omitempty"`   // players streaming it now
}

// ErrUnavailable is why tasks cannot be asked for or changed while a shared store is away.
var ErrUnavailable = errors.New("tasks are unavailable: their store does not answer")

// exchangeEvery is how often an instance hands its players' figures to a shared store and hears the
// others'.
const exchangeEvery = time.Second

// Ready is nil while tasks can be asked for and changed; with a shared store that does not answer, it is
// an error wrapping ErrUnavailable. Streams already playing go on either way.
func (r *Registry) Ready() error {
	if r.shared == nil {
		return nil
	}
	if err := r.shared.Ready(); err != nil {
		return fmt.Errorf("%w (%v); try again when it is back", ErrUnavailable, err)
	}
	return nil
}

// refresh reads a task named by its whole GID from a shared store before it is asked for or changed, so
// that what another instance did to it a moment ago counts even before its notice is heard here.
func (r *Registry) refresh(gid string) {
	if r.shared == nil || len(gid) != 16 || r.Ready() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, time.Second) // a player or a client waits for it
	defer cancel()
	rec, kept, err := r.shared.Get(ctx, gid)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r._adopt(gid, rec, kept)
}

// follow applies the changes instances make, until Close; following is closed once it hears them.
func (r *Registry) follow(following chan<- struct{}) {
	var once sync.Once
	r.shared.Follow(r.ctx, r.reread, func() {
		r.resync()
		once.Do(func() { close(following) })
	})
}

// reread reads the changed tasks again and takes them as kept; the events of other instances' changes go
// to this instance's subscribers. Reading rather than trusting the message makes every instance end with
// what the store holds, whatever order changes crossed in.
func (r *Registry) reread(changes []Change, own bool) {
	for _, ch := range changes {
		rec, kept, err := r.shared.Get(r.ctx, ch.GID)
		if err != nil {
			return // the store is away: all is read again when it is back
		}
		func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			r._adopt(ch.GID, rec, kept)
			if !own {
				for _, kind := range ch.Events {
					r._send(Event{Kind: kind, GID: ch.GID})
				}
			}
		}()
	}
}

// resync reads every task again, after changes may have been missed.
func (r *Registry) resync() {
	records, err := r.store.Load()
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool, len(records))
	for _, rec := range records {
		seen[rec.GID] = true
		r._adopt(rec.GID, rec, true)
	}
	for gid := range r.tasks {
		if !seen[gid] {
			r._adopt(gid, Record{}, false)
		}
	}
}

// _adopt makes gid's task here what the store keeps (rec, or nothing when !kept), unless it was changed
// here and not saved yet. A task paused, removed or failed elsewhere ends its streams here; one the store
// no longer keeps is forgotten, but its players play on (only a task never announced, or stopped, is
// forgotten on purpose: this is a Redis that lost what it held). The bytes taken here stay counted.
func (r *Registry) _adopt(gid string, rec Record, kept bool) {
	t := r.tasks[gid]
	if t != nil && t.unsaved > 0 {
		return // changed here meanwhile: this instance's version is saved next, and read again after
	}
	if !kept {
		if t != nil {
			r._drop(t)
		}
		return
	}
	fresh := newTask(rec)
	if t == nil {
		r._place(fresh)
		return
	}
	if fresh.State != t.State && fresh.State != Waiting {
		t._endStreams()
	}
	moved := fresh.State.stopped() != t.State.stopped() || fresh.Queue != t.Queue
	if moved {
		r._drop(t)
	}
	t.Record = fresh.Record
	if moved {
		r._place(t)
	}
}

// exchangeEverySecond hands this instance's figures to the shared store each second, until Close.
func (r *Registry) exchangeEverySecond() {
	tick := time.NewTicker(exchangeEvery)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
			if r.shared.Ready() == nil {
				r.exchange(r.ctx)
			}
		}
	}
}

// exchange hands over the bytes players took here since the last exchange with the speeds and streams
// here now, and takes the totals and the other instances' figures back. Bytes a failed exchange did not
// hand over go with the next.
func (r *Registry) exchange(ctx context.Context) {
	mine := r.figures()
	all, err := r.shared.Exchange(ctx, mine)
	r.mu.Lock()
	defer r.mu.Unlock()
	for gid, t := range r.tasks {
		switch {
		case err != nil:
			t.delivered.Add(mine[gid].Delivered)
			t.kept -= mine[gid].Delivered
			t.others = Figures{}
		default:
			f, ok := all[gid]
			if ok {
				t.kept = f.Delivered
			}
			t.others = Figures{Speed: f.Speed, Streams: f.Streams}
		}
	}
}

// figures is what players did with each task here since the last exchange. The bytes move from the
// tasks' counters to their kept totals, so views do not change meanwhile.
func (r *Registry) figures() map[string]Figures {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	mine := map[string]Figures{}
	for gid, t := range r.tasks {
		f := Figures{Delivered: t.delivered.Swap(0), Streams: len(t.streams)}
		if f.Streams > 0 {
			f.Speed = t.speed.rate(now)
		}
		t.kept += f.Delivered
		if f != (Figures{}) {
			mine[gid] = f
		}
	}
	return mine
}
