package server

import (
	"io"
	"mime/multipart"
	"net/textproto"

	"mflow/internal/httprange"
)

// multipartBody is the body of a 206 multipart/byteranges answer (RFC 9110 §14.6): the file's bytes of
// each span, in the order asked, each part with its Content-Range and the file's Content-Type. The engine
// writes the spans' bytes one after the other; multipartBody puts each part's header before its first
// byte, and close writes the closing boundary.
type multipartBody struct {
	w        io.Writer // the answer's body
	boundary string
	headers  []textproto.MIMEHeader // each part's
	lengths  []int64                // each part's bytes

	mw   *multipart.Writer // on w, made at the first byte
	part io.Writer         // the part being written; nil before the first
	next int               // the part that comes next
	left int64             // bytes still to come in the current part
}

func newMultipartBody(spans []httprange.Span, contentType string, size int64) *multipartBody {
	m := &multipartBody{boundary: multipart.NewWriter(io.Discard).Boundary()}
	for _, sp := range spans {
		m.headers = append(m.headers, textproto.MIMEHeader{"Content-Range": {sp.ContentRange(size)}, "Content-Type": {contentType}})
		m.lengths = append(m.lengths, sp.Len())
	}
	return m
}

// length is the exact size of the body, for Content-Length: what the multipart writer writes around the
// parts, counted by writing it without them, plus their bytes.
func (m *multipartBody) length() int64 {
	var c countingWriter
	mw := multipart.NewWriter(&c)
	_ = mw.SetBoundary(m.boundary)
	for i, h := range m.headers {
		_, _ = mw.CreatePart(h)
		c += countingWriter(m.lengths[i])
	}
	_ = mw.Close()
	return int64(c)
}

func (m *multipartBody) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		if m.left == 0 {
			if err := m.startPart(); err != nil {
				return written, err
			}
		}
		n, err := m.part.Write(b[:min(int64(len(b)), m.left)])
		written += n
		m.left -= int64(n)
		b = b[n:]
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// startPart writes the next part's header.
func (m *multipartBody) startPart() error {
	if m.mw == nil {
		m.mw = multipart.NewWriter(m.w)
		_ = m.mw.SetBoundary(m.boundary)
	}
	if m.next >= len(m.headers) {
		return io.ErrShortWrite // more bytes than the parts hold: never, as the engine writes exactly the spans
	}
	part, err := m.mw.CreatePart(m.headers[m.next])
	if err != nil {
		return err
	}
	m.part, m.left = part, m.lengths[m.next]
	m.next++
	return nil
}

// close writes the closing boundary, once every part is written.
func (m *multipartBody) close() error {
	if m.mw == nil || m.left != 0 || m.next != len(m.headers) {
		return io.ErrShortWrite
	}
	return m.mw.Close()
}

// Unwrap is the answer's body: the engine flushes it, and cuts its writes, through the parts.
func (m *multipartBody) Unwrap() io.Writer { return m.w }

// countingWriter counts what is written to it.
type countingWriter int64

func (c *countingWriter) Write(b []byte) (int, error) {
	*c += countingWriter(len(b))
	return len(b), nil
}
