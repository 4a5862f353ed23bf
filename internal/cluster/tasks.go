package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"mflow/internal/task"
)

// The keys the tasks are kept under.
const (
	tasksKey       = "mflow:tasks"     // hash: GID → the record, as JSON, its Delivered left out
	deliveredKey   = "mflow:delivered" // hash: GID → bytes players took, on every instance
	instancesKey   = "mflow:instances" // sorted set: instance → when its figures expire (ms, Redis' clock)
	livePrefix     = "mflow:live:"     // + instance: hash GID → "speed streams" on that instance now
	changesChannel = "mflow:changes"   // pub/sub: a notice of every change
)

// liveTTL is how long an instance's speeds and streams count after its last exchange: a crashed
// instance's players stop counting within it.
const liveTTL = 3 * time.Second

// pingEvery is how often the follower asks Redis whether it is there when no change comes; an answer
// later than twice this is an outage.
const pingEvery = time.Second

// Tasks keeps mflow's tasks in Redis for every instance on it, and tells each instance of the others'
// changes through pub/sub. It implements task.Shared.
type Tasks struct {
	rdb      *redis.Client
	instance string // names this instance's notices and figures
	redis    outage // whether Redis answers: tasks are unavailable until it does again
}

// notice is what goes over the changes channel.
type notice struct {
	From    string        `json:"from"` // the instance that made the changes
	Changes []task.Change `json:"changes"`
}

// NewTasks returns the task store on rdb.
func NewTasks(rdb *redis.Client, log *slog.Logger) *Tasks {
	if log == nil {
		log = slog.Default()
	}
	return &Tasks{rdb: rdb, instance: newID(), redis: outage{log: log,
		during: "tasks cannot be added, changed or asked for until it answers; streams playing go on",
		after:  "tasks are shared again"}}
}

// call notes how a call to Redis went, and returns its error; redis.Nil is an answer, and a call its
// caller gave up says nothing of Redis.
func (s *Tasks) call(err error) error {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		s.redis.answered()
		return nil
	case errors.Is(err, context.Canceled):
		return err
	}
	s.redis.failed(err)
	return fmt.Errorf("redis: %w", err)
}

func (s *Tasks) Load() ([]task.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pipe := s.rdb.Pipeline()
	records := pipe.HGetAll(ctx, tasksKey)
	delivered := pipe.HGetAll(ctx, deliveredKey)
	if _, err := pipe.Exec(ctx); s.call(err) != nil {
		return nil, fmt.Errorf("loading tasks from redis: %w", err)
	}
	bytes := delivered.Val()
	var out []task.Record
	for gid, b := range records.Val() {
		rec, err := task.Decode(gid, []byte(b))
		if err != nil { // one bad record must not keep every instance from its tasks
			s.redis.log.Warn("a task in redis is unreadable: left out", "key", tasksKey, "gid", gid, "err", err)
			continue
		}
		rec.Delivered, _ = strconv.ParseInt(bytes[gid], 10, 64)
		out = append(out, rec)
	}
	return out, nil
}

func (s *Tasks) Get(ctx context.Context, gid string) (task.Record, bool, error) {
	pipe := s.rdb.Pipeline()
	record := pipe.HGet(ctx, tasksKey, gid)
	delivered := pipe.HGet(ctx, deliveredKey, gid)
	_, err := pipe.Exec(ctx)
	if err := s.call(err); err != nil {
		return task.Record{}, false, err
	}
	if record.Err() != nil { // redis.Nil: not kept
		return task.Record{}, false, nil
	}
	rec, err := task.Decode(gid, []byte(record.Val()))
	if err != nil {
		return task.Record{}, false, err
	}
	rec.Delivered, _ = delivered.Int64()
	return rec, true, nil
}

// save keeps a record over the revision it was made from; 0 when another instance saved it first. Only
// a new task's bytes are kept from the record: after that, the instances add their players' bytes in
// the exchange, so none overwrites another's.
// KEYS: tasks, delivered. ARGV: gid, record as JSON, its revision, its bytes.
var save = redis.NewScript(`
local kept = redis.call('HGET', KEYS[1], ARGV[1])
local rev = 0
if kept then rev = tonumber(cjson.decode(kept).rev) or 0 end
if rev ~= tonumber(ARGV[3]) - 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[4])
return 1
`)

func (s *Tasks) Save(rec task.Record) error {
	delivered := rec.Delivered
	rec.Delivered = 0
	b, err := task.Encode(rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	saved, err := save.Run(ctx, s.rdb, []string{tasksKey, deliveredKey}, rec.GID, b, rec.Rev, delivered).Int()
	if err := s.call(err); err != nil {
		return err
	}
	if saved == 0 {
		return task.ErrConflict
	}
	return nil
}

func (s *Tasks) Delete(gid string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HDel(ctx, tasksKey, gid)
		pipe.HDel(ctx, deliveredKey, gid)
		return nil
	})
	return s.call(err)
}

// Close leaves the Redis client to its owner.
func (s *Tasks) Close() error { return nil }

func (s *Tasks) Ready() error { return s.redis.current() }

func (s *Tasks) Publish(ctx context.Context, changes []task.Change) error {
	b, err := json.Marshal(notice{From: s.instance, Changes: changes})
	if err != nil {
		return err
	}
	return s.call(s.rdb.Publish(ctx, changesChannel, b).Err())
}

func (s *Tasks) Follow(ctx context.Context, changed func(changes []task.Change, own bool), resync func()) {
	ps := s.rdb.Subscribe(ctx, changesChannel)
	defer ps.Close()
	heard := time.Now()
	for {
		msg, err := ps.ReceiveTimeout(ctx, pingEvery)
		if ctx.Err() != nil {
			return
		}
		var timeout interface{ Timeout() bool }
		switch {
		case errors.As(err, &timeout) && timeout.Timeout():
			if silent := time.Since(heard); silent > 2*pingEvery {
				s.redis.failed(fmt.Errorf("no answer in %v", silent.Round(time.Second)))
			}
			if err := ps.Ping(ctx); err != nil {
				s.redis.failed(err)
			}
			continue
		case err != nil: // gone: the next receive dials again
			s.redis.failed(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(pingEvery / 2):
			}
			continue
		}
		heard = time.Now()
		s.redis.answered()
		switch m := msg.(type) {
		case *redis.Subscription: // subscribed afresh: what changed meanwhile was not heard
			resync()
		case *redis.Message:
			var n notice
			if json.Unmarshal([]byte(m.Payload), &n) == nil {
				changed(n.Changes, n.From == s.instance)
			}
		}
	}
}

// exchange adds an instance's bytes per task to the totals and puts its speeds and streams where the
// others read them, on Redis' clock; it returns every task's total bytes and the other live instances'
// speeds and streams. An instance's figures are read from keys named after it, not passed in KEYS: mflow
// wants one Redis, not a cluster.
// KEYS: tasks, delivered, instances, this instance's live hash. ARGV: instance, TTL in ms, live prefix,
// then gid, bytes, speed, streams for each task.
var exchange = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[4])
for i = 4, #ARGV, 4 do
  local gid = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], gid) == 1 then
    if tonumber(ARGV[i+1]) > 0 then redis.call('HINCRBY', KEYS[2], gid, ARGV[i+1]) end
    if tonumber(ARGV[i+3]) > 0 then redis.call('HSET', KEYS[4], gid, ARGV[i+2] .. ' ' .. ARGV[i+3]) end
  end
end
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local others = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if id ~= ARGV[1] then
    for _, v in ipairs(redis.call('HGETALL', ARGV[3] .. id)) do table.insert(others, v) end
  end
end
return {redis.call('HGETALL', KEYS[2]), others}
`)

func (s *Tasks) Exchange(ctx context.Context, mine map[string]task.Figures) (map[string]task.Figures, error) {
	args := []any{s.instance, liveTTL.Milliseconds(), livePrefix}
	for gid, f := range mine {
		args = append(args, gid, f.Delivered, f.Speed, f.Streams)
	}
	res, err := exchange.Run(ctx, s.rdb, []string{tasksKey, deliveredKey, instancesKey, livePrefix + s.instance}, args...).Slice()
	if err := s.call(err); err != nil {
		return nil, err
	}
	all := map[string]task.Figures{}
	if len(res) != 2 {
		return nil, fmt.Errorf("redis: the exchange answered %d lists, want 2", len(res))
	}
	totals, _ := res[0].([]any)
	for i := 0; i+1 < len(totals); i += 2 {
		gid, _ := totals[i].(string)
		n, _ := strconv.ParseInt(fmt.Sprint(totals[i+1]), 10, 64)
		f := all[gid]
		f.Delivered = n
		all[gid] = f
	}
	others, _ := res[1].([]any)
	for i := 0; i+1 < len(others); i += 2 {
		gid, _ := others[i].(string)
		speed, streams, _ := strings.Cut(fmt.Sprint(others[i+1]), " ")
		f := all[gid]
		n, _ := strconv.ParseInt(speed, 10, 64)
		m, _ := strconv.Atoi(streams)
		f.Speed += n
		f.Streams += m
		all[gid] = f
	}
	return all, nil
}
