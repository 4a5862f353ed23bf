// Package tasktest is the test suite every task store passes: what a store keeps and the tasks it gives
// back after a restart; and, for a store several instances share, two registries on it acting as one.
package tasktest

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"mflow/internal/access"
	"mflow/internal/source"
	"mflow/internal/task"
	"mflow/internal/testsync"
	"mflow/internal/upstream"
)

// Open opens the store under test afresh over the same place each time it is called: a restart, or
// another instance.
type Open func(t *testing.T) task.Persister

// config stands in for the RPC's: option "cookie" is the Cookie header, "name" the file name; every
// probe finds 1234 bytes.
var config = task.Config{
	Probe: func(context.Context, source.Link) (int64, error) { return 1234, nil },
	Interpret: func(_ []string, options map[string]string) (task.Spec, error) {
		h := http.Header{}
		if c := options["cookie"]; c != "" {
			h.Set("Cookie", c)
		}
		return task.Spec{Header: h, Name: options["name"]}, nil
	},
	Logger: slog.New(slog.DiscardHandler),
}

// TestStore runs the suite every store passes.
func TestStore(t *testing.T, open Open) {
	t.Run("KeepsWhatItIsGiven", func(t *testing.T) { keepsWhatItIsGiven(t, open) })
	t.Run("TasksSurviveARestart", func(t *testing.T) { tasksSurviveARestart(t, open) })
	t.Run("TheQueuesOrderSurvivesARestart", func(t *testing.T) { theQueuesOrderSurvivesARestart(t, open) })
}

func theQueuesOrderSurvivesARestart(t *testing.T, open Open) {
	r := newRegistry(t, open(t))
	for _, gid := range gids(r) { // what the tests before left
		r.Remove(gid)
	}
	r.PurgeResults()
	a, b, c := add(t, r, task.Addition{}), add(t, r, task.Addition{}), add(t, r, task.Addition{Paused: true})
	for _, m := range []struct {
		offset, whence, at int
		order              []string
	}{
		{0, io.SeekStart, 0, []string{c, a, b}},
		{5, io.SeekCurrent, 2, []string{a, b, c}}, // past the end: the end
		{-1, io.SeekEnd, 1, []string{a, c, b}},
		{-100, io.SeekCurrent, 0, []string{c, a, b}},
	} {
		at, err := r.Move(c, m.offset, m.whence)
		if got := gids(r); err != nil || at != m.at || !slices.Equal(got, m.order) {
			t.Errorf("Move(%d, %d) = %d, %v, order %v; want %d, order %v", m.offset, m.whence, at, err, got, m.at, m.order)
		}
	}
	front := add(t, r, task.Addition{Position: 1}) // addUri's position
	if got := gids(r); !slices.Equal(got, []string{c, front, a, b}) {
		t.Errorf("added at 1: %v", got)
	}
	if err := r.ChangeURIs(a, func(old []string) []string { return append(old, "http://mirror/a.mp4") }); err != nil {
		t.Fatal(err)
	}
	if err := r.ChangeURIs(a, func([]string) []string { return nil }); !errors.Is(err, task.ErrBadURI) {
		t.Errorf("a task left without a URI: %v, want ErrBadURI", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = newRegistry(t, open(t))
	defer r.Close()
	if got := gids(r); !slices.Equal(got, []string{c, front, a, b}) {
		t.Errorf("after a restart: %v, want %v", got, []string{c, front, a, b})
	}
	if v, _ := r.Get(a); !slices.Equal(v.URIs, []string{"http://h/a.mp4", "http://mirror/a.mp4"}) {
		t.Errorf("the changed URIs after a restart: %v", v.URIs)
	}
	for _, gid := range []string{a, b, c, front} {
		r.Remove(gid)
	}
	r.PurgeResults()
}

// gids are the waiting and paused tasks' GIDs in queue order.
func gids(r *task.Registry) []string {
	_, waiting, _ := r.Lists()
	var out []string
	for _, v := range waiting {
		out = append(out, v.GID)
	}
	return out
}

func keepsWhatItIsGiven(t *testing.T, open Open) {
	p := open(t)
	f := upstream.Failure{Kind: upstream.KindStatus, Code: 404, Message: "gone"}
	one := task.Record{GID: "1111111111111111", URIs: []string{"http://h/1"}, Options: map[string]string{"k": "v"}, State: task.Failed, Failure: &f, Size: 5, Delivered: 3, Added: time.Unix(100, 0).UTC(), Announced: true, From: access.Private, Rev: 1}
	two := task.Record{GID: "2222222222222222", URIs: []string{"http://h/2"}, State: task.Paused, Size: -1, Rev: 1}
	twoAgain := two
	twoAgain.Rev = 2
	for _, rec := range []task.Record{one, two, twoAgain} {
		if err := p.Save(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Delete(two.GID); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete("3333333333333333"); err != nil {
		t.Errorf("deleting what is not kept: %v", err)
	}
	got, err := p.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].GID != one.GID || got[0].State != task.Failed || *got[0].Failure != f || got[0].Options["k"] != "v" ||
		got[0].Size != 5 || got[0].Delivered != 3 || !got[0].Added.Equal(one.Added) || !got[0].Announced || got[0].From != access.Private || got[0].Rev != 1 {
		t.Errorf("loaded %+v, want %+v", got, one)
	}
	if err := p.Delete(one.GID); err != nil { // leaves the place empty for the next test
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func tasksSurviveARestart(t *testing.T, open Open) {
	r := newRegistry(t, open(t))
	kept := add(t, r, task.Addition{Options: map[string]string{"cookie": "a=b", "name": "A.mp4"}})
	paused := add(t, r, task.Addition{Paused: true})
	gone := add(t, r, task.Addition{})
	if _, err := r.Remove(gone); err != nil {
		t.Fatal(err)
	}
	st, err := r.Begin(t.Context(), kept)
	if err != nil {
		t.Fatal(err)
	}
	if st.Link.Header.Get("Cookie") != "a=b" || st.Link.Name != "A.mp4" || st.Link.URL != "http://h/a.mp4" {
		t.Errorf("the stream's link %+v does not say what the options say", st.Link)
	}
	st.Delivered(999)
	st.End()
	testsync.WaitFor(t, "the background probe", func() bool { v, err := r.Get(kept); return err == nil && v.Size == 1234 })
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	r = newRegistry(t, open(t))
	defer r.Close()
	active, waiting, stopped := r.Lists()
	if len(active) != 0 || len(waiting) != 2 || len(stopped) != 1 {
		t.Fatalf("after a restart: %d active, %d waiting, %d stopped", len(active), len(waiting), len(stopped))
	}
	a, b := waiting[0], waiting[1]
	if a.GID != kept || a.State != task.Waiting || a.Delivered != 999 || a.Size != 1234 || a.Options["cookie"] != "a=b" {
		t.Errorf("first task after a restart: %+v", a)
	}
	if b.GID != paused || b.State != task.Paused {
		t.Errorf("second task after a restart: %+v", b)
	}
	if v, err := r.Get(gone); err != nil || v.State != task.Removed {
		t.Errorf("a removed task announced as started: %+v, %v; want it kept as removed", v, err)
	}
}

// TestSharedStore runs the suite of a store several instances share: two registries on it, each
// seeing at once what the other does, hearing each of its events once, and adding up their players.
func TestSharedStore(t *testing.T, open Open) {
	a, b := newRegistry(t, open(t)), newRegistry(t, open(t))
	defer a.Close()
	defer b.Close()
	heardA, heardB := listen(a), listen(b)
	defer heardA.stop()
	defer heardB.stop()

	p := open(t)
	rec := task.Record{GID: "1111111111111111", URIs: []string{"http://h/1"}, Rev: 1}
	mustOK(t, p.Save(rec))
	if err := p.Save(rec); !errors.Is(err, task.ErrConflict) {
		t.Errorf("saving over a revision another instance saved: %v, want ErrConflict", err)
	}
	mustOK(t, p.Delete(rec.GID))
	mustOK(t, p.Close())

	gid := add(t, a, task.Addition{Options: map[string]string{"cookie": "a=b"}})
	if v, err := b.Get(gid); err != nil || v.Options["cookie"] != "a=b" || v.State != task.Waiting {
		t.Fatalf("the other instance, at once: %+v, %v", v, err)
	}
	mustOK(t, second(b.Pause(gid)))
	if _, err := a.Begin(t.Context(), gid); !errors.Is(err, task.ErrPaused) {
		t.Errorf("paused on the other instance, streamed here: %v, want ErrPaused", err)
	}
	mustOK(t, second(b.Unpause(gid)))
	mustOK(t, b.ChangeOptions(gid, func(map[string]string) (map[string]string, error) {
		return map[string]string{"cookie": "c=d"}, nil
	}))
	stA, err := a.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	if c := stA.Link.Header.Get("Cookie"); c != "c=d" {
		t.Errorf("a stream after the other instance changed the options sends Cookie %q, want c=d", c)
	}
	stB, err := b.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	stA.Delivered(1000)
	stB.Delivered(500)
	for name, r := range map[string]*task.Registry{"a": a, "b": b} {
		testsync.WaitFor(t, "instance "+name+" counting both players", func() bool {
			v, err := r.Get(gid)
			return err == nil && v.Delivered == 1500 && v.Streams == 2 && v.State == task.Active
		})
	}
	testsync.WaitFor(t, "the other instance listing it as active", func() bool {
		active, _, _ := b.Lists()
		return len(active) == 1 && active[0].GID == gid
	})
	stB.End()

	mustOK(t, second(b.Pause(gid))) // ends the stream playing on a
	select {
	case <-stA.Context.Done():
		if !errors.Is(context.Cause(stA.Context), task.ErrStopped) {
			t.Errorf("the stream ended with %v, want ErrStopped", context.Cause(stA.Context))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pausing on one instance did not stop the stream playing on the other")
	}
	stA.End()
	mustOK(t, second(a.Remove(gid)))
	if v, err := b.Get(gid); err != nil || v.State != task.Removed {
		t.Errorf("removed on the other instance: %+v, %v", v, err)
	}
	mustOK(t, b.RemoveResult(gid))
	testsync.WaitFor(t, "the result forgotten on the other instance", func() bool {
		_, _, stopped := a.Lists()
		return len(stopped) == 0
	})

	// A last task, added on each side: once both hear it, every earlier event has been heard.
	last := add(t, b, task.Addition{})
	want := []task.Event{{Kind: task.EventStarted, GID: gid}, {Kind: task.EventPaused, GID: gid}, {Kind: task.EventStarted, GID: gid},
		{Kind: task.EventPaused, GID: gid}, {Kind: task.EventStopped, GID: gid}, {Kind: task.EventStarted, GID: last}}
	for name, heard := range map[string]*events{"a": heardA, "b": heardB} {
		// Another instance's events come as its notices are heard: a change made here a moment after
		// one made there may be told first.
		got := heard.until(t, task.Event{Kind: task.EventStarted, GID: last})
		if !slices.Equal(sorted(got), sorted(want)) {
			t.Errorf("instance %s heard %v, want each event once: %v", name, got, want)
		}
	}

	// Both instances pause and unpause one task at once, over and over: each change is saved over the
	// revision it was made from or refused, and both end as the store holds it.
	raced := add(t, a, task.Addition{})
	var wg sync.WaitGroup
	for _, r := range []*task.Registry{a, b} {
		wg.Go(func() {
			for i := range 40 {
				var err error
				if i%2 == 0 {
					_, err = r.Pause(raced)
				} else {
					_, err = r.Unpause(raced)
				}
				if err != nil && !errors.Is(err, task.ErrConflict) && !errors.Is(err, task.ErrNotPaused) && !errors.Is(err, task.ErrNotPausable) {
					t.Errorf("pausing and unpausing on two instances at once: %v", err)
				}
			}
		})
	}
	wg.Wait()
	listed := func(r *task.Registry) task.State {
		_, waiting, _ := r.Lists()
		for _, v := range waiting {
			if v.GID == raced {
				return v.State
			}
		}
		return task.Removed
	}
	testsync.WaitFor(t, "both instances holding what the store holds", func() bool {
		kept, err := a.Get(raced) // read from the store
		return err == nil && listed(a) == kept.State && listed(b) == kept.State
	})
}

func sorted(evs []task.Event) []task.Event {
	return slices.SortedFunc(slices.Values(evs), func(a, b task.Event) int {
		return cmp.Or(cmp.Compare(a.GID, b.GID), cmp.Compare(a.Kind, b.Kind))
	})
}

// events collects what a registry's subscribers hear.
type events struct {
	ch   <-chan task.Event
	stop func()
}

func listen(r *task.Registry) *events {
	ch, stop := r.Subscribe()
	return &events{ch: ch, stop: stop}
}

// until returns the events heard up to and with last.
func (e *events) until(t *testing.T, last task.Event) []task.Event {
	t.Helper()
	var got []task.Event
	for {
		select {
		case ev := <-e.ch:
			got = append(got, ev)
			if ev == last {
				return got
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("heard %v, and not %v", got, last)
		}
	}
}

func newRegistry(t *testing.T, store task.Persister) *task.Registry {
	t.Helper()
	r, err := task.New(config, store)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func add(t *testing.T, r *task.Registry, a task.Addition) string {
	t.Helper()
	if a.URIs == nil {
		a.URIs = []string{"http://h/a.mp4"}
	}
	if a.Position == 0 {
		a.Position = -1 // last, as addUri adds without a position
	}
	gid, err := r.Add(a)
	if err != nil {
		t.Fatal(err)
	}
	return gid
}

func second(_ string, err error) error { return err }

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
