package task

import (
	"errors"
	"fmt"
	"slices"
)

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

// edit makes a stream's change to its task under the lock, then commits it; a failure is logged, and the
// stream goes on.
func (r *Registry) edit(do func(c *change)) {
	_ = r.commit(func() (c change) {
		r.mu.Lock()
		defer r.mu.Unlock()
		do(&c)
		return c
	}())
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
