// Package cluster is what several mflow instances share through Redis: the connection budget per upstream
// host (--host-connections), which drives count per account, not per instance; and the tasks, their
// changes and their players' figures, so that a GID made on one instance plays on any.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Budget is a counting semaphore per upstream host, shared by every instance on the same Redis. Each
// connection is a lease that the instance holding it renews; a crashed instance's leases expire within
// LeaseTTL, so its connections are given back. It implements slots.Shared.
type Budget struct {
	rdb      *redis.Client
	limit    int           // connections per host, across all instances
	leaseTTL time.Duration // how long a lease outlives its last renewal
	instance string        // names this instance's leases

	redis   outage       // whether Redis answers: the budget is local only until it does again
	asked   atomic.Int64 // when Redis was last asked during an outage, in Unix nanoseconds
	stop    chan struct{}
	stopped chan struct{}

	mu     sync.Mutex        // protects leases
	leases map[string]string // held leases: lease → the host's key
}

// keyPrefix names the hosts' lease sets in Redis.
const keyPrefix = "mflow:conns:"

// DefaultLeaseTTL is how long a crashed instance's connections stay counted.
const DefaultLeaseTTL = 10 * time.Second

// askTimeout bounds a request's wait for Redis' answer, and askEvery is how often a request asks Redis
// during an outage: a Redis that hangs holds up one request a second, not every one.
const (
	askTimeout = time.Second
	askEvery   = time.Second
)

// acquire takes a lease on a host's set when it has room, dropping expired leases first; Redis' own clock
// decides what expired, so the instances' clocks need not agree.
// KEYS[1]: the host's set. ARGV: lease, limit, lease TTL in ms.
var acquire = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
  return 1
end
return 0
`)

// renew pushes a held lease's expiry on. KEYS[1]: the host's set. ARGV: lease, lease TTL in ms.
var renew = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
`)

// NewBudget returns a budget of limit connections per host on rdb, with leases that expire leaseTTL
// after their last renewal (0: DefaultLeaseTTL). Close it to give its leases back.
func NewBudget(rdb *redis.Client, limit int, leaseTTL time.Duration, log *slog.Logger) *Budget {
	if leaseTTL <= 0 {
		leaseTTL = DefaultLeaseTTL
	}
	if log == nil {
		log = slog.Default()
	}
	b := &Budget{rdb: rdb, limit: limit, leaseTTL: leaseTTL, instance: newID(),
		stop: make(chan struct{}), stopped: make(chan struct{}), leases: map[string]string{}}
	b.redis = outage{log: log, during: "counting upstream connections on this instance only until it answers",
		after: "upstream connections are counted across instances"}
	go b.renewLeases()
	return b
}

// Acquire waits for one of host's connections across all instances. When Redis does not answer, it
// counts on the instance's own budget only, says so once in the log, and asks Redis again a second later:
// streams keep playing through an outage.
func (b *Budget) Acquire(ctx context.Context, host string) (func(), error) {
	if b.redis.current() != nil && !b.askAgain() {
		return func() {}, nil
	}
	key := keyPrefix + host
	lease := b.instance + ":" + newID()
	wait := 10 * time.Millisecond
	for {
		askCtx, cancel := context.WithTimeout(ctx, askTimeout)
		took, err := acquire.Run(askCtx, b.rdb, []string{key}, lease, b.limit, b.leaseTTL.Milliseconds()).Int()
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, context.Cause(ctx)
		case err != nil:
			b.redis.failed(err)
			return func() {}, nil
		case took == 1:
			b.redis.answered()
			b.hold(lease, key)
			return sync.OnceFunc(func() { b.release(lease, key) }), nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

func (b *Budget) hold(lease, key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leases[lease] = key
}

// askAgain reports whether it is time to ask Redis again during an outage; one caller a second is told so.
func (b *Budget) askAgain() bool {
	now, last := time.Now().UnixNano(), b.asked.Load()
	return now-last >= askEvery.Nanoseconds() && b.asked.CompareAndSwap(last, now)
}

// release gives a lease back; when Redis does not answer, the lease expires on its own.
func (b *Budget) release(lease, key string) {
	b.forget(lease)
	if b.redis.current() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	if err := b.rdb.ZRem(ctx, key, lease).Err(); err != nil {
		b.redis.failed(err)
	}
}

// renewLeases renews the held leases three times per lease TTL until Close.
func (b *Budget) renewLeases() {
	defer close(b.stopped)
	t := time.NewTicker(b.leaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		held := b.held()
		if len(held) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.leaseTTL/3)
		pipe := b.rdb.Pipeline()
		for lease, key := range held {
			renew.Eval(ctx, pipe, []string{key}, lease, b.leaseTTL.Milliseconds()) // EVALSHA cannot fall back inside a pipeline
		}
		_, err := pipe.Exec(ctx)
		cancel()
		if err != nil && !errors.Is(err, redis.Nil) {
			b.redis.failed(err)
		}
	}
}

func (b *Budget) forget(lease string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.leases, lease)
}

// held is a copy of the held leases.
func (b *Budget) held() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]string, len(b.leases))
	for lease, key := range b.leases {
		out[lease] = key
	}
	return out
}

// Close stops renewing and gives back the leases still held.
func (b *Budget) Close() {
	close(b.stop)
	<-b.stopped
	for lease, key := range b.held() {
		b.release(lease, key)
	}
}

func newID() string {
	var id [8]byte
	rand.Read(id[:])
	return hex.EncodeToString(id[:])
}
