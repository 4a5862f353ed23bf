package cluster

import (
	"log/slog"
	"sync/atomic"
)

// outage knows whether Redis answered its user's last call, and logs each outage's start and end once.
type outage struct {
	log    *slog.Logger
	during string // what the WARN line at the start says goes on meanwhile
	after  string // what the INFO line at the end says works again
	err    atomic.Pointer[error]
}

// failed notes that Redis failed a call; the first failure of an outage is logged.
func (o *outage) failed(err error) {
	if o.err.Swap(&err) == nil {
		o.log.Warn("redis unreachable: "+o.during, "err", err)
	}
}

// answered notes that Redis answered; the end of an outage is logged.
func (o *outage) answered() {
	if o.err.Swap(nil) != nil {
		o.log.Info("redis answers again: " + o.after)
	}
}

// current is the error of the outage going on, or nil.
func (o *outage) current() error {
	if p := o.err.Load(); p != nil {
		return *p
	}
	return nil
}
