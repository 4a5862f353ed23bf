package task

import (
	"context"
	"errors"
	"slices"
	"time"

	"mflow/internal/source"
)

// Session is one player's stream of a task. Its methods are what the playback reports about it.
type Session struct {
	GID     string          // the task's full GID
	Link    source.Link     // what to fetch, as the task's options say now
	Spec    Spec            // how to fetch and play it
	Context context.Context // ends with the player's, or with cause ErrStopped when the task is paused or removed

	registry *Registry
	task     *task
	cancel   context.CancelCauseFunc
}

// Begin starts a player's stream of gid, within ctx. Call End when it is over.
func (r *Registry) Begin(ctx context.Context, gid string) (*Session, error) {
	r.refresh(gid)
	st, c, err := r.begin(ctx, gid)
	if errors.Is(err, ErrNotFound) {
		if away := r.Ready(); away != nil {
			return nil, away // perhaps another instance has it: say why it cannot be asked
		}
	}
	if err != nil {
		return nil, err
	}
	_ = r.commit(c) // logged; the stream goes on
	return st, nil
}

func (r *Registry) begin(ctx context.Context, gid string) (*Session, change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var c change
	t, err := r._find(gid)
	if err != nil {
		return nil, c, err
	}
	switch t.State {
	case Paused:
		return nil, c, &Error{GID: t.GID, Err: ErrPaused}
	case Removed:
		return nil, c, &Error{GID: t.GID, Err: ErrNotFound}
	case Failed: // the player tries again: perhaps the upstream recovered
		t.State, t.Failure, t.Queue = Waiting, nil, r._lastKey()
		r.done = slices.DeleteFunc(r.done, func(g string) bool { return g == t.GID })
		r._enqueue(t)
		c.save(t)
	}
	l, spec, err := r._link(t)
	if err != nil {
		return nil, c, err
	}
	st := &Session{GID: t.GID, Link: l, Spec: spec, registry: r, task: t}
	st.Context, st.cancel = context.WithCancelCause(ctx)
	t.streams[st] = true
	return st, c, nil
}

// _endStreams ends every stream of t with ErrStopped.
func (t *task) _endStreams() {
	for st := range t.streams {
		st.cancel(ErrStopped)
	}
}

// Delivered counts n bytes the player took. It takes no lock: it runs on every write to a player.
func (st *Session) Delivered(n int64) {
	st.task.delivered.Add(n)
	st.task.speed.add(time.Now(), n)
}

// Sized records the size the stream's probe found, for a task whose background probe has not.
func (st *Session) Sized(size int64) {
	st.registry.edit(func(c *change) {
		if st.task.Size != size {
			st.task.Size = size
			c.save(st.task)
		}
	})
}

// Failed marks the task Failed because its upstream refused the stream.
func (st *Session) Failed(err error) {
	r := st.registry
	r.edit(func(c *change) {
		if t := st.task; !t.State.stopped() && t.State != Paused && r.tasks[t.GID] == t {
			r._fail(t, err, c)
		}
	})
}

// End ends the stream, and saves the bytes it delivered; a shared store hears of them in the exchange.
func (st *Session) End() {
	st.cancel(nil)
	r := st.registry
	r.edit(func(c *change) {
		delete(st.task.streams, st)
		if r.tasks[st.GID] == st.task && r.shared == nil {
			c.save(st.task)
		}
	})
}
