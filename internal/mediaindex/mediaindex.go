// Package mediaindex finds, from the first bytes of a film, where it keeps its index when that is not at
// its head: an MP4 or MOV whose moov box follows its mdat (as many files on drives are), or a Matroska or
// WebM file whose Cues its SeekHead places after the head. A player opening such a film reads the head,
// jumps to the index, and comes back: knowing the place from the head lets the index be fetched at once.
package mediaindex

import (
	"bytes"
	"encoding/binary"
)

// MaxIndex is the most bytes of an index fetched ahead: a two-hour film's moov is a few MiB.
const MaxIndex = 16 << 20

// HeadBytes is the most of the head Locate needs to decide.
const HeadBytes = 64 << 10

// Finding is what Locate could tell from the head it was given.
type Finding int

const (
	NeedMore Finding = iota // the head so far is too short to tell
	None                    // no index to fetch ahead: another kind of file, or the index is at the head
	Found                   // the index is at [Start, End)
)

// Index is where a film keeps its index: the bytes [Start, End) of the file, at most MaxIndex of them.
type Index struct {
	Start, End int64
}

// Locate tells where the file of size bytes whose first bytes are head keeps its index, when that is
// beyond head. With HeadBytes of head (or the whole file) it never answers NeedMore.
func Locate(head []byte, size int64) (Index, Finding) {
	var (
		ix Index
		v  Finding
	)
	switch {
	case len(head) < 8:
		v = NeedMore
	case string(head[4:8]) == "ftyp":
		ix, v = locateMoov(head, size)
	case bytes.HasPrefix(head, ebmlID):
		ix, v = locateCues(head, size)
	default:
		return Index{}, None
	}
	if v == NeedMore && (len(head) >= HeadBytes || int64(len(head)) >= size) {
		return Index{}, None
	}
	if v == Found {
		if ix.Start < int64(len(head)) || ix.Start >= size {
			return Index{}, None // in the head already, or nowhere
		}
		ix.End = min(ix.End, size, ix.Start+MaxIndex)
	}
	return ix, v
}

// locateMoov walks an MP4's top-level boxes: a moov before the mdat is at the head; after an mdat of
// known size, the moov is where the mdat ends.
func locateMoov(head []byte, size int64) (Index, Finding) {
	var pos int64
	for {
		if pos+8 > int64(len(head)) {
			return Index{}, NeedMore
		}
		boxSize, header := int64(binary.BigEndian.Uint32(head[pos:])), int64(8)
		kind := string(head[pos+4 : pos+8])
		switch boxSize {
		case 0: // to the end of the file: nothing follows it
			return Index{}, None
		case 1: // a 64-bit size follows the type
			if pos+16 > int64(len(head)) {
				return Index{}, NeedMore
			}
			large := binary.BigEndian.Uint64(head[pos+8:])
			if large > uint64(size) {
				return Index{}, None
			}
			boxSize, header = int64(large), 16
		}
		if boxSize < header || boxSize > size-pos {
			return Index{}, None // not a well-formed file
		}
		switch kind {
		case "moov":
			return Index{}, None
		case "mdat":
			return Index{Start: pos + boxSize, End: size}, Found
		}
		pos += boxSize
	}
}

// The Matroska element IDs Locate reads, with their length markers.
var (
	ebmlID     = []byte{0x1A, 0x45, 0xDF, 0xA3}
	segmentID  = []byte{0x18, 0x53, 0x80, 0x67}
	seekHeadID = []byte{0x11, 0x4D, 0x9B, 0x74}
	seekID     = []byte{0x4D, 0xBB}
	seekIDID   = []byte{0x53, 0xAB}
	seekPosID  = []byte{0x53, 0xAC}
	cuesID     = []byte{0x1C, 0x53, 0xBB, 0x6B}
	clusterID  = []byte{0x1F, 0x43, 0xB6, 0x75}
)

// locateCues reads a Matroska file's SeekHead for its Cues: they run from their place to the next element
// the SeekHead names after them, or to the end of the file.
func locateCues(head []byte, size int64) (Index, Finding) {
	r := reader{b: head}
	id, n, ok := r.element()
	if !ok {
		return Index{}, NeedMore
	}
	if !bytes.Equal(id, ebmlID) || !r.skip(n) {
		return Index{}, NeedMore
	}
	if id, _, ok = r.element(); !ok {
		return Index{}, NeedMore
	}
	if !bytes.Equal(id, segmentID) {
		return Index{}, None
	}
	segment := int64(r.pos) // SeekPosition counts from the Segment's data
	for {
		id, n, ok := r.element()
		if !ok {
			return Index{}, NeedMore
		}
		switch {
		case bytes.Equal(id, cuesID), bytes.Equal(id, clusterID):
			return Index{}, None // Cues before the clusters, or clusters before any SeekHead: nothing to find
		case bytes.Equal(id, seekHeadID):
			if n < 0 || int64(len(head)-r.pos) < n {
				return Index{}, NeedMore
			}
			return cuesFromSeekHead(head[r.pos:r.pos+int(n)], segment, size)
		}
		if n < 0 || !r.skip(n) {
			return Index{}, NeedMore
		}
	}
}

// cuesFromSeekHead finds the Cues' place in a SeekHead's entries, and the nearest entry after it.
func cuesFromSeekHead(seekHead []byte, segment, size int64) (Index, Finding) {
	var positions []int64
	cues := int64(-1)
	r := reader{b: seekHead}
	for r.pos < len(r.b) {
		id, n, ok := r.element()
		if !ok || n < 0 || int64(len(r.b)-r.pos) < n {
			return Index{}, None
		}
		entry := reader{b: r.b[r.pos : r.pos+int(n)]}
		r.pos += int(n)
		if !bytes.Equal(id, seekID) {
			continue
		}
		var target []byte
		pos := int64(-1)
		for entry.pos < len(entry.b) {
			id, n, ok := entry.element()
			if !ok || n < 0 || n > 8 || int64(len(entry.b)-entry.pos) < n {
				return Index{}, None
			}
			value := entry.b[entry.pos : entry.pos+int(n)]
			entry.pos += int(n)
			switch {
			case bytes.Equal(id, seekIDID):
				target = value
			case bytes.Equal(id, seekPosID):
				var u uint64
				for _, b := range value {
					u = u<<8 | uint64(b)
				}
				if u < uint64(size) {
					pos = segment + int64(u)
				}
			}
		}
		if pos < 0 || pos >= size {
			continue
		}
		positions = append(positions, pos)
		if bytes.Equal(target, cuesID) {
			cues = pos
		}
	}
	if cues < 0 {
		return Index{}, None
	}
	end := size
	for _, p := range positions {
		if p > cues {
			end = min(end, p)
		}
	}
	return Index{Start: cues, End: end}, Found
}

// reader reads EBML elements' headers.
type reader struct {
	b   []byte
	pos int
}

// element reads an element's ID (with its length marker) and data size; the size is -1 when unknown.
func (r *reader) element() (id []byte, size int64, ok bool) {
	idLen := vintLen(r.b, r.pos, 4)
	if idLen == 0 {
		return nil, 0, false
	}
	id = r.b[r.pos : r.pos+idLen]
	r.pos += idLen
	sizeLen := vintLen(r.b, r.pos, 8)
	if sizeLen == 0 {
		return nil, 0, false
	}
	v := uint64(r.b[r.pos]) & (0xFF >> sizeLen)
	unknown := v == 0xFF>>sizeLen
	for _, b := range r.b[r.pos+1 : r.pos+sizeLen] {
		v = v<<8 | uint64(b)
		unknown = unknown && b == 0xFF
	}
	r.pos += sizeLen
	if unknown {
		return id, -1, true
	}
	if v > 1<<53 {
		return nil, 0, false
	}
	return id, int64(v), true
}

// skip moves past n bytes; false when they are not all there.
func (r *reader) skip(n int64) bool {
	if n < 0 || int64(len(r.b)-r.pos) < n {
		return false
	}
	r.pos += int(n)
	return true
}

// vintLen is the length of the variable-size integer at b[pos], at most limit; 0 when it is invalid or
// not all there.
func vintLen(b []byte, pos, limit int) int {
	if pos >= len(b) || b[pos] == 0 {
		return 0
	}
	n := 1
	for mask := byte(0x80); b[pos]&mask == 0; mask >>= 1 {
		n++
	}
	if n > limit || pos+n > len(b) {
		return 0
	}
	return n
}
