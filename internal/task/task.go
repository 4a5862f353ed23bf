// Package task keeps the streams registered over the aria2 JSON-RPC: each task is a link with a drive's
// headers and its own settings, a status as aria2 names them, and the bytes players took from it. Tasks
// persist across restarts when the store has a file.
package task

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"mflow/internal/access"
	"mflow/internal/link"
	"mflow/internal/upstream"
)

// Status is a task's status, as aria2 reports it.
type Status string

const (
	Active  Status = "active"  // a player is streaming it
	Waiting Status = "waiting" // registered, no player now
	Paused  Status = "paused"  // streams refused until unpaused
	Removed Status = "removed" // removed while a player streamed it; kept in the stopped list
	Failed  Status = "error"   // its upstream refused it
)

// Event names, as aria2's WebSocket notifications.
const (
	OnStart = "aria2.onDownloadStart"
	OnPause = "aria2.onDownloadPause"
	OnStop  = "aria2.onDownloadStop"
	OnError = "aria2.onDownloadError"
)

// Event is a notification for every open WebSocket.
type Event struct {
	Method string // one of the On… names
	GID    string // the task
}

// Task is one registered stream. The store owns it: read it through Snapshot.
type Task struct {
	GID          string            `json:"gid"`
	URIs         []string          `json:"uris"`    // mirrors of one file
	Options      map[string]string `json:"options"` // aria2 option names and values, as accepted
	State        Status            `json:"state"`   // Waiting, Paused, Removed or Failed; Active is computed
	ErrorCode    string            `json:"errorCode,omitempty"`
	ErrorMessage string            `json:"errorMessage,omitempty"`
	Size         int64             `json:"size"`      // -1 until probed
	Delivered    int64             `json:"delivered"` // bytes players took
	Added        time.Time         `json:"added"`
	// Announced is set once onDownloadStart was sent for the task: a client that heard it shows the task
	// as started until it hears Stop or Error, so removing it must send Stop and keep it as removed.
	Announced bool `json:"announced,omitempty"`
	// From is the class of the client that added the task: its background probe may reach what that
	// client could reach through a player, no more.
	From access.Client `json:"from,omitempty"`

	streams     map[*Stream]struct{} // players streaming it now
	sampleAt    time.Time            // when speed was last computed
	sampleBytes int64                // Delivered then
	speed       int64                // bytes/s over the last sample
}

// View is a copy of a task's state for the RPC.
type View struct {
	Task
	Status      Status // with Active computed
	Speed       int64  // bytes/s
	Connections int    // upstream connections open for it now, about
	Name        string // the file name players are told
}

// Settings are a store's defaults for tasks that set nothing, and its bounds.
type Settings struct {
	Connections int    // per stream
	MinSpeed    int64  // bytes/s, 0 = off
	UserAgent   string // sent when a task sets none
	// MaxStopped is how many stopped tasks are kept, the oldest forgotten first (aria2's
	// --max-download-result). Default 1000.
	MaxStopped int
	// MaxWaiting bounds the waiting and paused tasks: an add beyond it is refused. Default 1000.
	MaxWaiting int
}

// Store keeps tasks. Its methods are safe for concurrent use.
type Store struct {
	settings Settings
	probe    func(context.Context, link.Link) (int64, error) // learns a link's size in the background
	save     func(*Task) error                               // persists a task; nil in memory
	erase    func(gid string) error                          // forgets a persisted task
	closeDB  func()                                          // closes the file, after the probes end

	ctx    context.Context    // ends the background probes
	cancel context.CancelFunc // ends ctx
	wg     sync.WaitGroup     // the background probes

	mu     sync.Mutex
	tasks  map[string]*Task
	queue  []string                // waiting and paused tasks, in order
	done   []string                // stopped tasks (Removed, Failed), oldest first
	stops  int                     // stopped tasks ever, for numStoppedTotal
	subs   map[chan Event]struct{} // notification subscribers
	global map[string]string       // options changed with changeGlobalOption
}

// Errors, worded as aria2 words them: the RPC sends their text as it is.
var (
	ErrNotFound    = errors.New("not found")
	ErrNotUnique   = errors.New("not unique")
	ErrInvalidGID  = errors.New("Invalid GID")
	ErrCannotPause = errors.New("cannot be paused now")
	ErrCannotStart = errors.New("cannot be unpaused now")
	ErrNotActive   = errors.New("Active Download not found")
	ErrPaused      = errors.New("task is paused")
	// ErrStopped is why a task's streams end when it is paused or removed.
	ErrStopped = errors.New("task paused or removed")
	// ErrTooMany refuses a task beyond Settings.MaxWaiting.
	ErrTooMany = errors.New("Too many tasks waiting")
)

// OptionError is a bad value for an aria2 option.
type OptionError struct{ Name string }

func (e *OptionError) Error() string {
	return fmt.Sprintf("We encountered a problem while processing the option '--%s'.", e.Name)
}

// NewStore returns an empty store in memory. probe learns a link's size for a new task.
func NewStore(settings Settings, probe func(context.Context, link.Link) (int64, error)) *Store {
	if settings.MaxStopped <= 0 {
		settings.MaxStopped = 1000
	}
	if settings.MaxWaiting <= 0 {
		settings.MaxWaiting = 1000
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{settings: settings, probe: probe, ctx: ctx, cancel: cancel, tasks: map[string]*Task{},
		subs: map[chan Event]struct{}{}, global: map[string]string{}}
}

// Close ends the background probes, waits for them, and closes the store's file.
func (s *Store) Close() {
	s.cancel()
	s.wg.Wait()
	if s.closeDB != nil {
		s.closeDB()
	}
}

// load puts persisted tasks back, in the order they were added.
func (s *Store) load(tasks []*Task) {
	slices.SortFunc(tasks, func(a, b *Task) int { return a.Added.Compare(b.Added) })
	for _, t := range tasks {
		if t.State == Active || t.State == "" {
			t.State = Waiting // a stream does not outlive the process
		}
		s.tasks[t.GID] = t
		if t.stopped() {
			s.done = append(s.done, t.GID)
			s.stops++
		} else {
			s.queue = append(s.queue, t.GID)
		}
	}
}

func (t *Task) stopped() bool { return t.State == Removed || t.State == Failed }

// Subscribe returns a channel of events and the function that ends the subscription. Events are dropped
// for a subscriber that does not keep up, rather than holding the store.
func (s *Store) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

// _announce tells the subscribers that t started. Call with the lock held.
func (s *Store) _announce(t *Task) {
	t.Announced = true
	s._notify(OnStart, t.GID)
}

// _notify sends an event to every subscriber. Call with the lock held.
func (s *Store) _notify(method, gid string) {
	for ch := range s.subs {
		select {
		case ch <- Event{Method: method, GID: gid}:
		default:
		}
	}
}

// _persist saves t, when the store has a file. Call with the lock held.
func (s *Store) _persist(t *Task) error {
	if s.save == nil {
		return nil
	}
	return s.save(t)
}

// Add registers a task for uris with aria2 options, at position in the queue (-1: at the end), and
// starts probing its size in the background. It returns the GID.
func (s *Store) Add(uris []string, options map[string]string, position int, from access.Client) (string, error) {
	opts, err := normalize(options)
	if err != nil {
		return "", err
	}
	for _, u := range uris {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return "", errors.New("No URI to download.")
		}
	}
	paused := opts["pause"] == "true"
	delete(opts, "pause") // aria2 does not keep it per task
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) >= s.settings.MaxWaiting {
		return "", fmt.Errorf("%w: at most %d; remove some, or start mflow with a larger --max-waiting", ErrTooMany, s.settings.MaxWaiting)
	}
	gid := opts["gid"]
	delete(opts, "gid")
	if gid == "" {
		gid = s._newGID()
	} else if _, taken := s.tasks[gid]; taken {
		return "", errors.New("No URI to download.")
	}
	t := &Task{GID: gid, URIs: uris, Options: opts, State: Waiting, Size: -1, Added: time.Now(), From: from, streams: map[*Stream]struct{}{}}
	if paused {
		t.State = Paused
	}
	if err := s._persist(t); err != nil {
		return "", err
	}
	s.tasks[gid] = t
	if position < 0 || position > len(s.queue) {
		position = len(s.queue)
	}
	s.queue = slices.Insert(s.queue, position, gid)
	if !paused {
		s._announce(t)
	}
	s.wg.Go(func() { s.probeSize(gid) })
	return gid, nil
}

// _newGID returns an unused random GID: 16 lowercase hex digits, not all zero. Call with the lock held.
func (s *Store) _newGID() string {
	for {
		var b [8]byte
		rand.Read(b[:])
		gid := hex.EncodeToString(b[:])
		if _, taken := s.tasks[gid]; !taken && gid != "0000000000000000" {
			return gid
		}
	}
}

// probeSize learns a new task's size; a refusal marks it Failed with aria2's error code.
func (s *Store) probeSize(gid string) {
	s.mu.Lock()
	t := s.tasks[gid]
	if t == nil {
		s.mu.Unlock()
		return
	}
	l := s._link(t)
	ctx := s.ctx
	if p := s._proxy(t); p != nil {
		ctx = upstream.WithProxy(ctx, p)
	}
	s.mu.Unlock()
	size, err := s.probe(ctx, l)
	if s.ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tasks[gid] != t {
		return
	}
	if err != nil {
		if !t.stopped() {
			s._fail(t, err)
		}
		return
	}
	t.Size = size
	s._persist(t)
}

// _fail marks t Failed because of err, and tells the subscribers. Call with the lock held.
func (s *Store) _fail(t *Task, err error) {
	t.ErrorCode, t.ErrorMessage = ariaError(err)
	s._stop(t, Failed)
	s._notify(OnError, t.GID)
}

// _stop moves t to the stopped list with state. Call with the lock held.
func (s *Store) _stop(t *Task, state Status) {
	t.State = state
	s.queue = slices.DeleteFunc(s.queue, func(g string) bool { return g == t.GID })
	s.done = append(s.done, t.GID)
	s.stops++
	for st := range t.streams {
		st.cancel(ErrStopped)
	}
	s._persist(t)
	for len(s.done) > s.settings.MaxStopped {
		s._forget(s.tasks[s.done[0]])
	}
}

// _find resolves a GID or a unique prefix of one. Call with the lock held.
func (s *Store) _find(gid string) (*Task, error) {
	if gid == "" || len(gid) > 16 || strings.Trim(gid, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("%w %s", ErrInvalidGID, gid)
	}
	if t := s.tasks[gid]; t != nil {
		return t, nil
	}
	var found *Task
	for g, t := range s.tasks {
		if strings.HasPrefix(g, gid) {
			if found != nil {
				return nil, fmt.Errorf("GID %s is %w", gid, ErrNotUnique)
			}
			found = t
		}
	}
	if found == nil {
		return nil, fmt.Errorf("GID %s is %w", gid, ErrNotFound)
	}
	return found, nil
}

// update runs change on the task gid names, with the lock held, and returns the task's full GID.
func (s *Store) update(gid string, change func(t *Task) error) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s._find(gid)
	if err != nil {
		return "", err
	}
	if err := change(t); err != nil {
		return "", err
	}
	return t.GID, nil
}

// Remove stops a task. One announced as started (or being streamed) becomes Removed, its streams end and
// onDownloadStop is sent, as aria2 does for a download it started; one never announced (added paused) is
// forgotten silently, as aria2 forgets a download it never started.
func (s *Store) Remove(gid string) (string, error) {
	return s.update(gid, func(t *Task) error {
		switch {
		case t.stopped():
			return fmt.Errorf("%w for GID#%s", ErrNotActive, t.GID)
		case len(t.streams) > 0 || t.Announced:
			s._stop(t, Removed)
			s._notify(OnStop, t.GID)
		default:
			s._forget(t)
		}
		return nil
	})
}

func (s *Store) _forget(t *Task) {
	delete(s.tasks, t.GID)
	s.queue = slices.DeleteFunc(s.queue, func(g string) bool { return g == t.GID })
	s.done = slices.DeleteFunc(s.done, func(g string) bool { return g == t.GID })
	if s.erase != nil {
		s.erase(t.GID)
	}
}

// Pause pauses a waiting or active task; its streams end, and new ones are refused.
func (s *Store) Pause(gid string) (string, error) {
	return s.update(gid, func(t *Task) error {
		if t.State != Waiting {
			return fmt.Errorf("GID#%s %w", t.GID, ErrCannotPause)
		}
		s._pause(t)
		return nil
	})
}

func (s *Store) _pause(t *Task) {
	t.State = Paused
	for st := range t.streams {
		st.cancel(ErrStopped)
	}
	s._persist(t)
	s._notify(OnPause, t.GID)
}

// Unpause lets a paused task be streamed again.
func (s *Store) Unpause(gid string) (string, error) {
	return s.update(gid, func(t *Task) error {
		if t.State != Paused {
			return fmt.Errorf("GID#%s %w", t.GID, ErrCannotStart)
		}
		s._unpause(t)
		return nil
	})
}

func (s *Store) _unpause(t *Task) {
	t.State = Waiting
	s._announce(t)
	s._persist(t)
}

// PauseAll pauses every waiting or active task.
func (s *Store) PauseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, gid := range s.queue {
		if t := s.tasks[gid]; t.State == Waiting {
			s._pause(t)
		}
	}
}

// UnpauseAll unpauses every paused task.
func (s *Store) UnpauseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, gid := range s.queue {
		if t := s.tasks[gid]; t.State == Paused {
			s._unpause(t)
		}
	}
}

// RemoveResult forgets a stopped task.
func (s *Store) RemoveResult(gid string) error {
	_, err := s.update(gid, func(t *Task) error {
		if !t.stopped() {
			return fmt.Errorf("Could not remove download result of GID#%s", t.GID)
		}
		s._forget(t)
		return nil
	})
	return err
}

// PurgeResults forgets every stopped task.
func (s *Store) PurgeResults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, gid := range slices.Clone(s.done) {
		s._forget(s.tasks[gid])
	}
}

// ChangeOptions changes a task's options. Changes to a task being streamed apply to its next stream.
func (s *Store) ChangeOptions(gid string, options map[string]string) error {
	opts, err := normalize(options)
	if err != nil {
		return err
	}
	delete(opts, "pause")
	delete(opts, "gid")
	_, err = s.update(gid, func(t *Task) error {
		merged := maps(t.Options)
		for k, v := range opts {
			merged[k] = v
		}
		if _, err := normalize(merged); err != nil {
			return err // together they would be over the bounds
		}
		t.Options = merged
		return s._persist(t)
	})
	return err
}

// ChangeGlobal records global options; those mflow has no use for are kept only to echo them.
func (s *Store) ChangeGlobal(options map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range options {
		s.global[k] = v
	}
}

// Global returns the global options changed so far.
func (s *Store) Global() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps(s.global)
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Get returns a view of one task.
func (s *Store) Get(gid string) (View, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s._find(gid)
	if err != nil {
		return View{}, err
	}
	return s._view(t), nil
}

// Lists: the active tasks; the waiting and paused ones in queue order; the stopped ones, oldest first.
func (s *Store) Lists() (active, waiting, stopped []View) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, gid := range s.queue {
		v := s._view(s.tasks[gid])
		if v.Status == Active {
			active = append(active, v)
		} else {
			waiting = append(waiting, v)
		}
	}
	for _, gid := range s.done {
		stopped = append(stopped, s._view(s.tasks[gid]))
	}
	return active, waiting, stopped
}

// StoppedTotal is the number of tasks stopped since the store opened, purged ones included.
func (s *Store) StoppedTotal() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stops
}

func (s *Store) _view(t *Task) View {
	v := View{Task: *t, Status: t.State, Name: s._name(t)}
	v.Options = maps(t.Options)
	if len(t.streams) > 0 && t.State == Waiting {
		v.Status = Active
		now := time.Now()
		if d := now.Sub(t.sampleAt); d >= time.Second {
			t.speed = int64(float64(t.Delivered-t.sampleBytes) / d.Seconds())
			t.sampleAt, t.sampleBytes = now, t.Delivered
		}
		v.Speed = t.speed
		v.Connections = len(t.streams) * s._connections(t)
	}
	return v
}

// _name is the file name of t: its "out" option, else the last path segment of its first URI.
func (s *Store) _name(t *Task) string {
	if out := t.Options["out"]; out != "" {
		return out
	}
	if u, err := url.Parse(t.URIs[0]); err == nil {
		if name, err := url.PathUnescape(path.Base(u.Path)); err == nil && name != "/" && name != "." {
			return name
		}
	}
	return ""
}

// _connections is a task's connection count: the smaller of its split and max-connection-per-server,
// when it sets them, else the store's default.
func (s *Store) _connections(t *Task) int {
	n := 0
	for _, name := range []string{"split", "max-connection-per-server"} {
		if v, ok := t.Options[name]; ok {
			if c := atoi(v); n == 0 || c < n {
				n = c
			}
		}
	}
	if n <= 0 {
		return s.settings.Connections
	}
	return min(n, 64)
}

// _link is what a task fetches: its first URI with its headers.
func (s *Store) _link(t *Task) link.Link {
	h := http.Header{}
	h.Set("User-Agent", s.settings.UserAgent)
	if ua := t.Options["user-agent"]; ua != "" {
		h.Set("User-Agent", ua)
	}
	if ref := t.Options["referer"]; ref == "*" {
		h.Set("Referer", t.URIs[0])
	} else if ref != "" {
		h.Set("Referer", ref)
	}
	for line := range strings.SplitSeq(t.Options["header"], "\n") {
		name, value, ok := strings.Cut(strings.TrimRight(line, "\r"), ":")
		if ok && strings.TrimSpace(name) != "" {
			h.Set(strings.TrimSpace(name), strings.TrimSpace(value)) // a header line replaces the default
		}
	}
	return link.Link{URL: t.URIs[0], Header: link.CleanHeader(h), Name: t.Options["out"], Mirrors: t.URIs[1:], From: t.From}
}

// Stream is one player's stream of a task.
type Stream struct {
	GID         string    // the task's
	Link        link.Link // what to fetch
	Connections int       // upstream connections for it
	MinSpeed    int64     // bytes/s, 0 = off
	Proxy       *url.URL  // upstream proxy, nil for none
	Context     context.Context

	store  *Store
	task   *Task
	cancel context.CancelCauseFunc
}

// Begin starts a player's stream of gid, within ctx: the stream's Context ends when ctx does, or when
// the task is paused or removed. Call End when it is over.
func (s *Store) Begin(ctx context.Context, gid string) (*Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s._find(gid)
	if err != nil {
		return nil, err
	}
	switch t.State {
	case Paused:
		return nil, fmt.Errorf("GID#%s: %w; unpause it to stream", t.GID, ErrPaused)
	case Removed:
		return nil, fmt.Errorf("GID %s is %w", t.GID, ErrNotFound)
	case Failed: // the player tries again: perhaps the upstream recovered
		t.State, t.ErrorCode, t.ErrorMessage = Waiting, "", ""
		s.done = slices.DeleteFunc(s.done, func(g string) bool { return g == t.GID })
		s.queue = append(s.queue, t.GID)
	}
	st := &Stream{GID: t.GID, Link: s._link(t), Connections: s._connections(t), store: s, task: t}
	if v := t.Options["lowest-speed-limit"]; v != "" {
		st.MinSpeed = int64(atoi(v))
	} else {
		st.MinSpeed = s.settings.MinSpeed
	}
	st.Proxy = s._proxy(t)
	st.Context, st.cancel = context.WithCancelCause(ctx)
	if len(t.streams) == 0 {
		t.sampleAt, t.sampleBytes, t.speed = time.Now(), t.Delivered, 0
	}
	t.streams[st] = struct{}{}
	return st, nil
}

// Delivered counts bytes the player took.
func (st *Stream) Delivered(n int64) {
	st.store.mu.Lock()
	st.task.Delivered += n
	st.store.mu.Unlock()
}

// Sized records the size a stream's probe found, for a task whose background probe has not.
func (st *Stream) Sized(size int64) {
	st.store.mu.Lock()
	defer st.store.mu.Unlock()
	if st.task.Size != size {
		st.task.Size = size
		st.store._persist(st.task)
	}
}

// Fail marks the task Failed because its upstream refused the stream.
func (st *Stream) Fail(err error) {
	st.store.mu.Lock()
	defer st.store.mu.Unlock()
	if !st.task.stopped() && st.task.State != Paused {
		st.store._fail(st.task, err)
	}
}

// End ends the stream.
func (st *Stream) End() {
	st.cancel(nil)
	st.store.mu.Lock()
	defer st.store.mu.Unlock()
	delete(st.task.streams, st)
	st.store._persist(st.task)
}

// _proxy is the HTTP proxy t's requests go through, nil for none. Call with the lock held.
func (s *Store) _proxy(t *Task) *url.URL {
	if p := t.Options["all-proxy"]; p != "" {
		return proxyURL(p, t.Options["all-proxy-user"], t.Options["all-proxy-passwd"])
	}
	return nil
}

// proxyURL reads aria2's proxy form, [http://][USER:PASSWORD@]HOST[:PORT], with the separate user and
// password options; nil when it is not one.
func proxyURL(p, user, pass string) *url.URL {
	if !strings.Contains(p, "://") {
		p = "http://" + p
	}
	u, err := url.Parse(p)
	if err != nil || u.Host == "" {
		return nil
	}
	if user != "" {
		u.User = url.UserPassword(user, pass)
	}
	return u
}

// ariaError is aria2's error code and message for an upstream failure, as aria2c 1.36 reports them for the
// same HTTP statuses.
func ariaError(err error) (string, string) {
	var status *upstream.StatusError
	var netErr *upstream.NetError
	var refused *access.RefusedError
	switch {
	case errors.As(err, &refused):
		return "1", refused.Error()
	case errors.As(err, &status) && status.Code == http.StatusNotFound:
		return "3", "Resource not found"
	case errors.As(err, &status) && status.Code == http.StatusUnauthorized:
		return "24", "Authorization failed."
	case errors.As(err, &status) && status.Code == http.StatusServiceUnavailable:
		return "29", fmt.Sprintf("The response status is not successful. status=%d", status.Code)
	case errors.As(err, &status):
		return "22", fmt.Sprintf("The response status is not successful. status=%d", status.Code)
	case errors.As(err, &netErr) && netErr.Timeout():
		return "2", "Timeout: " + err.Error()
	case errors.As(err, &netErr):
		return "6", "Network problem: " + err.Error()
	}
	return "1", err.Error()
}
