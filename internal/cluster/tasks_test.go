package cluster

import (
	"log/slog"
	"strings"
	"testing"

	"mflow/internal/task"
	"mflow/internal/task/tasktest"
	"mflow/internal/testsync"
)

// tasksOn opens the task store of an instance on rs, with a Redis client of its own.
func tasksOn(rs *redisServer) tasktest.Open {
	return func(t *testing.T) task.Persister {
		rdb := rs.client()
		t.Cleanup(func() { rdb.Close() })
		return NewTasks(rdb, quiet())
	}
}

func TestTheRedisStoreIsATaskStore(t *testing.T) {
	tasktest.TestStore(t, tasksOn(startRedis(t)))
}

func TestInstancesOnOneRedisActAsOne(t *testing.T) {
	tasktest.TestSharedStore(t, tasksOn(startRedis(t)))
}

func TestAnUnreadableTaskInRedisIsLeftOut(t *testing.T) {
	rs := startRedis(t)
	rdb := rs.client()
	defer rdb.Close()
	var logs testsync.SyncBuffer
	store := NewTasks(rdb, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := store.Save(task.Record{GID: "1111111111111111", URIs: []string{"http://h/1"}, Rev: 1}); err != nil {
		t.Fatal(err)
	}
	rdb.HSet(t.Context(), tasksKey, "2222222222222222", "{not json")
	got, err := store.Load()
	if err != nil || len(got) != 1 || got[0].GID != "1111111111111111" {
		t.Errorf("Load with one bad record: %+v, %v; want the good one", got, err)
	}
	if !strings.Contains(logs.String(), "2222222222222222") {
		t.Errorf("the bad record is not logged:\n%s", logs.String())
	}
}
