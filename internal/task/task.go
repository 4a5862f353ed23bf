// Package task keeps the tasks players stream by GID: each is a link with its own settings, a state, and
// the bytes players took from it. The Registry is the state machine; a Persister keeps tasks across
// restarts. The words clients speak (aria2's option names, statuses and error codes) are the RPC's: here a
// task's options are kept as the client gave them, and Config.Interpret says what they mean.
//
// Locking: the Registry's mutex protects its tables and every task's Record and streams; a method whose
// name starts with an underscore must be called with it held, every other takes it itself with a deferred
// unlock. Persistence and other I/O run outside it, and the bytes players take are counted without it.
package task

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"mflow/internal/access"
	"mflow/internal/upstream"
)

// State is where a task is in its life.
type State int

const (
	Waiting State = iota // registered, no player now
	Active               // a player is streaming it (computed, never kept)
	Paused               // streams refused until unpaused
	Removed              // removed after it was announced; kept among the stopped tasks
	Failed               // its upstream refused it; kept among the stopped tasks
)

var stateNames = [...]string{"waiting", "active", "paused", "removed", "failed"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("State(%d)", int(s))
	}
	return stateNames[s]
}

// MarshalText keeps a state by name, so a store stays readable when states are added.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a kept state. Earlier mflows kept aria2's words: "error" for Failed, "" or "active"
// for Waiting.
func (s *State) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = Waiting
		return nil
	}
	for i, name := range stateNames {
		if string(b) == name {
			*s = State(i)
			return nil
		}
	}
	if string(b) == "error" {
		*s = Failed
		return nil
	}
	return fmt.Errorf("unknown task state %q", b)
}

// stopped reports whether s is one of the stopped states.
func (s State) stopped() bool { return s == Removed || s == Failed }

// Record is a task as it is kept: what the Persister stores and a View shows.
type Record struct {
	GID     string            `json:"gid"`
	URIs    []string          `json:"uris"`    // mirrors of one file
	Options map[string]string `json:"options"` // as the client set them; Config.Interpret says what they mean
	State   State             `json:"state"`   // never Active: that is computed
	// Failure is why a Failed task failed.
	Failure   *upstream.Failure `json:"failure,omitempty"`
	Size      int64             `json:"size"`      // -1 until probed
	Delivered int64             `json:"delivered"` // bytes players took
	Added     time.Time         `json:"added"`
	// Queue orders the waiting and paused tasks (see queue.go); 0 in a record of an earlier mflow.
	Queue int64 `json:"queue,omitempty"`
	// Announced is set once the task was announced as started: a client that heard it shows the task as
	// started until it hears it stopped, so removing it must say so and keep it as removed.
	Announced bool `json:"announced,omitempty"`
	// From is the class of the client that added the task: its background probe may reach what that
	// client could reach through a player, no more.
	From access.Network `json:"from,omitempty"`
	// Rev counts the saves of the record. A shared store saves a record only over the one it was made
	// from (revision Rev-1), so that no instance undoes another's change unseen.
	Rev int64 `json:"rev,omitempty"`
}

// clone is a copy of r that shares nothing with it.
func (r Record) clone() Record {
	r.URIs = append([]string(nil), r.URIs...)
	opts := make(map[string]string, len(r.Options))
	for k, v := range r.Options {
		opts[k] = v
	}
	r.Options = opts
	if r.Failure != nil {
		f := *r.Failure
		r.Failure = &f
	}
	return r
}

// Spec is what a task's options mean for fetching and playing it.
type Spec struct {
	Header      http.Header // sent with every request; a User-Agent here replaces mflow's
	Name        string      // the file name players are told; "" takes the link's
	Connections int         // upstream connections per stream; 0 is mflow's default
	MinSpeed    *int64      // bytes/s below which a connection is replaced, 0 off; nil is mflow's default
	Proxy       *url.URL    // the HTTP proxy requests go through; nil for none
}

// EventKind is what happened to a task, for the clients listening.
type EventKind int

const (
	EventStarted EventKind = iota // added or unpaused: it may be streamed
	EventPaused                   // paused
	EventStopped                  // removed after it was announced
	EventFailed                   // its upstream refused it
)

// Event is one thing that happened to one task.
type Event struct {
	Kind EventKind
	GID  string
}

// Errors a Registry returns, each wrapped in an *Error that names the task.
var (
	ErrNotFound    = errors.New("no such task")
	ErrAmbiguous   = errors.New("the GID prefix names more than one task")
	ErrBadGID      = errors.New("not a GID: up to 16 hexadecimal digits")
	ErrZeroGID     = errors.New("the all-zero GID is reserved: aria2 and mflow never give it to a task")
	ErrGIDTaken    = errors.New("the GID is taken")
	ErrBadURI      = errors.New("not an absolute http or https URI")
	ErrNotPausable = errors.New("the task is not waiting or active")
	ErrNotPaused   = errors.New("the task is not paused")
	ErrNotRunning  = errors.New("the task is already stopped")
	ErrNotStopped  = errors.New("the task is not stopped")
	ErrPaused      = errors.New("the task is paused")
	ErrTooMany     = errors.New("too many tasks waiting")
	ErrTooLarge    = fmt.Errorf("too large: a task holds at most %d URIs of %d KiB each, %d KiB with its options", MaxURIs, MaxURIBytes>>10, MaxTaskBytes>>10)
	ErrConflict    = errors.New("the task was changed on another mflow instance meanwhile; read it again")
	// ErrStopped is the cause a task's streams end with when it is paused or removed.
	ErrStopped = errors.New("task paused or removed")
)

// Error is a refused request about one task.
type Error struct {
	GID   string // the GID as asked, or the task's full GID once it was found
	Err   error  // one of the Err… values
	Limit int    // for ErrTooMany, the bound
}

func (e *Error) Error() string {
	if e.Err == ErrTooMany {
		return fmt.Sprintf("%v: at most %d", e.Err, e.Limit)
	}
	return fmt.Sprintf("task %s: %v", e.GID, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
