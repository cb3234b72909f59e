package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// ConnInfo describes a client connection that another front end (HTTPS inspection, transparent
// capture) hands to the proxy's one HTTP server with ServeConn.
type ConnInfo struct {
	// Client is the sandbox-side address the connection came from. Required.
	Client netip.AddrPort
	// Session is the broker session that admitted the connection; "" in proxy mode. A handed
	// connection is not asked for proxy credentials: its front end admitted it.
	Session string
	// Target is where the connection's requests go: they arrive in origin form (GET /path), and a
	// request whose Host names another host is refused (400), so that a request can never reach a
	// host other than the one that was decided. Required.
	Target policy.Target
	// Scheme is how the Transport reaches Target: "https" for inspected TLS, "http" for captured
	// plain HTTP. Required.
	Scheme string
	// TunnelID is the request id of the CONNECT or SOCKS5 tunnel the connection was carried in,
	// "" when none.
	TunnelID string
	// Via names the way in, for logs: "inspect" or "transparent".
	Via string
	// OriginalDst is the destination the client dialed (transparent capture); zero otherwise.
	OriginalDst netip.AddrPort
	// TLS is the client-facing TLS state of an inspected connection, nil otherwise. When the
	// connection is a *tls.Conn, net/http also puts it in each request's TLS field.
	TLS *tls.ConnectionState
	// Refusal, when set, refuses every request on the connection with it, answered and logged
	// like any refusal: the front end decided that the connection may not go anywhere (a captured
	// connection whose name is not an address of its destination).
	Refusal *Failure

	batch *tunnelConn // under the client's TLS of an inspected tunnel: gathers a response write's records
}

// ErrClosed is returned by ServeConn once the proxy is shutting down.
var ErrClosed = errors.New("proxy: server closed")

// ServeConn serves the HTTP requests that arrive on c with the proxy's one net/http server and
// handler, exactly as for a connection accepted on its listener, and returns once the server has
// taken c. Each request is decided, forwarded and logged as a plain proxy request to info.Target
// would be. A *tls.Conn is served as it is, so HTTP/2 negotiated by ALPN works. After a Shutdown
// it closes c and returns ErrClosed.
func (s *Server) ServeConn(c net.Conn, info ConnInfo) error {
	s.init()
	s.handedOnce.Do(func() { go s.srv.Serve(s.handed) })
	if _, ok := c.(*tls.Conn); !ok {
		c = &observedConn{Conn: c, s: s}
	}
	s.conns.setInfo(c, &info)
	if err := s.handed.hand(c); err != nil {
		s.conns.setInfo(c, nil)
		c.Close()
		return err
	}
	return nil
}

type connInfoKey struct{}

// connInfoOf returns the ConnInfo of the connection r arrived on, nil for the proxy's own clients.
func connInfoOf(r *http.Request) *ConnInfo {
	info, _ := r.Context().Value(connInfoKey{}).(*ConnInfo)
	return info
}

// connTracker follows the server's client connections: which are new (connected, no request
// yet), so that Shutdown can close them at once, and which came with a ConnInfo.
type connTracker struct {
	mu      sync.Mutex
	closing bool
	fresh   map[net.Conn]struct{}
	info    map[net.Conn]*ConnInfo
}

func (t *connTracker) init() {
	t.fresh = map[net.Conn]struct{}{}
	t.info = map[net.Conn]*ConnInfo{}
}

// state is the http.Server's ConnState hook.
func (t *connTracker) state(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch st {
	case http.StateNew:
		if t.closing {
			c.Close()
			return
		}
		t.fresh[c] = struct{}{}
	case http.StateActive:
		delete(t.fresh, c)
	case http.StateIdle:
		if oc, ok := c.(*observedConn); ok {
			oc.handled.Store(false) // the next request is read: net/http may answer it itself
		}
	case http.StateHijacked, http.StateClosed:
		delete(t.fresh, c)
		delete(t.info, c)
	}
}

// context is the http.Server's ConnContext hook: it gives a handed connection's requests its info.
func (t *connTracker) context(ctx context.Context, c net.Conn) context.Context {
	if oc, ok := c.(*observedConn); ok {
		ctx = context.WithValue(ctx, observedKey{}, oc)
	}
	t.mu.Lock()
	info := t.info[c]
	t.mu.Unlock()
	if info == nil {
		return ctx
	}
	return context.WithValue(ctx, connInfoKey{}, info)
}

func (t *connTracker) setInfo(c net.Conn, info *ConnInfo) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if info == nil {
		delete(t.info, c)
		return
	}
	t.info[c] = info
}

// shutdown closes the connections that have sent no request yet, and from now on every new one.
func (t *connTracker) shutdown() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closing = true
	for c := range t.fresh {
		c.Close()
	}
	clear(t.fresh)
}

// handoffListener is a net.Listener whose connections are those handed to ServeConn.
type handoffListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) hand(c net.Conn) error {
	select {
	case <-l.done:
		return ErrClosed
	default:
	}
	select {
	case l.conns <- c:
		return nil
	case <-l.done:
		return ErrClosed
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "handoff" }

// observedConn is a client connection of the server. It notices net/http's own answer to a
// request that no handler saw, which net/http rejects as it reads it (a malformed head, headers
// over the limit, an unsupported transfer coding), so that the proxy logs that request like any
// other it refuses.
type observedConn struct {
	net.Conn
	s       *Server
	handled atomic.Bool // a handler has taken the request being read or answered; reset at StateIdle
}

type observedKey struct{}

func (c *observedConn) Write(p []byte) (int, error) {
	if !c.handled.Load() {
		c.handled.Store(true)
		c.s.logRejected(c.Conn.RemoteAddr(), p)
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close the connection after its error answers, as it would the
// bare TCP connection.
func (c *observedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// unwrapConn returns the connection under an observedConn, for the relay (splice needs the
// *net.TCPConn itself).
func unwrapConn(c net.Conn) net.Conn {
	if oc, ok := c.(*observedConn); ok {
		return oc.Conn
	}
	return c
}

// handling marks the request that r is as taken by the handler.
func handling(r *http.Request) {
	if oc, _ := r.Context().Value(observedKey{}).(*observedConn); oc != nil {
		oc.handled.Store(true)
	}
}

// observingListener wraps the connections a listener accepts in observedConns.
type observingListener struct {
	net.Listener
	s *Server
}

func (l observingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &observedConn{Conn: c, s: l.s}, nil
}

// logRejected writes the access-log record of a request that net/http answered itself with the
// response head at the start of answer ("HTTP/1.1 400 Bad Request: malformed Host header...").
func (s *Server) logRejected(client net.Addr, answer []byte) {
	line, _, _ := bytes.Cut(answer, []byte("\r\n"))
	_, status, _ := bytes.Cut(line, []byte(" "))
	code, text, _ := bytes.Cut(status, []byte(" "))
	f := BadRequest("")
	f.Status, _ = strconv.Atoi(string(code))
	_, detail, ok := bytes.Cut(text, []byte(": "))
	switch {
	case f.Status == http.StatusRequestHeaderFieldsTooLarge:
		f.Reason = fmt.Sprintf("the request head is over %d bytes", s.srv.MaxHeaderBytes)
	case f.Status == http.StatusNotImplemented:
		f.Reason = "the request's transfer coding is not supported: only chunked is"
	case ok:
		f.Reason = "the request cannot be read: " + string(detail)
	default:
		f.Reason = "the request cannot be read: its line or a header is malformed"
	}
	ap, _ := netip.ParseAddrPort(client.String())
	req := s.NewRequest(ap, "")
	s.LogFailure(req, f)
}
