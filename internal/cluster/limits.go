package cluster

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"mflow/internal/engine/limit"
)

// LimitShare shares the drive limits instances learn (engine.LimitShare): each is kept in a Redis hash by
// drive, for instances that start later, and published to the running ones, which learn it at once. A
// drive counts connections per account, so what one instance learned holds for all.
type LimitShare struct {
	rdb   *redis.Client
	learn func(limit.Fact) // tells this instance's policy
	log   *slog.Logger

	out    chan limit.Fact    // limits to publish, by the sender goroutine: Publish never waits for Redis
	cancel context.CancelFunc // ends the goroutines
	wg     sync.WaitGroup     // the sender and the follower
}

// limitsKey is the hash of learned limits by drive, and limitsChannel where new ones are announced.
const (
	limitsKey     = "mflow:limits"
	limitsChannel = "mflow:limits"
)

// NewLimits shares limits on rdb: it learns those kept there (in the background: Redis may be away), then
// those the other instances announce, with learn. Close it to stop.
func NewLimits(rdb *redis.Client, learn func(limit.Fact), log *slog.Logger) *LimitShare {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &LimitShare{rdb: rdb, learn: learn, log: log, out: make(chan limit.Fact, 64), cancel: cancel}
	l.wg.Go(func() { l.send(ctx) })
	l.wg.Go(func() { l.follow(ctx) })
	return l
}

// Publish shares a limit learned here; it is dropped when many wait already (the next one carries on).
func (l *LimitShare) Publish(f limit.Fact) {
	select {
	case l.out <- f:
	default:
	}
}

// Close stops sharing and waits for its goroutines.
func (l *LimitShare) Close() {
	l.cancel()
	l.wg.Wait()
}

func (l *LimitShare) send(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-l.out:
			b, err := json.Marshal(f)
			if err != nil {
				continue
			}
			askCtx, cancel := context.WithTimeout(ctx, askTimeout)
			_, err = l.rdb.TxPipelined(askCtx, func(pipe redis.Pipeliner) error {
				pipe.HSet(askCtx, limitsKey, f.Drive, b)
				pipe.Publish(askCtx, limitsChannel, b)
				return nil
			})
			cancel()
			if err != nil && ctx.Err() == nil {
				l.log.Debug("sharing a drive's limit", "drive", f.Drive, "err", err)
			}
		}
	}
}

// follow learns the limits kept, then each one announced; on every (re)subscription it reads the kept
// ones again, as announcements made meanwhile were not heard.
func (l *LimitShare) follow(ctx context.Context) {
	ps := l.rdb.Subscribe(ctx, limitsChannel)
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { ps.Close() }) // a receive waits on the socket, not on ctx
	defer stop()
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			l.loadKept(ctx)
		case *redis.Message:
			l.take(m.Payload)
		}
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pingEvery / 2):
			}
		}
	}
}

// loadKept learns every limit kept in Redis.
func (l *LimitShare) loadKept(ctx context.Context) {
	askCtx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	kept, err := l.rdb.HGetAll(askCtx, limitsKey).Result()
	if err != nil {
		return
	}
	for _, v := range kept {
		l.take(v)
	}
}

func (l *LimitShare) take(payload string) {
	var f limit.Fact
	if json.Unmarshal([]byte(payload), &f) == nil && f.Drive != "" && f.Limit > 0 {
		l.learn(f)
	}
}
