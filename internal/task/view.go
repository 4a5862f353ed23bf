package task

import (
	"time"

	"mflow/internal/source"
)

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
