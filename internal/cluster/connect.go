package cluster

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// Connect returns a client for rawURL (redis://[user:pass@]host:port/db, or rediss:// for TLS). It does
// not wait for Redis: streams play without it, and the client reconnects by itself. Every call is bounded
// by its context as well as by the URL's timeouts, so a Redis that hangs holds up no request for long.
// go-redis' own lines go to log at DEBUG: the budget and the tasks say once, at WARN, when Redis does not
// answer.
func Connect(rawURL string, log *slog.Logger) (*redis.Client, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("--redis %q: %w; want redis://[user:password@]host:port/db", rawURL, err)
	}
	opt.ContextTimeoutEnabled = true
	redis.SetLogger(debugLog{log})
	return redis.NewClient(opt), nil
}

// debugLog passes go-redis' log lines to slog at DEBUG.
type debugLog struct{ log *slog.Logger }

func (d debugLog) Printf(ctx context.Context, format string, v ...any) {
	d.log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
