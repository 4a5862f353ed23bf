package chunkcache

import "golang.org/x/sys/windows"

// diskSpace is the space left to this user on dir's volume, and the volume's size.
func diskSpace(dir string) (free, total int64, ok bool) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, 0, false
	}
	var avail, size, totalFree uint64
	if windows.GetDiskFreeSpaceEx(p, &avail, &size, &totalFree) != nil {
		return 0, 0, false
	}
	return int64(avail), int64(size), true
}
