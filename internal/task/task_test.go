package task

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/source"
	"mflow/internal/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newRegistry(t *testing.T, cfg Config, store Persister) *Registry {
	t.Helper()
	r, err := New(cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func add(t *testing.T, r *Registry, a Addition) string {
	t.Helper()
	if a.URIs == nil {
		a.URIs = []string{"http://h/a.mp4"}
	}
	gid, err := r.Add(a)
	if err != nil {
		t.Fatal(err)
	}
	return gid
}

func TestRecordsOfEarlierMflowsAreRead(t *testing.T) {
	m := NewMemory()
	m.records["1111111111111111"] = []byte(`{"gid":"1111111111111111","uris":["http://h/1"],"options":{},"state":"error","errorCode":"3","size":-1,"delivered":0}`)
	m.records["2222222222222222"] = []byte(`{"gid":"2222222222222222","uris":["http://h/2"],"options":{},"state":"active","size":-1,"delivered":0}`)
	m.records["3333333333333333"] = []byte(`{"gid":"3333333333333333","uris":["http://h/3"],"options":{},"state":"","size":-1,"delivered":0}`)
	r := newRegistry(t, Config{}, m)
	defer r.Close()
	_, waiting, stopped := r.Lists()
	if len(waiting) != 2 || len(stopped) != 1 || stopped[0].State != Failed {
		t.Errorf("waiting %+v, stopped %+v; want two waiting and the failed one stopped", waiting, stopped)
	}
}

func TestALockedStoreIsAClearError(t *testing.T) {
	dir := t.TempDir()
	b, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	began := time.Now()
	_, err = OpenBolt(dir)
	if err == nil || !strings.Contains(err.Error(), "in use by another mflow") || time.Since(began) > 5*time.Second {
		t.Fatalf("second Open: %v after %v", err, time.Since(began))
	}
}

func TestACorruptStoreIsAClearError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tasks.db"), []byte(strings.Repeat("not a database ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenBolt(dir)
	if err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("Open of a corrupt file: %v", err)
	}
}

func TestTheRegistryIsBounded(t *testing.T) {
	r := newRegistry(t, Config{MaxStopped: 2, MaxWaiting: 3}, NewMemory())
	defer r.Close()
	var gids []string
	for range 3 {
		gids = append(gids, add(t, r, Addition{}))
	}
	var te *Error
	if _, err := r.Add(Addition{URIs: []string{"http://h/a.mp4"}}); !errors.Is(err, ErrTooMany) || !errors.As(err, &te) || te.Limit != 3 {
		t.Errorf("a fourth waiting task: %v, want ErrTooMany saying 3", err)
	}
	for _, gid := range gids { // announced: each becomes a stopped, removed task
		if _, err := r.Remove(gid); err != nil {
			t.Fatal(err)
		}
	}
	_, _, stopped := r.Lists()
	if len(stopped) != 2 || stopped[0].GID != gids[1] || stopped[1].GID != gids[2] {
		t.Errorf("stopped tasks %v, want the two newest of %v", stopped, gids)
	}
	if _, err := r.Get(gids[0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("the oldest stopped task: %v, want it forgotten past MaxStopped", err)
	}
}

func TestErrorsSayWhichTaskAndWhy(t *testing.T) {
	r := newRegistry(t, Config{}, NewMemory())
	defer r.Close()
	gid := add(t, r, Addition{})
	other := add(t, r, Addition{GID: gid[:15] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", gid[15])+1)%16])})
	for _, c := range []struct {
		err  error
		kind error
		gid  string
	}{
		{second(r.Pause("zz")), ErrBadGID, "zz"},
		{second(r.Pause("0000000000000000")), ErrZeroGID, "0000000000000000"},
		{second(r.Pause("ffffffffffffff0")), ErrNotFound, "ffffffffffffff0"},
		{second(r.Pause(gid[:15])), ErrAmbiguous, gid[:15]},
		{second(r.Unpause(gid)), ErrNotPaused, gid},
		{r.RemoveResult(gid), ErrNotStopped, gid},
		{second(r.Add(Addition{URIs: []string{"ftp://h/f"}})), ErrBadURI, ""},
		{second(r.Add(Addition{URIs: []string{"http://h/f"}, GID: other})), ErrGIDTaken, other},
	} {
		var te *Error
		if !errors.Is(c.err, c.kind) || !errors.As(c.err, &te) || te.GID != c.gid {
			t.Errorf("%v: want %v about %q", c.err, c.kind, c.gid)
		}
	}
	if _, err := r.Pause(other); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Begin(t.Context(), other); !errors.Is(err, ErrPaused) {
		t.Errorf("streaming a paused task: %v, want ErrPaused", err)
	}
	if _, err := r.Remove(gid); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Remove(gid); !errors.Is(err, ErrNotRunning) {
		t.Errorf("removing a removed task: %v, want ErrNotRunning", err)
	}
}

func second(_ string, err error) error { return err }

func TestEventsTellEachChange(t *testing.T) {
	r := newRegistry(t, Config{Probe: func(_ context.Context, l source.Link) (int64, error) {
		if strings.Contains(l.URL, "missing") {
			return 0, &upstream.StatusError{Code: 404, Status: "404 Not Found", URL: l.URL}
		}
		return 1000, nil
	}}, NewMemory())
	defer r.Close()
	events, stop := r.Subscribe()
	defer stop()
	gid := add(t, r, Addition{Paused: true}) // not announced
	mustOK(t, second(r.Unpause(gid)))
	mustOK(t, second(r.Pause(gid)))
	mustOK(t, second(r.Remove(gid)))
	failing := add(t, r, Addition{URIs: []string{"http://h/missing.mp4"}})
	want := []Event{{EventStarted, gid}, {EventPaused, gid}, {EventStopped, gid}, {EventStarted, failing}, {EventFailed, failing}}
	for i, w := range want {
		if got := <-events; got != w {
			t.Errorf("event %d: %+v, want %+v", i, got, w)
		}
	}
	v, err := r.Get(failing)
	if err != nil || v.State != Failed || v.Failure == nil || v.Failure.Kind != upstream.KindStatus || v.Failure.Code != 404 {
		t.Errorf("a task its upstream refused: %+v, %v", v, err)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// blockingStore is a Persister whose Save waits until released: a full disk, a slow fsync.
type blockingStore struct {
	*MemoryStore
	saving  chan struct{} // receives when a Save begins
	release chan struct{} // closed to let Saves finish
}

func (b *blockingStore) Save(rec Record) error {
	b.saving <- struct{}{}
	<-b.release
	return b.MemoryStore.Save(rec)
}

func TestASlowSaveHoldsUpNoPlayerAndNoRead(t *testing.T) {
	store := &blockingStore{MemoryStore: NewMemory(), saving: make(chan struct{}, 16), release: make(chan struct{})}
	r := newRegistry(t, Config{}, store)
	defer r.Close()
	added := make(chan string)
	go func() { gid, _ := r.Add(Addition{URIs: []string{"http://h/a.mp4"}}); added <- gid }()
	<-store.saving // the task's save is under way and stuck
	_, waiting, _ := r.Lists()
	if len(waiting) != 1 {
		t.Fatalf("%d tasks listed while the save is stuck, want 1", len(waiting))
	}
	gid := waiting[0].GID
	st, err := r.Begin(t.Context(), gid) // a player starts, and takes bytes
	if err != nil {
		t.Fatal(err)
	}
	st.Delivered(10)
	if v, err := r.Get(gid); err != nil || v.Delivered != 10 || v.State != Active {
		t.Errorf("the task while its save is stuck: %+v, %v", v, err)
	}
	close(store.release)
	<-added
	st.End()
}

func TestAPlayersBytesAreCountedWithoutTheLock(t *testing.T) {
	r := newRegistry(t, Config{}, NewMemory())
	defer r.Close()
	gid := add(t, r, Addition{})
	st, err := r.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	st.Delivered(100) // would deadlock if it took the lock
	r.mu.Unlock()
	st.End()
	if v, _ := r.Get(gid); v.Delivered != 100 {
		t.Errorf("delivered %d, want 100", v.Delivered)
	}
}

// failingStore refuses every Save, as a full disk would.
type failingStore struct{ *MemoryStore }

func (failingStore) Save(Record) error { return errors.New("no space left on device") }

func TestAFailedSaveIsReturnedAndLogged(t *testing.T) {
	var logs bytes.Buffer
	r := newRegistry(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, failingStore{NewMemory()})
	defer r.Close()
	events, unsubscribe := r.Subscribe()
	defer unsubscribe()
	if _, err := r.Add(Addition{URIs: []string{"http://h/a.mp4"}, GID: "00000000000000a1"}); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("Add with a full disk: %v, want the disk's error", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "no space left") {
		t.Errorf("log %q, want a WARN line with the disk's error", logs.String())
	}
	// An add answered with an error leaves no task behind, and no client heard of one.
	if _, err := r.Get("00000000000000a1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the task whose save failed: %v, want it not there", err)
	}
	if active, waiting, stopped := r.Lists(); len(active)+len(waiting)+len(stopped) != 0 {
		t.Errorf("tasks after a failed add: %v %v %v", active, waiting, stopped)
	}
	if len(events) != 0 {
		t.Errorf("a client heard %+v of a task that was not added", <-events)
	}
}

func TestATasksURIsAreBounded(t *testing.T) {
	r := newRegistry(t, Config{}, NewMemory())
	defer r.Close()
	long := "http://h/" + strings.Repeat("a", MaxURIBytes)
	many := slices.Repeat([]string{"http://h/a.mp4"}, MaxURIs+1)
	mirrors := slices.Repeat([]string{"http://h/" + strings.Repeat("b", 8<<10)}, 8) // each fine, together over
	for what, a := range map[string]Addition{
		"a URI over 16 KiB":        {URIs: []string{long}},
		"17 URIs":                  {URIs: many},
		"URIs over 64 KiB in all":  {URIs: mirrors},
		"options and URIs over it": {URIs: mirrors[:4], Options: map[string]string{"header": strings.Repeat("c", 40<<10)}},
		// Counted as stored: an invalid byte takes three there (U+FFFD).
		"6 KiB of invalid UTF-8": {URIs: []string{"http://h/" + strings.Repeat("\xff", 6<<10)}},
	} {
		if _, err := r.Add(a); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrTooLarge", what, err)
		}
	}
	// '<' is stored as itself: a link full of them is kept at its size.
	store := NewMemory()
	r2 := newRegistry(t, Config{}, store)
	defer r2.Close()
	angles := add(t, r2, Addition{URIs: []string{"http://h/" + strings.Repeat("<", MaxURIBytes-20)}})
	if n := len(store.records[angles]); n > MaxURIBytes+1024 {
		t.Errorf("a task with a %d-byte URI of '<' takes %d bytes in the store", MaxURIBytes-11, n)
	}
	gid := add(t, r, Addition{URIs: mirrors[:4]})
	err := r.ChangeOptions(gid, func(map[string]string) (map[string]string, error) {
		return map[string]string{"header": strings.Repeat("c", 40<<10)}, nil
	})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("options that make the task too large: %v, want ErrTooLarge", err)
	}
}

func TestReadsChangeNothing(t *testing.T) {
	r := newRegistry(t, Config{}, NewMemory())
	defer r.Close()
	gid := add(t, r, Addition{})
	st, err := r.Begin(t.Context(), gid)
	if err != nil {
		t.Fatal(err)
	}
	defer st.End()
	st.Delivered(5)
	var before [meterSlots]uint64
	for i := range before {
		before[i] = st.task.speed.slots[i].Load()
	}
	for range 3 {
		if _, err := r.Get(gid); err != nil {
			t.Fatal(err)
		}
		r.Lists()
	}
	for i := range before {
		if before[i] != st.task.speed.slots[i].Load() {
			t.Error("reading a task changed its speed meter")
		}
	}
}

func TestTheMeterCountsTheLastWholeSeconds(t *testing.T) {
	var m meter
	t0 := time.Unix(1_000_000, 0)
	m.add(t0, 1000)
	m.add(t0.Add(500*time.Millisecond), 1000)
	m.add(t0.Add(time.Second), 4000)
	if got := m.rate(t0.Add(2 * time.Second)); got != 3000 {
		t.Errorf("rate = %d, want 3000: 6000 bytes over the two seconds before", got)
	}
	if got := m.rate(t0.Add(10 * time.Second)); got != 0 {
		t.Errorf("rate long after = %d, want 0", got)
	}
	m.add(t0.Add(4*time.Second), 10) // the slot of t0 again: its old count must not add up
	if got := m.rate(t0.Add(5 * time.Second)); got != 5 {
		t.Errorf("rate = %d, want 5", got)
	}
}

// conflictingStore is a shared store on which another instance wins the next saves: each of them
// answers ErrConflict.
type conflictingStore struct {
	*MemoryStore
	conflicts atomic.Int32 // saves still to refuse
}

func (s *conflictingStore) Save(rec Record) error {
	if s.conflicts.Add(-1) >= 0 {
		return ErrConflict
	}
	return s.MemoryStore.Save(rec)
}

func (s *conflictingStore) Get(_ context.Context, gid string) (Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.records[gid]
	if !ok {
		return Record{}, false, nil
	}
	rec, err := Decode(gid, b)
	return rec, err == nil, err
}

func (s *conflictingStore) Publish(context.Context, []Change) error { return nil }
func (s *conflictingStore) Follow(ctx context.Context, _ func([]Change, bool), resync func()) {
	resync() // subscribed: as Redis' first answer
	<-ctx.Done()
}
func (s *conflictingStore) Ready() error { return nil }
func (s *conflictingStore) Exchange(context.Context, map[string]Figures) (map[string]Figures, error) {
	return nil, nil
}

func TestAChangeAnotherInstanceBeatIsMadeAgain(t *testing.T) {
	store := &conflictingStore{MemoryStore: NewMemory()}
	r := newRegistry(t, Config{}, store)
	defer r.Close()
	gid := add(t, r, Addition{})
	events, stop := r.Subscribe()
	defer stop()
	store.conflicts.Store(2) // the background probe's size, say, saved first twice
	if _, err := r.Pause(gid); err != nil {
		t.Fatalf("a pause beaten to the store: %v; want it made again over the other's change", err)
	}
	if kept, _, _ := store.Get(t.Context(), gid); kept.State != Paused {
		t.Errorf("the store keeps %v, want paused", kept.State)
	}
	if ev := <-events; ev != (Event{EventPaused, gid}) || len(events) != 0 {
		t.Errorf("heard %v and %d more, want one pause", ev, len(events))
	}
	store.conflicts.Store(retries + 1) // beaten every time: the client hears why
	if _, err := r.Unpause(gid); !errors.Is(err, ErrConflict) {
		t.Errorf("an unpause beaten %d times: %v, want ErrConflict", retries+1, err)
	}
}

func TestADamagedPageIsOneLineNotAPanic(t *testing.T) {
	dir := t.TempDir()
	b, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := b.Save(Record{GID: fmt.Sprintf("%016x", i+1), URIs: []string{"http://h/" + strings.Repeat("a", 500)}}); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	file := filepath.Join(dir, "tasks.db")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// The two meta pages stay good; every page after them is garbage that looks like pages.
	page := os.Getpagesize()
	for i := 2 * page; i < len(data); i++ {
		data[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var loadErr error
	func() {
		defer func() {
			if v := recover(); v != nil {
				t.Fatalf("a damaged store panicked: %v", v)
			}
		}()
		b, err := OpenBolt(dir)
		if err != nil {
			loadErr = err
			return
		}
		_, loadErr = b.Load()
	}()
	if loadErr == nil || !strings.Contains(loadErr.Error(), file) || !strings.Contains(loadErr.Error(), "move it away") || strings.Contains(loadErr.Error(), "\n") {
		t.Errorf("a damaged store: %v; want one line naming the file and what to do", loadErr)
	}
}

// slowSubscriber is a shared store whose subscription is confirmed after subscribeIn, as Redis' is on a
// busy machine.
type slowSubscriber struct {
	conflictingStore
	subscribeIn time.Duration
}

func (s *slowSubscriber) Follow(ctx context.Context, _ func([]Change, bool), resync func()) {
	select {
	case <-time.After(s.subscribeIn):
		resync()
	case <-ctx.Done():
	}
	<-ctx.Done()
}

func TestARegistryOnASharedStoreAnswersOnceItHearsTheOthers(t *testing.T) {
	for _, c := range []struct {
		subscribeIn, ready time.Duration
	}{
		{2 * time.Second, 2 * time.Second}, // clients that come in then hear every event from the start
		{time.Minute, followWait},          // a Redis that does not answer: followed when it does
	} {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			r := newRegistry(t, Config{}, &slowSubscriber{conflictingStore: conflictingStore{MemoryStore: NewMemory()}, subscribeIn: c.subscribeIn})
			if took := time.Since(start); took != c.ready {
				t.Errorf("subscribed in %v: the registry was made in %v, want %v", c.subscribeIn, took, c.ready)
			}
			r.Close()
		})
	}
}
