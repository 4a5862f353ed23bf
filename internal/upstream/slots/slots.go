// Package slots hands out numbered connection slots per upstream host: at most a fixed number of requests
// to one host at once, across all streams, and, when several mflow instances share a budget, within theirs
// too. Drives refuse or throttle clients that open more.
package slots

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// Shared is a per-host connection budget shared with other mflow instances.
type Shared interface {
	// Acquire waits, until ctx ends, for one of host's connections, counted across all instances; release
	// gives it back.
	Acquire(ctx context.Context, host string) (release func(), err error)
}

// Hosts hands out the slots of every host. A slot's number names the transport, and so the keep-alive
// connection, its request uses.
type Hosts struct {
	perHost int    // slots per host
	shared  Shared // nil when no other instance shares the budget

	mu    sync.Mutex       // protects the following field, and each host's users
	hosts map[string]*host // by host:port, while some request uses the host
}

// host is the slots of one host.
type host struct {
	sem   *semaphore.Weighted // counts free slots; waiting on it honours the request's context
	users int                 // requests holding or waiting for a slot; protected by Hosts.mu

	mu   sync.Mutex // protects free
	free []int      // free slot numbers; the last one freed is reused first, its connection warm
}

// New returns hosts of perHost slots each (at least one), within shared's budget when it is not nil.
func New(perHost int, shared Shared) *Hosts {
	return &Hosts{perHost: max(perHost, 1), shared: shared, hosts: map[string]*host{}}
}

// PerHost is the slots of one host: the requests it may have open at once.
func (h *Hosts) PerHost() int { return h.perHost }

// Acquire waits, until ctx ends, for a free slot of hostPort and then for the shared budget's, and returns
// the slot's number, in [0, PerHost). release gives both back; it may be called more than once.
func (h *Hosts) Acquire(ctx context.Context, hostPort string) (slot int, release func(), err error) {
	s := h.use(hostPort)
	if err := s.sem.Acquire(ctx, 1); err != nil {
		h.leave(hostPort, s)
		return 0, nil, err
	}
	slot = s.take()
	releaseLocal := func() {
		s.give(slot)
		s.sem.Release(1)
		h.leave(hostPort, s)
	}
	releaseShared := func() {}
	if h.shared != nil {
		// After the local slot: a request waits for the instances' common budget without holding more here.
		if releaseShared, err = h.shared.Acquire(ctx, hostPort); err != nil {
			releaseLocal()
			return 0, nil, err
		}
	}
	return slot, sync.OnceFunc(func() {
		releaseShared()
		releaseLocal()
	}), nil
}

// Count is the number of hosts slots are kept for now: those some request uses or waits for.
func (h *Hosts) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.hosts)
}

// InUse is how many slots are held now: in all, and of the busiest host.
func (h *Hosts) InUse() (total, busiest int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.hosts {
		n := h.perHost - s.freeCount()
		total += n
		busiest = max(busiest, n)
	}
	return total, busiest
}

// use returns hostPort's slots, counting one more user; leave must follow.
func (h *Hosts) use(hostPort string) *host {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.hosts[hostPort]
	if s == nil {
		s = &host{sem: semaphore.NewWeighted(int64(h.perHost))}
		for i := h.perHost - 1; i >= 0; i-- {
			s.free = append(s.free, i)
		}
		h.hosts[hostPort] = s
	}
	s.users++
	return s
}

// leave counts one user less of hostPort, and forgets it when none is left: the table holds the hosts in
// use, not every host ever seen.
func (h *Hosts) leave(hostPort string, s *host) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.users--; s.users == 0 && h.hosts[hostPort] == s {
		delete(h.hosts, hostPort)
	}
}

// take returns a free slot number; the semaphore guarantees there is one.
func (s *host) take() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	slot := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	return slot
}

// freeCount is how many slots are free.
func (s *host) freeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.free)
}

// give makes slot free again.
func (s *host) give(slot int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free = append(s.free, slot)
}
