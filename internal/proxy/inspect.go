package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
)

// Inspector terminates the TLS of tunnels whose rule inspects (internal/inspect's Minter).
type Inspector interface {
	// ServerConfig returns the config that terminates a client's TLS for a tunnel to host (the
	// normalised CONNECT host): a leaf for host, TLS 1.2 and later, ALPN h2 and http/1.1.
	ServerConfig(host string) *tls.Config
}

// tlsHandshakeByte is the first byte of a TLS record carrying a handshake (the ClientHello).
const tlsHandshakeByte = 0x16

// inspectRefusal is the failure of a tunnel to a rule that inspects when it cannot be inspected.
func inspectRefusal(req *Request, d policy.Decision, why string) *Failure {
	return &Failure{Status: http.StatusForbidden, Kind: string(policy.CodeHTTPRuleNotMatched), Denied: true, Rule: d.RuleID(),
		Reason: fmt.Sprintf("rule %s inspects %s and decides each HTTP request: %s", d.RuleID(), req.Target, why),
		Fix:    "send HTTP or HTTPS through the HTTP proxy (HTTP_PROXY/HTTPS_PROXY), or remove http, access and inspect from the rule"}
}

// serveInspected answers an allowed CONNECT whose rule inspects: 200, then the client's TLS is
// terminated with a leaf for the target (plain HTTP, when the client sends no TLS, is served as it
// is) and the connection is handed to the one HTTP server, where each request is decided by the
// rule's http entries, forwarded and logged with the tunnel's id. The tunnel's own record is
// written when the connection ends.
func (s *Server) serveInspected(w http.ResponseWriter, r *http.Request, req *Request) {
	if s.Inspector == nil {
		s.fail(w, r, req, &Failure{Status: http.StatusBadGateway, Kind: accesslog.ErrorInternal,
			Reason: fmt.Sprintf("rule %s inspects HTTPS, but the proxy has no CA to inspect with", req.Decision().RuleID()),
			Fix:    "start the proxy with --ca-cert and --ca-key (swarm-proxy ca init), see docs/inspection.md"})
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.fail(w, r, req, &Failure{Status: http.StatusInternalServerError, Kind: accesslog.ErrorInternal, Reason: "cannot take over the connection: " + err.Error()})
		return
	}
	conn = unwrapConn(conn)
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		relay.Abort(conn)
		rec := s.record(req)
		rec.Status, rec.Inspected, rec.TunnelID = http.StatusOK, true, req.ID
		rec.Error, rec.Reason = accesslog.ErrorClientClosed, "the client went away before the tunnel opened"
		s.finish(req, rec)
		return
	}
	// Handshake on its own goroutine: the handler returns, so that the server's connection
	// goroutine does not wait for a client that is slow to start TLS.
	go s.ServeInspected(conn, brw.Reader, req)
}

// ServeInspected serves client, a connection to req's target whose rule inspects (Decide made,
// the client answered as its protocol needs), as an inspected tunnel: a TLS client is terminated
// with a leaf for the target, plain HTTP is served as it is, and the connection goes to the one
// HTTP server, where each request is decided by the rule's http entries, forwarded and logged with
// the tunnel's id (req.ID). br, when not nil, holds bytes already read from client. The tunnel's
// own record is written when the connection ends. Front ends other than CONNECT (transparent
// capture) call it where they would otherwise relay.
func (s *Server) ServeInspected(client net.Conn, br *bufio.Reader, req *Request) {
	if br == nil {
		br = bufio.NewReader(client)
	}
	rec := s.record(req)
	rec.Status, rec.Inspected, rec.TunnelID = http.StatusOK, true, req.ID
	var cred *credConn
	tc := &tunnelConn{Conn: client, r: br, done: func(c *tunnelConn) {
		s.creds.remove(cred)
		if cred.wasRevoked() {
			rec.Error, rec.Reason = accesslog.ErrorTicketRevoked, "the proxy credentials that opened the inspected tunnel were revoked while it was open (--revoked)"
		}
		rec.BytesOut, rec.BytesIn = c.in.Load(), c.out.Load()
		s.finish(req, rec)
	}}
	cred = s.creds.add(req, func() { relay.Abort(client) })
	s.startInspected(tc, req, rec)
}

// startInspected reads the start of the tunnel and hands it to the server as TLS or plain HTTP.
func (s *Server) startInspected(tc *tunnelConn, req *Request, rec *accesslog.Record) {
	timeout := orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	tc.SetDeadline(time.Now().Add(timeout))
	first, err := tc.r.Peek(1)
	if err != nil {
		rec.Error, rec.Reason = accesslog.ErrorClientClosed, "the client sent nothing in the inspected tunnel: "+dial.RootCause(err).Error()
		tc.Close()
		return
	}
	if s.Inspector == nil {
		rec.Error, rec.Reason = accesslog.ErrorInternal, fmt.Sprintf("rule %s inspects HTTPS, but the proxy has no CA to inspect with", req.Decision().RuleID())
		tc.Close()
		return
	}
	info := ConnInfo{Client: req.Client, Session: req.Session, Via: "inspect"}
	if req.Conn != nil {
		info = *req.Conn // a captured connection keeps its original destination
	}
	info.Target, info.Scheme, info.TunnelID = req.Target, "http", req.ID
	var c net.Conn = tc
	if first[0] == tlsHandshakeByte {
		t := tls.Server(tc, s.Inspector.ServerConfig(req.Target.Host))
		if err := t.Handshake(); err != nil {
			rec.Error = accesslog.ErrorClientTLS
			rec.Reason = "the client's TLS handshake with the proxy failed: " + err.Error()
			if !errors.Is(err, inspect.ErrSNIMismatch) {
				rec.Reason += " (does the client trust the inspection CA? see swarm-proxy env --ca)"
			}
			tc.Close()
			s.Logger.Debug("inspected tunnel: client TLS failed", "id", req.ID, "client", req.Client.Addr(), "target", req.Target, "err", err)
			return
		}
		st := t.ConnectionState()
		info.Scheme, info.TLS, info.batch, c = "https", &st, tc, t
	}
	tc.SetDeadline(time.Time{})
	if err := s.ServeConn(c, info); err != nil {
		rec.Error, rec.Reason = accesslog.ErrorShuttingDown, "the proxy is shutting down"
	}
}

// tunnelConn is the client side of an inspected tunnel: it reads through the buffer that already
// holds the bytes that followed the CONNECT, counts raw bytes each way, and runs done once when
// it is closed, which writes the tunnel's record. Under the client's TLS it also gathers the
// records of one response write into one write (gather, send).
type tunnelConn struct {
	net.Conn
	r       *bufio.Reader
	in, out atomic.Int64 // from the client, to the client
	once    sync.Once
	done    func(*tunnelConn)

	wmu       sync.Mutex
	gathering bool
	pending   *[]byte // the records gathered since gather, from gatherBufs
}

// gatherBufs holds the buffers of tunnelConn.gather: a 128 KiB response write (the forwarder's
// copy buffer) makes 8 records of up to 16 KiB and their framing.
var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, gatherSize); return &b }}

const gatherSize = 160 << 10

func (c *tunnelConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.r.Buffered() > 0 {
		n, err = c.r.Read(p)
	} else {
		n, err = c.Conn.Read(p) // past what was read ahead: the connection itself, without a copy
	}
	c.in.Add(int64(n))
	return n, err
}

func (c *tunnelConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.gathering {
		if c.pending != nil && len(*c.pending)+len(p) > gatherSize {
			if err := c.sendLocked(); err != nil {
				return 0, err
			}
		}
		if len(p) <= gatherSize {
			if c.pending == nil {
				c.pending = gatherBufs.Get().(*[]byte)
			}
			*c.pending = append(*c.pending, p...)
			return len(p), nil
		}
	}
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// gather holds what is written to the connection from now until send. crypto/tls writes each
// record of up to 16 KiB on its own; the response writer calls gather before a write to the
// client's TLS connection and send when it returns, so that the records of that write leave in
// one write (fewer syscalls, larger TCP segments) and no byte is held past the write that made it.
func (c *tunnelConn) gather() {
	c.wmu.Lock()
	c.gathering = true
	c.wmu.Unlock()
}

// send writes what was gathered since gather and stops gathering.
func (c *tunnelConn) send() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.gathering = false
	return c.sendLocked()
}

func (c *tunnelConn) sendLocked() error {
	if c.pending == nil {
		return nil
	}
	b := c.pending
	c.pending = nil
	n, err := c.Conn.Write(*b)
	c.out.Add(int64(n))
	*b = (*b)[:0]
	gatherBufs.Put(b)
	return err
}

func (c *tunnelConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.done(c) })
	return err
}

// CloseWrite half-closes the client connection, as net/http does after some error answers.
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// readAhead reads the target's side of an inspected TLS tunnel in large reads while a response
// streams. crypto/tls reads into the room left in its record buffer, often less than a record, so
// a streaming body would cost a syscall (and the wake-ups and ACKs around it) for every few KiB.
// The buffer comes from a pool when the last read brought a record's worth or more, and goes
// back once drained: a connection that carries small responses, or none, holds none; one that has
// just streamed may hold one in the read that waits for its next bytes.
type readAhead struct {
	buf       *[]byte // bytes read and not yet returned: (*buf)[r:w]; nil when drained
	r, w      int
	err       error // the error of the read that filled buf, returned once it is drained
	streaming bool  // the last read brought at least readAheadMin bytes
}

const (
	readAheadSize = 128 << 10
	readAheadMin  = 16 << 10 // a TLS record's payload
)

var readAheadBufs = sync.Pool{New: func() any { b := make([]byte, readAheadSize); return &b }}

// read reads from c into p: what is buffered first, else from c directly, or, while a
// response streams, into a pooled buffer first.
func (a *readAhead) read(c net.Conn, p []byte) (int, error) {
	if a.buf == nil {
		if !a.streaming || len(p) >= readAheadSize {
			n, err := c.Read(p)
			a.streaming = n >= readAheadMin
			return n, err
		}
		b := readAheadBufs.Get().(*[]byte)
		n, err := c.Read(*b)
		a.streaming = n >= readAheadMin
		if n == 0 {
			readAheadBufs.Put(b)
			return 0, err
		}
		a.buf, a.r, a.w, a.err = b, 0, n, err
	}
	n := copy(p, (*a.buf)[a.r:a.w])
	a.r += n
	if a.r < a.w {
		return n, nil
	}
	readAheadBufs.Put(a.buf)
	err := a.err
	a.buf, a.err = nil, nil
	return n, err
}

// requestFailure decides an HTTP request under a rule that inspects by its method and path: nil
// when allowed (or when the rule does not inspect). It runs right after Decide, before the dial.
func requestFailure(pol *policy.Policy, req *Request) *Failure {
	if !req.inspected {
		return nil
	}
	d := req.Decision()
	rd := pol.DecideRequest(d, req.Method, req.Path)
	if rd.Allow {
		return nil
	}
	status := http.StatusForbidden
	if rd.Code == policy.CodeAmbiguousPath {
		status = http.StatusBadRequest
	}
	return &Failure{Status: status, Kind: string(rd.Code), Denied: true, Rule: rd.RuleID(), Reason: rd.Reason, Fix: rd.Fix}
}
