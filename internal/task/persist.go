package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"mflow/internal/link"
)

// bucket holds the tasks, by GID, as JSON.
var bucket = []byte("tasks")

// DefaultDir is where tasks are kept unless --state-dir says otherwise: $XDG_STATE_HOME/mflow, else
// ~/.local/state/mflow on Linux and the user's configuration folder elsewhere.
func DefaultDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "mflow"), nil
	}
	if runtime.GOOS == "linux" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		return filepath.Join(home, ".local", "state", "mflow"), nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "mflow"), nil
}

// Open returns a store kept in dir/tasks.db, with the tasks it held. A store another mflow holds, or
// one that is not a task store, is an error, never a wait.
func Open(dir string, settings Settings, probe func(context.Context, link.Link) (int64, error)) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("task store: %w", err)
	}
	file := filepath.Join(dir, "tasks.db")
	db, err := bolt.Open(file, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("task store %s is in use by another mflow; stop it, or give this one another --state-dir", file)
	}
	if err != nil {
		return nil, fmt.Errorf("task store %s cannot be opened (%v); move it away to start afresh", file, err)
	}
	var tasks []*Task
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			t := &Task{}
			if err := json.Unmarshal(v, t); err != nil || t.GID != string(k) || len(t.URIs) == 0 {
				return fmt.Errorf("task %q is unreadable", k)
			}
			t.streams = map[*Stream]struct{}{}
			tasks = append(tasks, t)
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("task store %s: %v; move it away to start afresh", file, err)
	}
	s := NewStore(settings, probe)
	s.load(tasks)
	s.save = func(t *Task) error {
		v, err := json.Marshal(t)
		if err != nil {
			return err
		}
		return db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(t.GID), v) })
	}
	s.erase = func(gid string) error {
		return db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(gid)) })
	}
	s.closeDB = func() { db.Close() }
	return s, nil
}
