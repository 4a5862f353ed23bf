// Package probe runs one probe of a link at a time, whoever asks, and keeps its answer a short while: a
// player's burst of requests (mpv opens a file several times while it finds the index) probes once.
package probe

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// Func probes: it returns what it learned, and the open answer when its body holds bytes for the caller
// that started it.
type Func[V any] func(ctx context.Context) (V, *http.Response, error)

// Group shares probes by key. A probe runs detached from the caller that started it, so that caller
// leaving does not fail the others; Close ends the probes still running and waits for them.
type Group[V any] struct {
	ttl  time.Duration // how long an answer is reused; 0 or less: never
	most int           // the answers kept at most; expired ones make room

	ctx    context.Context    // the probes' own: ends with Close
	cancel context.CancelFunc // ends ctx
	wg     sync.WaitGroup     // the probes running

	mu       sync.Mutex           // protects the following fields
	answers  map[string]answer[V] // recent good answers, by key
	inflight map[string]*call[V]  // probes under way, by key ("fresh\x00" first for a fresh one)
	started  uint64               // probes started so far
}

// answer is a good answer, when it came, and which probe brought it.
type answer[V any] struct {
	v   V
	at  time.Time
	seq uint64
}

// call is one probe under way, which callers of the same key wait for rather than probing again.
type call[V any] struct {
	done chan struct{} // closed once v or err is set
	seq  uint64        // the order it started in: a probe that started later knows better
	v    V
	err  error
}

// New returns a Group that reuses an answer for ttl (0 or less: never) and keeps at most most of them.
func New[V any](ttl time.Duration, most int) *Group[V] {
	ctx, cancel := context.WithCancel(context.Background())
	return &Group[V]{ttl: ttl, most: most, ctx: ctx, cancel: cancel, answers: map[string]answer[V]{}, inflight: map[string]*call[V]{}}
}

// Do returns a recent answer for key, or waits for the probe of key under way, or runs probe. fresh takes
// neither a recent answer nor one of a probe that started before. The open answer probe returns goes to
// the caller that started it, if that caller is still waiting, and is closed otherwise.
func (g *Group[V]) Do(ctx context.Context, key string, fresh bool, probe Func[V]) (V, *http.Response, error) {
	var none V
	group := key
	if fresh {
		group = "fresh\x00" + key
	}
	c, leader, v, ok := g.join(key, group, fresh)
	if ok {
		return v, nil, nil
	}
	if !leader {
		select {
		case <-c.done:
			return c.v, nil, c.err
		case <-ctx.Done():
			return none, nil, context.Cause(ctx)
		}
	}
	bodies, gone := make(chan *http.Response), make(chan struct{})
	// The probe keeps the caller's values but not its end: it ends with the group, or once its answer's
	// body is closed.
	probeCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(g.ctx, cancel)
	done := func() {
		stop()
		cancel()
	}
	g.wg.Go(func() {
		v, resp, err := probe(probeCtx)
		g.finish(key, group, c, v, err)
		if resp == nil {
			done()
			close(bodies)
			return
		}
		resp.Body = &doneOnClose{ReadCloser: resp.Body, done: done}
		select {
		case bodies <- resp:
		case <-gone:
			resp.Body.Close()
		}
	})
	select {
	case resp := <-bodies: // nil when closed: the probe kept no body
		if c.err != nil {
			return none, nil, c.err
		}
		return c.v, resp, nil
	case <-ctx.Done():
		close(gone)
		return none, nil, context.Cause(ctx)
	}
}

// Recent is the last good answer for key however old, and whether there is one.
func (g *Group[V]) Recent(key string) (V, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a, ok := g.answers[key]
	return a.v, ok
}

// Close ends the probes still running and waits for them.
func (g *Group[V]) Close() {
	g.cancel()
	g.wg.Wait()
}

// join returns a recent answer for key (ok), or the probe under way for group to wait for, or a new one
// the caller leads.
func (g *Group[V]) join(key, group string, fresh bool) (c *call[V], leader bool, v V, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if a, found := g.answers[key]; found && !fresh && time.Since(a.at) < g.ttl {
		return nil, false, a.v, true
	}
	if c := g.inflight[group]; c != nil {
		return c, false, v, false
	}
	g.started++
	c = &call[V]{done: make(chan struct{}), seq: g.started}
	g.inflight[group] = c
	return c, true, v, false
}

// finish hands a probe's answer to those waiting on it, and keeps a good one, unless a probe that started
// later (a fresh one, after the link expired) already answered.
func (g *Group[V]) finish(key, group string, c *call[V], v V, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.inflight, group)
	c.v, c.err = v, err
	close(c.done)
	if old, kept := g.answers[key]; err != nil || kept && old.seq > c.seq {
		return
	}
	if len(g.answers) >= g.most {
		for k, old := range g.answers {
			if time.Since(old.at) >= g.ttl {
				delete(g.answers, k)
			}
		}
	}
	if _, kept := g.answers[key]; kept || len(g.answers) < g.most {
		g.answers[key] = answer[V]{v: v, at: time.Now(), seq: c.seq}
	}
}

// doneOnClose ends its probe's context once the caller that took the body closes it.
type doneOnClose struct {
	io.ReadCloser
	done func()
}

func (b *doneOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}
