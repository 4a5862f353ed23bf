package rpc

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// DefaultMaxAnswer bounds the answer to one request (a batch, a system.multicall and every list in them
// together) unless Handler.MaxAnswer says otherwise: a client asking for more must ask for fewer tasks or
// keys at a time.
const DefaultMaxAnswer = 16 << 20

// tooLarge ends an answer that would pass its bound.
func tooLarge(bound int) *rpcError {
	return &rpcError{1, fmt.Sprintf("The answer would be over %d KiB; ask for fewer tasks or keys at a time.", bound>>10)}
}

// answer is one request's reply as it is built. Every part is counted against the bound as it is added, so
// an answer that would be too large stops growing at the bound instead of being built whole first: 120
// tasks with long URIs asked for by a batch of tellStopped calls would otherwise take gigabytes.
type answer struct {
	bound int      // the most bytes it may hold
	parts [][]byte // in order; never joined, so the answer is held once
	size  int      // bytes in parts
}

// add appends b, or says the answer would be too large.
func (a *answer) add(b []byte) error {
	if a.size+len(b) > a.bound {
		return tooLarge(a.bound)
	}
	a.parts = append(a.parts, b)
	a.size += len(b)
	return nil
}

func (a *answer) addString(s string) error { return a.add([]byte(s)) }

// value appends v as JSON: a streamed value part by part, anything else marshalled whole.
func (a *answer) value(v any) error {
	switch v := v.(type) {
	case streamed:
		return v.writeTo(a)
	case []any:
		return a.list(len(v), func(i int) error { return a.value(v[i]) })
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding an answer: %w", err)
	}
	return a.add(b)
}

// list appends a JSON array of n elements, each appended by elem.
func (a *answer) list(n int, elem func(i int) error) error {
	if err := a.addString("["); err != nil {
		return err
	}
	for i := range n {
		if i > 0 {
			if err := a.addString(","); err != nil {
				return err
			}
		}
		if err := elem(i); err != nil {
			return err
		}
	}
	return a.addString("]")
}

// response appends one JSON-RPC response, its fields in aria2's order: a result, or an error when e is set.
func (a *answer) response(id json.RawMessage, result any, e *rpcError) error {
	if id == nil {
		id = null
	}
	if err := a.add(append(append([]byte(`{"id":`), id...), `,"jsonrpc":"2.0",`...)); err != nil {
		return err
	}
	if e != nil {
		b, _ := json.Marshal(e)
		if err := a.add(append(append([]byte(`"error":`), b...), '}')); err != nil {
			return err
		}
		return nil
	}
	if err := a.addString(`"result":`); err != nil {
		return err
	}
	if err := a.value(result); err != nil {
		return err
	}
	return a.addString("}")
}

// WriteTo writes the answer's parts to w in order.
func (a *answer) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, p := range a.parts {
		m, err := w.Write(p)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// errorAnswer is an answer of one error response, with its HTTP status.
func errorAnswer(id json.RawMessage, e *rpcError, status int) (*answer, int) {
	a := &answer{bound: DefaultMaxAnswer}
	_ = a.response(id, nil, e) // a few bytes: always within the bound
	return a, status
}

// streamed is a result too large to hold whole (a list of tasks): it appends itself to the answer part by
// part, each counted as it is made.
type streamed interface {
	writeTo(a *answer) error
}

// errStatus is the HTTP status of an answer that failed while it was built: too large, or a result that
// would not encode.
const errStatus = http.StatusBadRequest
