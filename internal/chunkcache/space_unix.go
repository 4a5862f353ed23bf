//go:build unix

package chunkcache

import "golang.org/x/sys/unix"

// diskSpace is the space left to an unprivileged writer on dir's filesystem, and the filesystem's size.
func diskSpace(dir string) (free, total int64, ok bool) {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0, 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), true
}
