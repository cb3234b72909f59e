package proxy

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// frontWriter is the http.ResponseWriter of a request the front end serves. As net/http's does, it
// holds a short body back until the handler returns or flushes, to send it with a Content-Length;
// a longer one without a Content-Length from the handler is sent chunked. Trailers are the header
// keys with http.TrailerPrefix set after the body.
type frontWriter struct {
	fc        *frontConn
	req       *http.Request
	header    http.Header
	bw        *bufio.Writer // from responseWriters; nil once released
	status    int           // the final status, 0 until there is one
	wroteHead bool
	chunked   bool
	declared  int64 // the Content-Length sent, -1 for none
	written   int64 // body bytes written after the head
	held      []byte
	close     bool  // the connection ends after this response
	err       error // the first failed write to the client
	hijacked  bool
}

// holdLimit is how much of a body is held back to be sent with a Content-Length.
const holdLimit = 2 << 10

var responseWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

func newFrontWriter(fc *frontConn, r *http.Request) *frontWriter {
	bw := responseWriters.Get().(*bufio.Writer)
	bw.Reset(fc.conn)
	// A request body is not read on this path: a request that announces one (only a CONNECT can,
	// here) ends its connection.
	closeAfter := r.Close || r.ContentLength != 0
	return &frontWriter{fc: fc, req: r, header: http.Header{}, bw: bw, declared: -1, close: closeAfter}
}

func (w *frontWriter) Header() http.Header { return w.header }

func (w *frontWriter) WriteHeader(code int) {
	if w.status != 0 || w.hijacked {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: sent at once, with the headers set so far.
		w.writeStatusLine(code)
		w.header.Write(w.bw)
		w.bw.WriteString("\r\n")
		w.setErr(w.bw.Flush())
		return
	}
	w.status = code
}

func (w *frontWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.req.Method == http.MethodHead {
		return len(p), nil // as net/http does: the handler may write, nothing is sent
	}
	if !w.wroteHead {
		if _, ok := w.header["Content-Length"]; !ok && len(w.held)+len(p) <= holdLimit {
			w.held = append(w.held, p...)
			return len(p), nil
		}
		w.writeHead(false)
	}
	return w.writeBody(p)
}

// Flush sends the head, if it has not gone yet, and what is buffered.
func (w *frontWriter) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.wroteHead {
		w.writeHead(false)
	}
	w.setErr(w.bw.Flush())
}

// Hijack hands the connection to serveConnect, with the bytes read past the request head.
func (w *frontWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wroteHead {
		return nil, nil, errors.New("the response has begun")
	}
	w.hijacked = true
	return w.fc.conn, bufio.NewReadWriter(w.fc.br, bufio.NewWriterSize(w.fc.conn, 16)), nil
}

// SetReadDeadline lets http.ResponseController bound the reading of a refused request's body.
func (w *frontWriter) SetReadDeadline(t time.Time) error { return w.fc.conn.SetReadDeadline(t) }

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

func (w *frontWriter) setErr(err error) {
	if err != nil && w.err == nil {
		w.err = err
	}
}

func (w *frontWriter) writeStatusLine(code int) {
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	w.bw.WriteString("HTTP/1.1 ")
	w.bw.WriteString(strconv.Itoa(code))
	w.bw.WriteString(" ")
	w.bw.WriteString(text)
	w.bw.WriteString("\r\n")
}

// writeHead writes the status line and headers, choosing how the body is delimited: the handler's
// Content-Length, the held body's length when the handler is done (final), or chunks.
func (w *frontWriter) writeHead(final bool) {
	w.wroteHead = true
	h := w.header
	if bodyAllowed(w.status) {
		if v, ok := h["Content-Length"]; ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.Join(v, "")), 10, 64)
			if err != nil || n < 0 {
				delete(h, "Content-Length")
			} else {
				w.declared = n
			}
		}
		if w.declared < 0 && w.req.Method != http.MethodHead {
			if final {
				w.declared = int64(len(w.held))
				h["Content-Length"] = []string{strconv.Itoa(len(w.held))}
			} else {
				w.chunked = true
				h["Transfer-Encoding"] = []string{"chunked"}
			}
		}
	}
	if !w.close && headerHasToken(h["Connection"], "close") {
		w.close = true
	}
	if w.close {
		h["Connection"] = []string{"close"}
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{time.Now().UTC().Format(http.TimeFormat)}
	}
	w.writeStatusLine(w.status)
	h.Write(w.bw)
	w.bw.WriteString("\r\n")
	if len(w.held) > 0 {
		held := w.held
		w.held = nil
		w.writeBody(held)
	}
}

var errTooLong = errors.New("the handler wrote more than the Content-Length it declared")

func (w *frontWriter) writeBody(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	var long error
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		p, long = p[:w.declared-w.written], errTooLong
	}
	if len(p) == 0 {
		return 0, long
	}
	if w.chunked {
		var size [16]byte
		w.bw.Write(strconv.AppendInt(size[:0], int64(len(p)), 16))
		w.bw.WriteString("\r\n")
	}
	n, err := w.bw.Write(p)
	if w.chunked && err == nil {
		_, err = w.bw.WriteString("\r\n")
	}
	w.written += int64(n)
	w.setErr(err)
	if err != nil {
		return n, err
	}
	return n, long
}

// finish completes the response after the handler returned and reports whether the connection can
// carry another request.
func (w *frontWriter) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.wroteHead {
		w.writeHead(true)
	}
	complete := true
	switch {
	case w.chunked:
		w.bw.WriteString("0\r\n")
		var trailers http.Header
		for k, vs := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				if trailers == nil {
					trailers = http.Header{}
				}
				trailers[name] = vs
			}
		}
		trailers.Write(w.bw)
		w.bw.WriteString("\r\n")
	case w.declared >= 0 && w.req.Method != http.MethodHead && bodyAllowed(w.status):
		complete = w.written == w.declared // short: the client can tell only if the connection ends
	}
	w.setErr(w.bw.Flush())
	return w.err == nil && complete && !w.close
}

// release returns the writer's buffer to its pool.
func (w *frontWriter) release() {
	w.bw.Reset(nil)
	responseWriters.Put(w.bw)
	w.bw = nil
}
