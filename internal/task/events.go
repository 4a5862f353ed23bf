package task

// Subscribe returns a channel of events and the function that ends the subscription. Events are dropped
// for a subscriber that does not keep up, rather than holding the registry.
func (r *Registry) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs[ch] = struct{}{}
	return ch, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.subs, ch)
	}
}

// _notify tells the subscribers what happened, and c keeps it for the other instances.
func (r *Registry) _notify(kind EventKind, gid string, c *change) {
	if !c.told {
		r._send(Event{Kind: kind, GID: gid})
	}
	c.events = append(c.events, Event{Kind: kind, GID: gid})
}

// _send sends an event to every subscriber without waiting: under the lock, so that subscribers see the
// events of one task in the order they happened.
func (r *Registry) _send(ev Event) {
	for ch := range r.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// _announce marks t started and tells the subscribers.
func (r *Registry) _announce(t *task, c *change) {
	t.Announced = true
	r._notify(EventStarted, t.GID, c)
}
