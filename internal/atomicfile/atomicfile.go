// Package atomicfile replaces a file whole: a reader, or the program after a crash, finds the old file or
// the new one, never a torn one.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// TempSuffix ends the name of a file being written. One a crash left behind can be removed.
const TempSuffix = ".tmp"

// Write writes parts, one after the other, to a new file beside path, syncs it and renames it over path.
func Write(path string, parts ...[]byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*"+TempSuffix)
	if err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // once renamed, there is nothing left to remove
	for _, p := range parts {
		if _, err = tmp.Write(p); err != nil {
			break
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}
