package rpc

import (
	"encoding/json"
	"io"
	"net/url"
	"slices"

	"mflow/internal/task"
)

func addURI(h *Handler, c call, p params) (any, error) {
	if p.has(0) {
		var raw []json.RawMessage
		if json.Unmarshal(p[0], &raw) != nil {
			return nil, wrongType(0)
		}
	}
	uris, err := p.strings(0)
	if err != nil {
		return nil, err
	}
	if len(uris) == 0 {
		return nil, wireError("URI is not provided.")
	}
	opts, err := p.options(1)
	if err != nil {
		return nil, err
	}
	position := -1
	if p.has(2) {
		if position, err = p.integer(2); err != nil {
			return nil, err
		}
		if position < 0 {
			return nil, wireError("Position must be greater than or equal to 0.")
		}
	}
	opts, err = normalize(opts)
	if err != nil {
		return nil, err
	}
	a := task.Addition{URIs: uris, Position: position, Paused: opts["pause"] == "true", GID: opts["gid"], From: c.from}
	delete(opts, "pause") // aria2 keeps neither per task
	delete(opts, "gid")
	a.Options = opts
	return h.Tasks.Add(a)
}

// positions are changePosition's words for where an offset counts from.
var positions = map[string]int{"POS_SET": io.SeekStart, "POS_CUR": io.SeekCurrent, "POS_END": io.SeekEnd}

func changePosition(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	offset, err := p.integer(1)
	if err != nil {
		return nil, err
	}
	how, err := p.str(2)
	if err != nil {
		return nil, err
	}
	whence, ok := positions[how]
	if !ok {
		return nil, wireError("Illegal argument.")
	}
	return h.Tasks.Move(gid, offset, whence)
}

// changeURI removes delUris from a task's URIs (each once), then adds the http and https ones of addUris,
// at position or last, and answers how many it removed and added.
func changeURI(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	index, err := p.integer(1)
	if err != nil {
		return nil, err
	}
	if index < 1 {
		return nil, wireError("The integer parameter at 1 has invalid value: the value must be greater than or equal to 1.")
	}
	if index > 1 {
		return nil, wireError("fileIndex is out of range")
	}
	del, err := p.strings(2)
	if err != nil {
		return nil, err
	}
	add, err := p.strings(3)
	if err != nil {
		return nil, err
	}
	position := -1
	if p.has(4) {
		if position, err = p.integer(4); err != nil {
			return nil, err
		}
	}
	var deleted, added int
	err = h.Tasks.ChangeURIs(gid, func(uris []string) []string {
		deleted, added = 0, 0
		for _, d := range del {
			if i := slices.Index(uris, d); i >= 0 {
				uris = slices.Delete(uris, i, i+1)
				deleted++
			}
		}
		var fresh []string
		for _, a := range add {
			if u, err := url.Parse(a); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
				fresh = append(fresh, a)
			}
		}
		at := len(uris)
		if position >= 0 {
			at = min(position, len(uris))
		}
		added = len(fresh)
		return slices.Insert(uris, at, fresh...)
	})
	if err != nil {
		return nil, err
	}
	return []int{deleted, added}, nil
}

func removeDownloadResult(h *Handler, _ call, p params) (any, error) {
	gid, err := p.str(0)
	if err != nil {
		return nil, err
	}
	if err := h.Tasks.RemoveResult(gid); err != nil {
		return nil, err
	}
	return "OK", nil
}
