package task

import (
	"slices"
	"strings"

	"mflow/internal/source"
	"mflow/internal/upstream"
)

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
