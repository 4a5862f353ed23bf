// Package status is mflow's live status page, /status, and the JSON it reads, /status.json: what plays
// now and how fast each connection goes, the tasks, the cache, the connection budget, uptime and version.
// The page carries everything it needs (no outside asset: users run it offline).
package status

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"mflow/internal/chunkcache"
	"mflow/internal/engine/limit"
	"mflow/internal/play"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

// Sources are what the status shows. Any but Play may be nil.
type Sources struct {
	Play    *play.Service
	Tasks   *task.Registry
	Client  *upstream.Client
	Memory  *chunkcache.Memory
	Disk    *chunkcache.Disk
	Version string
	Started time.Time // when mflow started
	// StatusWord, when set, names a task's state as the JSON-RPC does (aria2's "error" for Failed).
	StatusWord func(task.State) string
	// Drives, when set, is what is known of each drive's limit (engine.Drives.States).
	Drives func() []limit.DriveState
	// Memory budget: Budget is --max-memory (0: no bound); Held and Withheld, when set, are what the
	// streams hold in buffers now and the read-ahead they want beyond what the budget gives them.
	Budget   int64
	Held     func() int64
	Withheld func() int64
}

// Handler serves /status and /status.json.
type Handler struct{ src Sources }

// New returns the status of src.
func New(src Sources) *Handler { return &Handler{src: src} }

// Status is what /status.json answers. Links show without their query or credentials.
type Status struct {
	Version     string      `json:"version"`
	Uptime      float64     `json:"uptime_seconds"`
	Streams     []Playing   `json:"streams"`
	Tasks       []Task      `json:"tasks"`
	TasksAway   string      `json:"tasks_unavailable,omitempty"` // why tasks cannot be changed now (a shared store away)
	Cache       []CacheTier `json:"cache"`
	Connections Connections `json:"connections"`
	Memory      MemoryUse   `json:"memory"`
	// FailedPlays are the last plays that failed, newest first: what a player was told, and why.
	FailedPlays []play.FailedPlay `json:"failed_plays"`
	// Drives are the drives that refused a request or taught a limit.
	Drives []Drive `json:"drives"`
}

// Drive is what is known of one drive's limit.
type Drive struct {
	Drive      string    `json:"drive"`            // its registrable domain
	Name       string    `json:"name,omitempty"`   // the drive's name, for those mflow knows
	Limit      int       `json:"limit"`            // connections per file; 0 unknown
	Learned    bool      `json:"learned"`          // from its refusals, not a rule
	Why        string    `json:"why,omitempty"`    // how it was learned
	Refusals   int       `json:"refusals"`         // requests it refused
	LastStatus int       `json:"last_status"`      // the last refusal's status; 0 a reset
	LastAt     time.Time `json:"last_at,omitzero"` // when
}

// Playing is one stream playing now.
type Playing struct {
	ID       int64         `json:"id"`
	Name     string        `json:"name"`
	URL      string        `json:"url"`
	GID      string        `json:"gid,omitempty"`
	Player   string        `json:"player"`
	Range    string        `json:"range"` // first-last/size, as in Content-Range
	Size     int64         `json:"size"`  // the file's, -1 when unknown
	Start    int64         `json:"start"` // the first byte the player asked for
	Sent     int64         `json:"sent"`  // bytes written to the player since Start
	Ahead    int64         `json:"ahead"` // bytes in hand past what the player took: its read-ahead
	Seconds  float64       `json:"seconds"`
	Speed    float64       `json:"speed"` // bytes/s the drive sends this stream now, all its requests together
	Retries  int           `json:"retries"`
	Replaced int           `json:"replaced"`
	Requests []OpenRequest `json:"requests"`
}

// OpenRequest is one open upstream request of a stream.
type OpenRequest struct {
	Range  string  `json:"range"`
	Start  int64   `json:"start"` // the bytes it works on, end inclusive
	End    int64   `json:"end"`
	Bytes  int64   `json:"bytes"`
	Speed  float64 `json:"speed"` // bytes/s over its last second
	State  string  `json:"state"` // "waiting" for its answer, or "reading"
	Mirror int     `json:"mirror,omitempty"`
}

// Task is one task.
type Task struct {
	GID    string `json:"gid"`
	Status string `json:"status"` // the JSON-RPC's word: active, waiting, paused, error, removed
	Name   string `json:"name"`
	Size   int64  `json:"size"`   // -1 until known
	Played int64  `json:"played"` // bytes of the file players took, each counted once: at most Size
}

// CacheTier is one tier of the chunk cache.
type CacheTier struct {
	Tier   string `json:"tier"`
	Bytes  int64  `json:"bytes"`
	Hits   int64  `json:"hits"`
	Misses int64  `json:"misses"`
}

// MemoryUse is the memory budget (--max-memory) and what holds it.
type MemoryUse struct {
	Budget    int64 `json:"budget"`               // 0: no bound
	Streams   int64 `json:"streams"`              // bytes the streams hold in buffers
	CacheRoom int64 `json:"cache_room,omitempty"` // what the memory cache may hold now
	Withheld  int64 `json:"withheld"`             // read-ahead wanted beyond what the budget gives
}

// Connections is the upstream connection budget.
type Connections struct {
	InUse        int `json:"in_use"`
	BusiestHost  int `json:"busiest_host"`
	PerHostLimit int `json:"per_host_limit"`
}

//go:embed page.html
var page []byte

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/status.json" {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(h.Status())
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// The page runs its own script and reads its own origin only.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
	w.Write(page)
}

// Status is mflow's status now.
func (h *Handler) Status() Status {
	src := h.src
	st := Status{Version: src.Version, Uptime: time.Since(src.Started).Seconds(), Streams: []Playing{}, Tasks: []Task{}, Cache: []CacheTier{},
		FailedPlays: append([]play.FailedPlay{}, src.Play.FailedPlays()...), Drives: []Drive{}} // [], not null, before any
	if src.Drives != nil {
		for _, d := range src.Drives() {
			st.Drives = append(st.Drives, Drive(d))
		}
	}
	now := time.Now()
	for _, p := range src.Play.Playing() {
		s := Playing{ID: p.ID, Name: p.Name, URL: p.URL, GID: p.Task, Player: p.Player, Size: p.Size, Sent: p.Sent, Ahead: p.Progress.Ahead,
			Seconds: now.Sub(p.Started).Seconds(), Range: play.RangeText(p.Spans, p.Size), Retries: p.Progress.Retries, Replaced: p.Progress.Replaced,
			Requests: []OpenRequest{}}
		if len(p.Spans) > 0 {
			s.Start = p.Spans[0].Start
		}
		for _, r := range p.Progress.Requests {
			state := "reading"
			if r.Waiting > 0 {
				state = "waiting"
			}
			s.Speed += r.Speed
			s.Requests = append(s.Requests, OpenRequest{Range: fmt.Sprintf("%d-%d", r.Start, r.End), Start: r.Start, End: r.End, Bytes: r.Bytes, Speed: r.Speed,
				State: state, Mirror: r.Mirror})
		}
		st.Streams = append(st.Streams, s)
	}
	if src.Tasks != nil {
		if err := src.Tasks.Ready(); err != nil {
			st.TasksAway = err.Error()
		}
		active, waiting, stopped := src.Tasks.Lists()
		for _, list := range [][]task.View{active, waiting, stopped} {
			for _, v := range list {
				word := v.State.String()
				if src.StatusWord != nil {
					word = src.StatusWord(v.State)
				}
				played := v.Delivered
				if v.Size >= 0 {
					played = min(played, v.Size) // players that read the same bytes again took no more of the file
				}
				st.Tasks = append(st.Tasks, Task{GID: v.GID, Status: word, Name: v.Name, Size: v.Size, Played: played})
			}
		}
	}
	st.Memory.Budget = src.Budget
	if src.Held != nil {
		st.Memory.Streams, st.Memory.Withheld = src.Held(), src.Withheld()
	}
	if m := src.Memory; m != nil {
		st.Memory.CacheRoom = m.Room()
		st.Cache = append(st.Cache, CacheTier{"memory", m.Bytes(), m.Lookups.Hits.Load(), m.Lookups.Misses.Load()})
	}
	if d := src.Disk; d != nil {
		st.Cache = append(st.Cache, CacheTier{"disk", d.Bytes(), d.Lookups.Hits.Load(), d.Lookups.Misses.Load()})
	}
	if c := src.Client; c != nil {
		st.Connections.InUse, st.Connections.BusiestHost = c.InUse()
		st.Connections.PerHostLimit = c.HostConnections()
	}
	return st
}
