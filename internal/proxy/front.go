package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sys/unix"
)

// The front end takes every client connection first and serves the requests that make up most of
// an agent's traffic itself, without net/http's server: CONNECT (what HTTPS_PROXY clients send) and
// body-less GET, HEAD and OPTIONS to http:// URLs (what package managers send over HTTP_PROXY).
// net/http's server starts a background read of the connection for every request and stops it
// again afterwards; with its response writer and connection state, that was about a seventh of the
// proxy's CPU per plain-HTTP request, and an eighth of the time a tunnel takes to open, on a small
// VM. Every other request goes to net/http: a connection that opens with one is handed over
// untouched (the front end only peeks at its first bytes with MSG_PEEK), and one whose request
// turns out to need more (a body, an upgrade, HTTP/1.0) is handed over with the bytes read so far
// replayed. Requests are still parsed by net/http's parser (http.ReadRequest) and handled by the
// same ServeHTTP as on the other path.

// frontListener is the listener net/http serves. It accepts on the real listener itself and hands
// net/http the connections that the front end does not serve.
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

// serve reads the requests of one client connection. It serves those the front end takes and
// hands the connection to net/http at the first one it does not.
func (l *frontListener) serve(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		l.handOff(c)
		return
	}
	fc := &frontConn{s: l.s, conn: tc}
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
		kind, err := fc.nextKind()
		l.stopWaiting(tc)
		if err != nil {
			tc.Close()
			return
		}
		if kind == kindOther {
			tc.SetReadDeadline(time.Time{})
			l.handOff(fc.replay(nil))
			return
		}
		if wait != headerTimeout {
			tc.SetReadDeadline(time.Now().Add(headerTimeout))
		}
		next, handoff := fc.serveRequest()
		if handoff != nil {
			l.handOff(handoff)
		}
		if !next {
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

// requestKind is what the first bytes of a request say about it.
type requestKind int

const (
	kindOther   requestKind = iota // net/http serves it
	kindConnect                    // CONNECT
	kindSimple                     // GET, HEAD or OPTIONS of an http:// URL: perhaps a simple request
)

var frontPrefixes = []struct {
	prefix []byte
	kind   requestKind
}{
	{[]byte("CONNECT "), kindConnect},
	{[]byte("GET http://"), kindSimple},
	{[]byte("HEAD http://"), kindSimple},
	{[]byte("OPTIONS http://"), kindSimple},
}

// maxPrefix is the length of the longest of frontPrefixes.
const maxPrefix = len("OPTIONS http://")

// classify says what a request that starts with b is; more reports that b is too short to say.
func classify(b []byte) (kind requestKind, more bool) {
	for _, f := range frontPrefixes {
		if bytes.HasPrefix(b, f.prefix) {
			return f.kind, false
		}
		if bytes.HasPrefix(f.prefix, b) {
			more = true
		}
	}
	return kindOther, more
}

// frontConn is a client connection the front end serves.
type frontConn struct {
	s    *Server
	conn *net.TCPConn
	in   frontReader   // between conn and br
	br   *bufio.Reader // nil until the first request is read

	// The watch of the connection while a request is served: see watch.
	watchMu     sync.Mutex
	watchTimer  *time.Timer
	watchCancel context.CancelFunc // nil when no request is watched
	watchDone   chan struct{}      // the watching goroutine's end, once it started
}

// nextKind waits for the next request's first bytes and classifies them, leaving them unread: on a
// new connection in the socket (MSG_PEEK), so that one for net/http is handed over untouched; on a
// kept-alive one in br, since a peek as well as a read would cost a system call per request.
func (fc *frontConn) nextKind() (requestKind, error) {
	if fc.br == nil {
		return peekKind(fc.conn)
	}
	for n := 1; ; {
		if _, err := fc.br.Peek(n); err != nil {
			if errors.Is(err, io.EOF) && fc.br.Buffered() > 0 {
				return kindOther, nil // a request cut short: net/http answers it
			}
			return kindOther, err
		}
		b, _ := fc.br.Peek(fc.br.Buffered())
		kind, more := classify(b)
		if !more {
			return kind, nil
		}
		n = len(b) + 1
	}
}

// peekKind waits for the first bytes of a request on c and classifies them, leaving them unread.
func peekKind(c *net.TCPConn) (requestKind, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return kindOther, err
	}
	var buf [maxPrefix]byte
	var n int
	var kind requestKind
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK)
		if perr == syscall.EAGAIN || perr == syscall.EINTR {
			return false
		}
		if perr != nil || n == 0 {
			return true
		}
		var more bool
		kind, more = classify(buf[:n])
		// A prefix of one the front end serves, perhaps: wait for the rest of it, unless the client
		// has finished sending (net/http then answers what it sent).
		return !more || peerClosed(fd)
	})
	switch {
	case err != nil:
		return kindOther, err
	case perr != nil:
		return kindOther, perr
	case n == 0:
		return kindOther, io.EOF
	}
	return kind, nil
}

// peerClosed reports whether the peer of the TCP socket fd has closed its sending side (the
// socket is in CLOSE_WAIT).
func peerClosed(fd uintptr) bool {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && info.State == unix.BPF_TCP_CLOSE_WAIT
}

// replay returns the connection to hand to net/http: conn itself, or, when the front end has read
// some of its bytes (rec, then what br holds), a connection that reads those first.
func (fc *frontConn) replay(rec []byte) net.Conn {
	if fc.br != nil && fc.br.Buffered() > 0 {
		b, _ := fc.br.Peek(fc.br.Buffered())
		rec = append(rec, b...)
	}
	if len(rec) == 0 {
		return fc.conn
	}
	return &replayConn{Conn: fc.conn, tcp: fc.conn, rest: rec}
}

// serveRequest reads one request and serves it, or returns the connection to hand to net/http when
// the request is not one the front end serves. next reports whether the connection is still the
// front end's, to read another request from.
func (fc *frontConn) serveRequest() (next bool, handoff net.Conn) {
	s := fc.s
	if fc.br == nil {
		fc.in.r = fc.conn
		fc.br = bufio.NewReaderSize(&fc.in, 4<<10)
	}
	// What this request's head is made of, kept in case net/http must read it again: the bytes
	// already buffered, then what is read from the connection. Heads are limited as net/http
	// limits them (MaxHeaderBytes plus its 4 KiB of slack).
	b, _ := fc.br.Peek(fc.br.Buffered())
	fc.in.rec = append(fc.in.rec[:0], b...)
	fc.in.recording = true
	fc.in.n = int64(s.srv.MaxHeaderBytes) + 4<<10
	r, err := http.ReadRequest(fc.br)
	fc.in.recording = false
	limited := fc.in.n <= 0
	fc.in.n = math.MaxInt64
	if err != nil {
		if errors.Is(err, io.EOF) && !limited {
			fc.conn.Close() // the client left before a request began
			return false, nil
		}
		method, _, _ := bytes.Cut(fc.in.rec, []byte(" ")) // one of frontPrefixes' methods
		r := &http.Request{Method: string(method), URL: &url.URL{}, Header: http.Header{}, Body: http.NoBody, ProtoMajor: 1, ProtoMinor: 1}
		f := badRequest("the request head cannot be read: " + err.Error())
		if limited {
			f.Status = http.StatusRequestHeaderFieldsTooLarge
			f.Reason = fmt.Sprintf("the request head is over %d bytes", s.srv.MaxHeaderBytes)
		}
		fc.refuse(r, f)
		return false, nil
	}
	fc.conn.SetReadDeadline(time.Time{})
	connect := r.Method == http.MethodConnect
	if r.ProtoMajor != 1 || !connect && !(simpleRequest(r) && r.ProtoMinor >= 1) {
		rec := fc.in.rec
		fc.br = nil // what it held is in rec
		return false, fc.replay(rec)
	}
	r.RemoteAddr = fc.conn.RemoteAddr().String()
	if reason := checkHead(r); reason != "" {
		fc.refuse(r, badRequest(reason))
		return false, nil
	}
	// Shutdown waits for a plain request as for a tunnel (a CONNECT is tracked by serveConnect).
	if !connect {
		t := &tunnel{client: fc.conn}
		if !s.track(t) {
			fc.refuse(r, &Failure{Status: http.StatusServiceUnavailable, Kind: "shutting_down", Reason: "the proxy is shutting down"})
			return false, nil
		}
		defer s.untrack(t)
	}
	if !connect {
		// A client that leaves stops the wait for the target. (A CONNECT's dial is bounded by the
		// dial timeout instead: watching it, with a context and a timer per tunnel, cost 0.7 KiB
		// of memory per idle tunnel.)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r = r.WithContext(ctx)
		fc.watch(cancel)
	}
	w := newFrontWriter(fc, r)
	ok := s.serveRecovered(w, r)
	fc.stopWatch()
	switch {
	case w.hijacked:
		w.release()
		return false, nil
	case !ok:
		// A panic, or a response aborted in the middle of its body: what was written goes out and
		// the connection is closed, so that a truncated body cannot look complete.
		w.bw.Flush()
		fc.conn.Close()
		w.release()
		return false, nil
	}
	keep := w.finish()
	w.release()
	if !keep || connect && fc.br.Buffered() > 0 {
		// Closed, or bytes sent right behind a refused CONNECT (early data for the tunnel, not a
		// request): the connection ends.
		closeAfterResponse(fc.conn)
		return false, nil
	}
	return true, nil
}

// serveRecovered runs ServeHTTP and reports whether it returned normally. A panic is logged, as
// net/http logs it, unless it is http.ErrAbortHandler, which aborts a response on purpose.
func (s *Server) serveRecovered(w http.ResponseWriter, r *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				s.Logger.Error("panic serving a request", "client", r.RemoteAddr, "panic", p, "stack", string(debug.Stack()))
			}
			ok = false
		}
	}()
	s.ServeHTTP(w, r)
	return true
}

// refuse answers r with f, logs it and closes the connection: for a request the front end read but
// will not serve (a malformed head, or one read just as the proxy began to shut down).
func (fc *frontConn) refuse(r *http.Request, f *Failure) {
	s := fc.s
	client, _ := netip.ParseAddrPort(fc.conn.RemoteAddr().String())
	req := s.NewRequest(client, r.Method)
	parseTarget(r, req)
	w := newFrontWriter(fc, r)
	w.close = true
	s.fail(w, r, req, f)
	w.finish()
	w.release()
	closeAfterResponse(fc.conn)
}

// checkHead makes the checks of a request head that net/http's server makes before a handler sees
// it, and says what is wrong: valid header names and values. (The Host header is gone from
// r.Header by now, at most one was accepted, and the host of a proxy request is the URL's, which
// the handler checks as the target.)
func checkHead(r *http.Request) string {
	for k, vs := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Sprintf("invalid header name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Sprintf("invalid value of header %q", k)
			}
		}
	}
	return ""
}

// watchDelay is how long a request is served before the front end starts watching its client
// connection for a close. Quick responses, most of them, never pay for the watch.
const watchDelay = 20 * time.Millisecond

// watch arranges for cancel to be called if the client closes its connection while the request is
// served: net/http's background read, started only after watchDelay. Its read goes into br, so a
// byte of a pipelined request is kept for the next one.
func (fc *frontConn) watch(cancel context.CancelFunc) {
	fc.watchMu.Lock()
	defer fc.watchMu.Unlock()
	fc.watchCancel, fc.watchDone = cancel, nil
	if fc.watchTimer == nil {
		fc.watchTimer = time.AfterFunc(watchDelay, fc.startWatch)
	} else {
		fc.watchTimer.Reset(watchDelay)
	}
}

func (fc *frontConn) startWatch() {
	fc.watchMu.Lock()
	defer fc.watchMu.Unlock()
	if fc.watchCancel == nil {
		return // the request was done first
	}
	cancel, done := fc.watchCancel, make(chan struct{})
	fc.watchDone = done
	go func() {
		defer close(done)
		if _, err := fc.br.Peek(1); err != nil && !isTimeout(err) {
			cancel()
		}
	}()
}

// stopWatch ends the watch of the connection, waiting for its read to end.
func (fc *frontConn) stopWatch() {
	fc.watchMu.Lock()
	if fc.watchTimer != nil {
		fc.watchTimer.Stop()
	}
	fc.watchCancel = nil
	done := fc.watchDone
	fc.watchDone = nil
	fc.watchMu.Unlock()
	if done != nil {
		fc.conn.SetReadDeadline(pastDeadline)
		<-done
		fc.conn.SetReadDeadline(time.Time{})
	}
}

// frontReader reads a connection for the front end's bufio.Reader: it fails once n bytes have been
// read (a request head that is too large) and, while recording, keeps a copy of what it read.
type frontReader struct {
	r         io.Reader
	n         int64
	recording bool
	rec       []byte
}

func (f *frontReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= int64(n)
	if f.recording {
		f.rec = append(f.rec, p[:n]...)
	}
	return n, err
}

// replayConn is a connection handed to net/http after the front end read some of its bytes: those
// come first. It is a net.Conn, not a *net.TCPConn, so that nothing can read the socket around
// them (io.Copy's WriteTo fast path would).
type replayConn struct {
	net.Conn
	tcp  *net.TCPConn
	rest []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection, for a relay after a CONNECT and net/http's lingering close.
func (c *replayConn) CloseWrite() error { return c.tcp.CloseWrite() }

// closeAfterResponse closes c so that the response just written reaches the client: it ends the
// sending side first and reads what the client still sends for a moment, since closing with
// unread bytes would reset the connection and could destroy the response (net/http does the same).
func closeAfterResponse(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.CopyN(io.Discard, c, 256<<10)
	c.Close()
}
