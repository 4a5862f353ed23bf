package task

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"mflow/internal/access"
)

// Addition is a task to add.
type Addition struct {
	URIs     []string          // mirrors of one file; the first is asked first
	Options  map[string]string // kept as given; Config.Interpret says what they mean
	Position int               // in the queue; negative or past the end adds it last
	Paused   bool              // added paused: not announced, not streamed until unpaused
	GID      string            // the GID to give it; "" for a new random one
	From     access.Network    // the class of the client adding it
}

// Bounds on one task: a signed drive link is 0.5 to 3 KiB, a drive's cookies a few; more is an attempt to
// fill mflow's memory and its store.
const (
	MaxURIBytes  = 16 << 10 // one URI
	MaxURIs      = 16       // a task's URIs, mirrors included
	MaxTaskBytes = 64 << 10 // its URIs and its options together
)

// Add registers a task and starts probing its size in the background. It returns the GID. A task whose
// save fails is not added: it would vanish at the next start.
func (r *Registry) Add(a Addition) (string, error) {
	if len(a.URIs) == 0 || slices.ContainsFunc(a.URIs, func(u string) bool { return !httpURI(u) }) {
		return "", &Error{GID: a.GID, Err: ErrBadURI}
	}
	if err := checkSize(a.URIs, a.Options); err != nil {
		return "", &Error{GID: a.GID, Err: err}
	}
	gid, c, err := r.add(a)
	if err != nil {
		return "", err
	}
	if err := r.commit(c); err != nil {
		r.forgetAdded(gid)
		return "", err
	}
	if !a.Paused {
		r.announced(gid)
	}
	r.wg.Go(func() { r.probeSize(gid) })
	return gid, nil
}

// checkSize refuses a task larger than the bounds, counting each string as the store keeps it: a URI of
// control characters or invalid UTF-8 takes up to six bytes a byte there.
func checkSize(uris []string, options map[string]string) error {
	total := 0
	for _, u := range uris {
		n := storedLen(u)
		if n > MaxURIBytes {
			return ErrTooLarge
		}
		total += n
	}
	for k, v := range options {
		total += storedLen(k) + storedLen(v)
	}
	if len(uris) > MaxURIs || total > MaxTaskBytes {
		return ErrTooLarge
	}
	return nil
}

// forgetAdded takes out again a task whose first save failed.
func (r *Registry) forgetAdded(gid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.tasks[gid]; t != nil {
		r._drop(t)
	}
}

// announced tells this instance's subscribers that a task was added and may be streamed, once it is kept.
// The other instances hear of it in the change committed.
func (r *Registry) announced(gid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tasks[gid] != nil {
		r._send(Event{Kind: EventStarted, GID: gid})
	}
}

func (r *Registry) add(a Addition) (string, change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) >= r.cfg.MaxWaiting {
		return "", change{}, &Error{Err: ErrTooMany, Limit: r.cfg.MaxWaiting}
	}
	gid := a.GID
	if gid == "" {
		gid = r._newGID()
	} else if err := checkGID(gid); err != nil {
		return "", change{}, &Error{GID: gid, Err: err}
	} else if len(gid) != 16 {
		return "", change{}, &Error{GID: gid, Err: ErrBadGID}
	} else if r.tasks[gid] != nil {
		return "", change{}, &Error{GID: gid, Err: ErrGIDTaken}
	}
	opts := make(map[string]string, len(a.Options))
	for k, v := range a.Options {
		opts[k] = v
	}
	t := &task{Record: Record{GID: gid, URIs: slices.Clone(a.URIs), Options: opts, State: Waiting, Size: -1, Added: time.Now(), From: a.From}, streams: map[*Session]bool{}}
	if a.Paused {
		t.State = Paused
	}
	c := change{told: true} // this instance's subscribers hear of it once it is kept
	t.Queue = r._lastKey()
	r.tasks[gid] = t
	if pos := a.Position; pos >= 0 && pos < len(r.queue) {
		r.queue = slices.Insert(r.queue, pos, gid)
		r._renumber(&c)
	} else {
		r.queue = append(r.queue, gid)
	}
	c.save(t)
	if !a.Paused {
		r._announce(t, &c)
	}
	return gid, c, nil
}

// _newGID returns an unused random GID: 16 lowercase hex digits, not all zero.
func (r *Registry) _newGID() string {
	for {
		var b [8]byte
		rand.Read(b[:])
		gid := hex.EncodeToString(b[:])
		if r.tasks[gid] == nil && gid != "0000000000000000" {
			return gid
		}
	}
}

// checkGID refuses what cannot be a GID or a prefix of one.
func checkGID(gid string) error {
	switch {
	case gid == "" || len(gid) > 16 || strings.Trim(gid, "0123456789abcdef") != "":
		return ErrBadGID
	case gid == "0000000000000000":
		return ErrZeroGID
	}
	return nil
}

// probeSize learns a new task's size; a refusal marks it Failed.
func (r *Registry) probeSize(gid string) {
	if r.cfg.Probe == nil {
		return
	}
	l, _, err := r.linkOf(gid)
	if err != nil {
		return
	}
	size, err := r.cfg.Probe(r.ctx, l)
	if r.ctx.Err() != nil {
		return
	}
	_ = r.commit(r.probed(gid, size, err))
}

// probed records what the background probe of gid found.
func (r *Registry) probed(gid string, size int64, err error) change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var c change
	t := r.tasks[gid]
	switch {
	case t == nil:
	case err != nil:
		// A player streaming it meanwhile probed it again: its own answer counts, not this older one.
		if !t.State.stopped() && len(t.streams) == 0 {
			r._fail(t, err, &c)
		}
	default:
		t.Size = size
		c.save(t)
	}
	return c
}
