package task

import (
	"cmp"
	"errors"
	"io"
	"net/url"
	"slices"
)

// The queue holds the waiting and paused tasks in an order clients can change (aria2's changePosition),
// kept across restarts: each task's Record.Queue is its key in the order.

// queueStep is the distance between the keys of tasks next to each other, so a task added last needs no
// other task saved again.
const queueStep = 1 << 20

// orderKey is where t stands in the queue: its Queue key, or, for a record of an earlier mflow, when it
// was added.
func (t *task) orderKey() int64 {
	if t.Queue != 0 {
		return t.Queue
	}
	return t.Added.UnixNano()
}

// _enqueue puts t in the queue where its key says.
func (r *Registry) _enqueue(t *task) {
	i, _ := slices.BinarySearchFunc(r.queue, t.orderKey(), func(gid string, key int64) int {
		return cmp.Compare(r.tasks[gid].orderKey(), key)
	})
	r.queue = slices.Insert(r.queue, i, t.GID)
}

// _lastKey is the key a task put last in the queue gets.
func (r *Registry) _lastKey() int64 {
	if len(r.queue) == 0 {
		return queueStep
	}
	return r.tasks[r.queue[len(r.queue)-1]].orderKey() + queueStep
}

// _renumber gives the tasks of the queue keys in their order now, saving those whose key changed.
func (r *Registry) _renumber(c *change) {
	for i, gid := range r.queue {
		if t := r.tasks[gid]; t.Queue != int64(i+1)*queueStep {
			t.Queue = int64(i+1) * queueStep
			c.save(t)
		}
	}
}

// _active reports whether t is being streamed, here or on another instance.
func (t *task) _active() bool { return t.State == Waiting && len(t.streams)+t.others.Streams > 0 }

// ErrNotQueued refuses to move a task that is not waiting or paused: it is being streamed, or stopped.
var ErrNotQueued = errors.New("the task is not in the waiting queue")

// Move moves a waiting or paused task in the queue to offset from the start (io.SeekStart), from where it
// is (io.SeekCurrent) or from the end (io.SeekEnd), clipped to the queue, and returns where it went: the
// place among the waiting and paused tasks, from 0, as tellWaiting lists them.
func (r *Registry) Move(gid string, offset int, whence int) (int, error) {
	at := 0
	_, err := r.update(gid, func(t *task, c *change) error {
		var waiting, active []string
		for _, g := range r.queue {
			if r.tasks[g]._active() {
				active = append(active, g)
			} else {
				waiting = append(waiting, g)
			}
		}
		from := slices.Index(waiting, t.GID)
		if from < 0 {
			return ErrNotQueued
		}
		switch whence {
		case io.SeekStart:
			at = offset
		case io.SeekCurrent:
			at = from + offset
		default:
			at = len(waiting) - 1 + offset
		}
		at = min(max(at, 0), len(waiting)-1)
		waiting = slices.Insert(slices.Delete(waiting, from, from+1), at, t.GID)
		r.queue = append(active, waiting...)
		r._renumber(c)
		return nil
	})
	return at, err
}

// ChangeURIs replaces a task's URIs by what edit makes of them. Every URI must be an absolute http or https
// one, at least one must be left, and the task must stay within its bounds. Streams playing it go on with
// the URIs they began with.
func (r *Registry) ChangeURIs(gid string, edit func(old []string) []string) error {
	_, err := r.update(gid, func(t *task, c *change) error {
		uris := edit(slices.Clone(t.URIs))
		if len(uris) == 0 || slices.ContainsFunc(uris, func(u string) bool { return !httpURI(u) }) {
			return ErrBadURI
		}
		if err := checkSize(uris, t.Options); err != nil {
			return err
		}
		t.URIs = uris
		c.save(t)
		return nil
	})
	return err
}

// httpURI reports whether u is an absolute http or https URI.
func httpURI(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != ""
}

// ErrNotDurable is why a store kept in memory has no session to save.
var ErrNotDurable = errors.New("tasks are kept in memory only: there is no session to save")

// Sync makes every task saved so far durable (aria2's saveSession): the store is asked to reach its disk,
// once the saves under way are done. A store in memory only cannot.
func (r *Registry) Sync() error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	switch s := r.store.(type) {
	case interface{ Sync() error }:
		return s.Sync()
	case *MemoryStore:
		return ErrNotDurable
	}
	return nil // a shared store keeps what it was told
}
