package cluster

import (
	"testing"

	"mflow/internal/task"
	"mflow/internal/task/tasktest"
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
