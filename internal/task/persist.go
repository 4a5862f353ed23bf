package task

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Persister keeps task records across restarts. The Registry calls it outside its lock, one call at a
// time.
type Persister interface {
	// Load returns every record kept.
	Load() ([]Record, error)
	// Save keeps rec, replacing the record of the same GID. A store other instances share replaces only
	// the revision rec was made from (rec.Rev-1; none kept counts as 0) and returns ErrConflict otherwise.
	Save(rec Record) error
	// Delete forgets the record of gid; a GID not kept is no error.
	Delete(gid string) error
	// Close lets go of what the store holds.
	Close() error
}

// MemoryStore keeps records in memory only: they are gone when mflow stops. A Registry given the same MemoryStore
// again finds its tasks, as after a restart.
type MemoryStore struct {
	mu      sync.Mutex        // protects records
	records map[string][]byte // by GID, as a file store would keep them
}

// NewMemory returns an empty Memory.
func NewMemory() *MemoryStore { return &MemoryStore{records: map[string][]byte{}} }

func (m *MemoryStore) Load() ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Record
	for gid, b := range m.records {
		rec, err := Decode(gid, b)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

func (m *MemoryStore) Save(rec Record) error {
	b, err := Encode(rec)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.records[rec.GID] = b
	return nil
}

func (m *MemoryStore) Delete(gid string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.records, gid)
	return nil
}

func (m *MemoryStore) Close() error { return nil }

// Encode is rec as a store keeps it: JSON, without the HTML escaping that would make a link full of '<'
// six times its size.
func Encode(rec Record) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return nil, fmt.Errorf("encoding task %s: %w", rec.GID, err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// storedLen is how many bytes s takes in a record as Encode writes it, its quotes left out.
func storedLen(s string) int {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return b.Len() - len(`""`+"\n")
}

// Decode reads the record a store kept as gid, as JSON.
func Decode(gid string, b []byte) (Record, error) {
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil || rec.GID != gid || len(rec.URIs) == 0 {
		return Record{}, fmt.Errorf("task %q is unreadable", gid)
	}
	return rec, nil
}

// damaged turns bbolt's panic on a damaged page of file into one line saying what to do. The file is left
// open: mflow stops at once with that line.
func damaged(file string, err *error) {
	if v := recover(); v != nil {
		*err = fmt.Errorf("task store %s is damaged (%v): move it away (mv %s %s.damaged) to start afresh, or start with --in-memory", file, v, file, file)
	}
}

// bucket holds the tasks in the bbolt file, by GID, as JSON.
var bucket = []byte("tasks")

// Bolt keeps records in a bbolt file; each Save is on disk when it returns.
type Bolt struct {
	db   *bolt.DB
	file string
}

// OpenBolt opens dir/tasks.db, making it when missing. A file another mflow holds, or one that is not a
// task store, is an error, never a wait.
func OpenBolt(dir string) (b *Bolt, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("task store: %w", err)
	}
	file := filepath.Join(dir, "tasks.db")
	defer damaged(file, &err)
	db, err := bolt.Open(file, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("task store %s is in use by another mflow; stop it, or give this one another --state-dir", file)
	}
	if err != nil {
		return nil, fmt.Errorf("task store %s cannot be opened (%v); move it away to start afresh", file, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("task store %s: %v; move it away to start afresh", file, err)
	}
	return &Bolt{db: db, file: file}, nil
}

func (b *Bolt) Load() (out []Record, err error) {
	defer damaged(b.file, &err)
	err = b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			rec, err := Decode(string(k), v)
			if err != nil {
				return err
			}
			out = append(out, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("task store %s: %v; move it away to start afresh", b.file, err)
	}
	return out, nil
}

func (b *Bolt) Save(rec Record) error {
	v, err := Encode(rec)
	if err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(rec.GID), v) })
}

func (b *Bolt) Delete(gid string) error {
	return b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(gid)) })
}

func (b *Bolt) Close() error { return b.db.Close() }

// File is the store's file.
func (b *Bolt) File() string { return b.file }

// Sync makes the file durable. Every Save already is when it returns: this waits for none to be under way.
func (b *Bolt) Sync() error { return b.db.Sync() }
