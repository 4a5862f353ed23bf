package mediaindex

import (
	"encoding/binary"
	"testing"
)

func box(kind string, size int) []byte {
	b := make([]byte, 8, max(size, 8))
	binary.BigEndian.PutUint32(b, uint32(size))
	copy(b[4:], kind)
	return b[:min(size, 64)] // the header and a little of the body: a head holds no more
}

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// mp4 is the head of a file of ftyp (32 bytes), then the boxes given as type and size, each cut after 64
// bytes, laid end to end as the sizes say; it returns the head as far as the first box that does not fit
// in the head's first limit bytes.
func mp4(limit int, boxes ...any) []byte {
	head := make([]byte, limit)
	copy(head, box("ftyp", 32))
	pos := 32
	for i := 0; i < len(boxes); i += 2 {
		kind, size := boxes[i].(string), boxes[i+1].(int)
		if pos < limit {
			copy(head[pos:], box(kind, size))
		}
		pos += size
	}
	return head
}

func TestLocateMoov(t *testing.T) {
	const size = 1 << 30
	large := concat(box("ftyp", 32), []byte{0, 0, 0, 1}, []byte("mdat"), binary.BigEndian.AppendUint64(nil, 800<<20))
	cases := []struct {
		name string
		head []byte
		size int64
		want Index
		v    Finding
	}{
		{"moov at the end", mp4(4096, "free", 8, "mdat", size-32-8-(4<<20), "moov", 4<<20), size, Index{size - 4<<20, size}, Found},
		{"moov at the head", mp4(4096, "moov", 2000, "mdat", size-2032), size, Index{}, None},
		{"a large mdat", large, size, Index{32 + 800<<20, 32 + 800<<20 + MaxIndex}, Found},
		{"a bigger index than the bound", mp4(4096, "mdat", size-32-(40<<20), "moov", 40<<20), size, Index{size - 40<<20, size - 40<<20 + MaxIndex}, Found},
		{"too short to tell", mp4(4096)[:36], size, Index{}, NeedMore},
		{"an mdat to the end of the file", mp4(4096, "mdat", 0), size, Index{}, None},
		{"a box larger than the file", mp4(4096, "mdat", size), size, Index{}, None},
		{"a box smaller than its header", mp4(4096, "free", 4, "mdat", 100), size, Index{}, None},
		{"not an MP4", []byte("RIFF....AVI LIST"), size, Index{}, None},
		{"the moov within the head", mp4(4096, "mdat", 1000, "moov", 500), 1532, Index{}, None},
		{"no moov after the mdat", mp4(4096, "mdat", size-32), size, Index{}, None},
		{"too short for a 64-bit size", large[:40], size, Index{}, NeedMore},
		{"a whole head without an mdat", mp4(HeadBytes, "free", HeadBytes), size, Index{}, None},
	}
	for _, c := range cases {
		got, v := Locate(c.head, c.size)
		if v != c.v || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v, %v", c.name, got, v, c.want, c.v)
		}
	}
}

// element is a Matroska element: its ID, its data size as one byte (or unknown), and its data.
func element(id []byte, data ...[]byte) []byte {
	body := concat(data...)
	return concat(id, []byte{0x80 | byte(len(body))}, body)
}

func seek(id []byte, pos uint32) []byte {
	return element(seekID, element(seekIDID, id), element(seekPosID, binary.BigEndian.AppendUint32(nil, pos)))
}

func TestLocateCues(t *testing.T) {
	const size = 1 << 30
	ebml := element(ebmlID, element([]byte{0x42, 0x82}, []byte("matroska")))
	unknown := []byte{0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF} // an 8-byte size: unknown
	segment := concat(segmentID, unknown)
	at := int64(len(ebml) + len(segment)) // where the Segment's data begins
	info := []byte{0x15, 0x49, 0xA9, 0x66}
	tags := []byte{0x12, 0x54, 0xC3, 0x67}
	cases := []struct {
		name string
		head []byte
		want Index
		v    Finding
	}{
		{"Cues at the end", concat(ebml, segment, element(seekHeadID, seek(info, 100), seek(cuesID, 900<<20))),
			Index{at + 900<<20, at + 900<<20 + MaxIndex}, Found},
		{"Cues before the tags", concat(ebml, segment, element(seekHeadID, seek(cuesID, 900<<20), seek(tags, 901<<20), seek(info, 100))),
			Index{at + 900<<20, at + 901<<20}, Found},
		{"Cues near the end of the file", concat(ebml, segment, element(seekHeadID, seek(cuesID, uint32(size-at-1000)))),
			Index{size - 1000, size}, Found},
		{"no Cues in the SeekHead", concat(ebml, segment, element(seekHeadID, seek(info, 100))), Index{}, None},
		{"Cues in the head", concat(ebml, segment, element(seekHeadID, seek(cuesID, 10)), make([]byte, 100)), Index{}, None},
		{"Cues before any SeekHead", concat(ebml, segment, element(cuesID)), Index{}, None},
		{"a cluster first", concat(ebml, segment, element(clusterID)), Index{}, None},
		{"the SeekHead cut short", concat(ebml, segment, element(seekHeadID, seek(cuesID, 900<<20)))[:len(ebml)+len(segment)+10], Index{}, NeedMore},
		{"the EBML header alone", ebml, Index{}, NeedMore},
		{"not a Segment", concat(ebml, element(info)), Index{}, None},
	}
	for _, c := range cases {
		got, v := Locate(c.head, size)
		if v != c.v || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v, %v", c.name, got, v, c.want, c.v)
		}
	}
}

func FuzzLocate(f *testing.F) {
	f.Add(mp4(256, "mdat", 1000, "moov", 100), int64(1132))
	f.Add(concat(element(ebmlID), segmentID, []byte{0x81}, element(seekHeadID, seek(cuesID, 5000))), int64(10000))
	f.Fuzz(func(t *testing.T, head []byte, size int64) {
		if size < int64(len(head)) {
			return
		}
		ix, v := Locate(head, size)
		if v == Found && (ix.Start < int64(len(head)) || ix.End > size || ix.End <= ix.Start || ix.End-ix.Start > MaxIndex) {
			t.Fatalf("Locate(%d bytes, %d) = %+v", len(head), size, ix)
		}
		if v == NeedMore && (len(head) >= HeadBytes || int64(len(head)) >= size) {
			t.Fatalf("NeedMore with the whole head")
		}
	})
}
