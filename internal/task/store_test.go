package task_test

import (
	"testing"

	"mflow/internal/task"
	"mflow/internal/task/tasktest"
)

func TestTheMemoryStoreIsATaskStore(t *testing.T) {
	mem := task.NewMemory()
	tasktest.TestStore(t, func(*testing.T) task.Persister { return mem })
}

func TestTheBoltStoreIsATaskStore(t *testing.T) {
	dir := t.TempDir()
	tasktest.TestStore(t, func(t *testing.T) task.Persister {
		b, err := task.OpenBolt(dir)
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}
