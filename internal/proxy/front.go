package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The front end takes every client connection first. A connection that opens with CONNECT (what
// HTTPS_PROXY clients send) is served here, without net/http's server: net/http starts a
// background read for every request and must stop it again before a Hijack, and those two
// goroutine hand-offs took about an eighth of the time a tunnel takes to open on a small VM. Every
// other connection goes to net/http untouched: the front end only peeks (MSG_PEEK) at its first
// bytes, so nothing is consumed. The request is still parsed by net/http's parser
// (http.ReadRequest) and handled by ServeHTTP, as on the other path.

// frontListener is the listener net/http serves. It accepts on the real listener itself and hands
// net/http the connections that are not CONNECT.
type frontListener struct {
	net.Listener
	s       *Server
	handoff chan net.Conn
	done    chan struct{} // closed when the accept loop ends
	err     error         // why it ended; read after done

	mu      sync.Mutex
	waiting map[net.Conn]struct{} // waiting for a request: closed by Close
	closed  bool
}

func newFrontListener(ln net.Listener, s *Server) *frontListener {
	l := &frontListener{Listener: ln, s: s, handoff: make(chan net.Conn), done: make(chan struct{}),
		waiting: map[net.Conn]struct{}{}}
	go l.acceptLoop()
	return l
}

// Accept returns the next connection for net/http.
func (l *frontListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.handoff:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// Close closes the real listener and the connections waiting for a request.
func (l *frontListener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.waiting {
		c.Close()
	}
	l.mu.Unlock()
	return err
}

func (l *frontListener) acceptLoop() {
	defer close(l.done)
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.err = err
				return
			}
			// Out of file descriptors and the like: wait, as net/http does, and try again.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.s.Logger.Error("accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go l.serve(c)
	}
}

// serve peeks at each request's first bytes: it answers CONNECT requests itself and hands the
// connection to net/http at the first request that is not one.
func (l *frontListener) serve(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		l.handOff(c)
		return
	}
	headerTimeout := orDefault(l.s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	// As in net/http: the first request's head must come within the header timeout of the
	// connection; later ones may be preceded by up to the idle timeout.
	wait := headerTimeout
	for {
		if !l.wait(tc) {
			tc.Close()
			return
		}
		tc.SetReadDeadline(time.Now().Add(wait))
		connect, err := peekConnect(tc)
		l.stopWaiting(tc)
		if err != nil {
			tc.Close()
			return
		}
		if !connect {
			tc.SetReadDeadline(time.Time{})
			l.handOff(tc)
			return
		}
		if wait != headerTimeout {
			tc.SetReadDeadline(time.Now().Add(headerTimeout))
		}
		if !l.s.serveFrontConnect(tc) {
			return
		}
		wait = orDefault(l.s.IdleTimeout, DefaultIdleTimeout)
	}
}

func (l *frontListener) handOff(c net.Conn) {
	select {
	case l.handoff <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *frontListener) wait(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.waiting[c] = struct{}{}
	return true
}

func (l *frontListener) stopWaiting(c net.Conn) {
	l.mu.Lock()
	delete(l.waiting, c)
	l.mu.Unlock()
}

var connectPrefix = []byte("CONNECT ")

// peekConnect waits for the first bytes of a request on c and reports whether it is a CONNECT,
// leaving them unread.
func peekConnect(c *net.TCPConn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var buf [8]byte
	var n int
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK)
		switch {
		case perr == syscall.EAGAIN || perr == syscall.EINTR:
			return false
		case perr == nil && n > 0 && n < len(buf) && bytes.HasPrefix(connectPrefix, buf[:n]):
			return false // a CONNECT, perhaps: wait for the rest of its first line
		}
		return true
	})
	switch {
	case err != nil:
		return false, err
	case perr != nil:
		return false, perr
	case n == 0:
		return false, io.EOF
	}
	return bytes.Equal(buf[:n], connectPrefix), nil
}

// serveFrontConnect reads one CONNECT request from c and serves it. It reports whether c is still
// the front end's, to read the next request from: after a refusal on a connection kept alive.
func (s *Server) serveFrontConnect(c *net.TCPConn) bool {
	// Request heads are limited as net/http limits them (MaxHeaderBytes plus its 4 KiB of slack).
	lr := &io.LimitedReader{R: c, N: int64(s.srv.MaxHeaderBytes) + 4<<10}
	br := bufio.NewReaderSize(lr, 4<<10)
	r, err := http.ReadRequest(br)
	if err != nil {
		// As net/http answers a request it cannot read: no access-log record, since there is no
		// request to log.
		status := http.StatusBadRequest
		if lr.N <= 0 {
			status = http.StatusRequestHeaderFieldsTooLarge
		}
		if !errors.Is(err, io.EOF) {
			fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%d %s",
				status, http.StatusText(status), status, http.StatusText(status))
		}
		closeAfterResponse(c)
		return false
	}
	c.SetReadDeadline(time.Time{})
	r.RemoteAddr = c.RemoteAddr().String()
	w := &frontResponse{conn: c, br: br, header: http.Header{}}
	s.ServeHTTP(w, r)
	if w.hijacked {
		return false
	}
	if !w.finish(r) || br.Buffered() > 0 {
		// Closed, or requests pipelined behind this one are in br: net/http cannot take them over.
		closeAfterResponse(c)
		return false
	}
	return true
}

// closeAfterResponse closes c so that the response just written reaches the client: it ends the
// sending side first and reads what the client still sends for a moment, since closing with
// unread bytes would reset the connection and could destroy the response (net/http does the same).
func closeAfterResponse(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.CopyN(io.Discard, c, 256<<10)
	c.Close()
}

// frontResponse is the http.ResponseWriter of a CONNECT request served by the front end. It holds a
// refusal until ServeHTTP returns, then writes it with a Content-Length; serveConnect takes the
// connection over with Hijack instead.
type frontResponse struct {
	conn     *net.TCPConn
	br       *bufio.Reader
	header   http.Header
	status   int
	body     bytes.Buffer
	hijacked bool
}

func (w *frontResponse) Header() http.Header { return w.header }

func (w *frontResponse) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *frontResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// Hijack hands the connection to serveConnect, with the bytes read past the request head.
func (w *frontResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(w.br, bufio.NewWriterSize(w.conn, 16)), nil
}

// SetReadDeadline lets http.ResponseController bound the reading of a refused request's body.
func (w *frontResponse) SetReadDeadline(t time.Time) error { return w.conn.SetReadDeadline(t) }

// finish writes the response and reports whether the connection can carry another request.
func (w *frontResponse) finish(r *http.Request) bool {
	h := w.header
	// A CONNECT request has no body; one that announces one is not read any further.
	keep := r.ProtoAtLeast(1, 1) && !r.Close && r.ContentLength == 0 && !headerHasToken(h["Connection"], "close")
	if !keep {
		h.Set("Connection", "close")
	}
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	h.Set("Content-Length", strconv.Itoa(w.body.Len()))
	bw := bufio.NewWriterSize(w.conn, 1<<10)
	fmt.Fprintf(bw, "HTTP/1.1 %03d %s\r\n", w.status, http.StatusText(w.status))
	h.Write(bw)
	bw.WriteString("\r\n")
	bw.Write(w.body.Bytes())
	return bw.Flush() == nil && keep
}
