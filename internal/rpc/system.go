package rpc

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strconv"
)

func saveSession(h *Handler, _ call, _ params) (any, error) {
	if err := h.Tasks.Sync(); err != nil {
		return nil, err
	}
	return "OK", nil
}

// shutdown answers "OK", then stops mflow as on SIGTERM (force: at once).
func shutdown(force bool) method {
	return func(h *Handler, c call, _ params) (any, error) {
		if h.Shutdown == nil {
			return nil, wireError("This mflow cannot be stopped over the JSON-RPC.")
		}
		c.later(func() { h.Shutdown(force) })
		return "OK", nil
	}
}

// notHTTP answers addTorrent and addMetalink in aria2's error envelope: mflow streams links.
func notHTTP(what string) method {
	return func(_ *Handler, _ call, p params) (any, error) {
		if !p.has(0) {
			return nil, missing(0)
		}
		return nil, wiref("mflow streams http and https links; it takes no %s: add the link with aria2.addUri.", what)
	}
}

func getGlobalStat(h *Handler, _ call, _ params) (any, error) {
	active, waiting, stopped := h.Tasks.Lists()
	var speed int64
	for _, v := range active {
		speed += v.Speed
	}
	return map[string]string{
		"downloadSpeed":   itoa(speed),
		"uploadSpeed":     "0",
		"numActive":       strconv.Itoa(len(active)),
		"numWaiting":      strconv.Itoa(len(waiting)),
		"numStopped":      strconv.Itoa(len(stopped)),
		"numStoppedTotal": strconv.Itoa(h.Tasks.StoppedTotal()),
	}, nil
}

func getVersion(h *Handler, _ call, _ params) (any, error) {
	return map[string]any{"enabledFeatures": []string{"Async DNS", "GZip", "HTTPS", "mflow " + h.Version}, "version": "1.36.0"}, nil
}

func getSessionInfo(h *Handler, _ call, _ params) (any, error) {
	return map[string]string{"sessionId": h.session()}, nil
}

// multicall runs each {methodName, params} in turn: a success comes back wrapped in an array, an error
// bare, as aria2 answers. Each call carries its own token.
func multicall(h *Handler, c call, p params) (any, error) {
	var calls []json.RawMessage
	if !p.has(0) || json.Unmarshal(p[0], &calls) != nil {
		return nil, wrongType(0)
	}
	if len(calls) > maxCalls {
		return nil, wiref("Too many calls in one system.multicall: %d, at most %d.", len(calls), maxCalls)
	}
	out := []any{}
	for _, raw := range calls {
		var m struct {
			MethodName *string           `json:"methodName"`
			Params     []json.RawMessage `json:"params"`
		}
		var probe map[string]json.RawMessage
		switch {
		case json.Unmarshal(raw, &probe) != nil:
			out = append(out, rpcError{1, "system.multicall expected struct."})
		case json.Unmarshal(raw, &m) != nil || m.MethodName == nil:
			out = append(out, rpcError{1, "Missing methodName."})
		case *m.MethodName == "system.multicall":
			out = append(out, rpcError{1, "Recursive system.multicall forbidden."})
		default:
			result, err := h.call(c, *m.MethodName, m.Params)
			if err != nil {
				out = append(out, rpcError{1, ariaMessage(err)})
			} else {
				out = append(out, []any{result})
			}
		}
	}
	return out, nil
}

func listMethods(_ *Handler, _ call, _ params) (any, error) {
	return methodNames, nil
}

func listNotifications(_ *Handler, _ call, _ params) (any, error) {
	return notifications, nil
}

// session is the id getSessionInfo reports.
func (h *Handler) session() string {
	h.sessionOnce.Do(func() {
		var b [20]byte
		rand.Read(b[:])
		h.sessionID = hex.EncodeToString(b[:])
	})
	return h.sessionID
}
