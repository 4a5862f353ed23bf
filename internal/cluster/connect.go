package cluster

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// Connect returns a client for rawURL (redis://[user:pass@]host:port/db, or rediss:// for TLS). It does
// not wait for Redis: the budget works without it, and the client reconnects by itself. go-redis' own lines
// go to log at DEBUG: the budget says once, at WARN, when Redis does not answer.
func Connect(rawURL string, log *slog.Logger) (*redis.Client, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("--redis %q: %w; want redis://[user:password@]host:port/db", rawURL, err)
	}
	redis.SetLogger(debugLog{log})
	return redis.NewClient(opt), nil
}

// debugLog passes go-redis' log lines to slog at DEBUG.
type debugLog struct{ log *slog.Logger }

func (d debugLog) Printf(ctx context.Context, format string, v ...any) {
	d.log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
