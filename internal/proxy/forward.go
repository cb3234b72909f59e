package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// forwarders holds one upstream transport per session and policy. Kept-alive upstream connections
// belong to the session that dialed them and were checked under the policy in force then: a
// connection is never reused by another session, nor after the policy changed. A transport that no
// request has used for upstreamIdle is dropped, so a broker's memory follows its active sessions,
// not every session it has ever served.
type forwarders struct {
	s         *Server
	now       func() time.Time // time.Now; tests move it
	mu        sync.Mutex
	by        map[forwarderKey]*forwarder
	lastSweep time.Time
}

// upstreamIdle is how long a kept-alive upstream connection, and a transport, may go unused.
const upstreamIdle = 90 * time.Second

type forwarderKey struct {
	session string
	policy  *policy.Policy
}

type forwarder struct {
	proxy     *httputil.ReverseProxy
	transport *http.Transport
	lastUsed  time.Time
}

func newForwarders(s *Server) *forwarders {
	return &forwarders{s: s, now: time.Now, by: map[forwarderKey]*forwarder{}}
}

func (f *forwarders) get(session string, pol *policy.Policy) *httputil.ReverseProxy {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if now.Sub(f.lastSweep) >= upstreamIdle {
		f.sweep(now)
	}
	k := forwarderKey{session, pol}
	if fw, ok := f.by[k]; ok {
		fw.lastUsed = now
		return fw.proxy
	}
	t := &http.Transport{
		Proxy:                 nil, // never chain to the proxy of the proxy's own environment
		DialContext:           f.s.dialForTransport,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       upstreamIdle,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: orDefault(f.s.UpstreamTimeout, DefaultUpstreamTimeout),
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass Accept-Encoding and bodies through untouched
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.User = nil // never forward (or log) credentials from the URL
			pr.Out.Header.Add("Via", "1.1 swarm-proxy")
		},
		ModifyResponse: modifyResponse,
		Transport:      t,
		BufferPool:     bufferPool{},
		ErrorHandler:   f.s.forwardError,
		ErrorLog:       slog.NewLogLogger(f.s.Logger.Handler(), slog.LevelDebug),
	}
	f.by[k] = &forwarder{proxy: rp, transport: t, lastUsed: now}
	return rp
}

// sweep drops the transports that no request has used for upstreamIdle. Their idle connections have
// timed out by then; a request still running on one finishes undisturbed.
func (f *forwarders) sweep(now time.Time) {
	f.lastSweep = now
	for k, fw := range f.by {
		if now.Sub(fw.lastUsed) >= upstreamIdle {
			fw.transport.CloseIdleConnections()
			delete(f.by, k)
		}
	}
}

// retire drops the transports of every policy but current and closes their idle connections. A
// connection busy at that moment goes back to a transport that no request uses any more, where the
// idle timeout closes it.
func (f *forwarders) retire(current *policy.Policy) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, fw := range f.by {
		if k.policy != current {
			fw.transport.CloseIdleConnections()
			delete(f.by, k)
		}
	}
}

func (f *forwarders) closeIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fw := range f.by {
		fw.transport.CloseIdleConnections()
	}
}

type bufferPool struct{}

var forwardBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *forwardBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { forwardBufs.Put(&b) }

type forwardKey struct{}

// forwardState is what one forwarded request shares between the handler and the transport hooks.
type forwardState struct {
	req     *Request
	failure *Failure
	conn    atomic.Pointer[decidedConn] // the upstream connection that served the request
	bodyErr error                       // why reading the target's response body failed, if it did
}

// modifyResponse is the ReverseProxy's ModifyResponse hook. It adds Via, as RFC 9110 asks of a proxy
// for every message it forwards, and wraps the target's response body so that a read failure in the
// middle of the body is known when the request is logged.
func modifyResponse(resp *http.Response) error {
	resp.Header.Add("Via", "1.1 swarm-proxy")
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil // the body is the upgraded connection, which ReverseProxy needs writable
	}
	if st, _ := resp.Request.Context().Value(forwardKey{}).(*forwardState); st != nil && resp.Body != nil {
		resp.Body = &watchedBody{ReadCloser: resp.Body, st: st}
	}
	return nil
}

// watchedBody records the first error other than EOF that reading a response body returns. The
// handler's goroutine both reads it and logs the request, so no lock is needed.
type watchedBody struct {
	io.ReadCloser
	st *forwardState
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.st.bodyErr == nil {
		b.st.bodyErr = err
	}
	return n, err
}

// decidedConn remembers the policy decision under which an upstream connection was dialed.
type decidedConn struct {
	net.Conn
	decision policy.Decision
}

func (s *Server) dialForTransport(ctx context.Context, network, addr string) (net.Conn, error) {
	st, _ := ctx.Value(forwardKey{}).(*forwardState)
	if st == nil {
		return nil, errors.New("forward: dial without a request")
	}
	t, err := policy.ParseTarget(addr, 0)
	if err != nil {
		return nil, err
	}
	return s.dialUpstream(ctx, st.req, t)
}

// forward relays a plain-HTTP request (and, after a 101, the upgraded connection).
func (s *Server) forward(w http.ResponseWriter, r *http.Request, req *Request) {
	pol := s.Policy.Load()
	d := pol.Decide(req.Target, nil)
	if !d.Allow {
		s.fail(w, r, req, FailureOf(dial.Denied(req.Target, d)))
		return
	}
	req.dial = &dial.Request{Target: req.Target, Decision: d}

	st := &forwardState{req: req}
	cw := &countingWriter{ResponseWriter: w, s: s}
	defer cw.untrack() // after the record is written, so Shutdown waits for it
	var aborted bool
	var body *countingReader
	if simpleRequest(r) {
		aborted = s.serveSimple(cw, r, st, pol)
	} else {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			c := info.Conn
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			if dc, ok := c.(*decidedConn); ok {
				st.conn.Store(dc)
			}
		}}
		ctx := httptrace.WithClientTrace(context.WithValue(r.Context(), forwardKey{}, st), trace)
		body = &countingReader{r: r.Body, rc: http.NewResponseController(w), idle: orDefault(s.IdleTimeout, DefaultIdleTimeout)}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = body
		}
		aborted = s.serveForward(cw, r.WithContext(ctx), s.forwarders.get(req.Session, pol))
	}

	rec := s.record(req)
	rec.Status = cw.status
	if rec.Status == 0 {
		rec.Status = http.StatusOK
	}
	rec.BytesOut = cw.upOut.Load()
	if body != nil {
		rec.BytesOut += body.n.Load()
	}
	rec.BytesIn = cw.n.Load() + cw.upIn.Load()
	if dc := st.conn.Load(); dc != nil {
		rec.Rule = dc.decision.RuleID()
		rec.Reason = dc.decision.Reason
		rec.Upstream = upstreamAddr(dc.Conn)
		if pc, ok := dc.Conn.(providerConn); ok {
			rec.Provider = pc.Provider()
		}
	}
	if f := st.failure; f != nil {
		rec.BytesIn = 0 // the proxy's own error page, not bytes from the target
		rec.Error = f.Kind
		rec.Reason = f.Reason
		if f.Provider != "" {
			rec.Provider = f.Provider
		}
		if f.Denied {
			rec.Decision = accesslog.DecisionDeny
			rec.Rule = f.Rule
		}
	}
	if aborted {
		rec.Error, rec.Reason = "client_closed", "the client went away before the response was complete"
		if st.bodyErr != nil {
			rec.Error, rec.Reason = "upstream", "the response body from the target broke off: "+st.bodyErr.Error()
		}
		s.finish(req, rec)
		// Abort the client connection as net/http does for this panic: ending the response normally
		// would make a truncated body look complete.
		panic(http.ErrAbortHandler)
	}
	s.finish(req, rec)
}

// serveForward runs the ReverseProxy for r. It reports whether the proxy aborted the response in the
// middle of its body (ReverseProxy panics with http.ErrAbortHandler when copying the body fails).
func (s *Server) serveForward(w http.ResponseWriter, r *http.Request, rp *httputil.ReverseProxy) (aborted bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			aborted = true
		}
	}()
	rp.ServeHTTP(w, r)
	return false
}

// forwardError is the ReverseProxy's error handler: it maps the failure and answers the client.
func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := r.Context().Value(forwardKey{}).(*forwardState)
	f := s.forwardFailure(r, err)
	if st != nil {
		st.failure = f
		if cw, ok := w.(*countingWriter); ok && cw.status != 0 {
			return // the response had begun; the connection is closed by the server
		}
		s.writeFailure(w, r, st.req, f)
	}
}

func (s *Server) forwardFailure(r *http.Request, err error) *Failure {
	var de *dial.Error
	switch {
	case errors.As(err, &de):
		return FailureOf(de)
	case r.Context().Err() != nil:
		return &Failure{Status: 499, Kind: "client_closed", Reason: "the client closed the request before the response was complete"}
	case isTimeout(err):
		return &Failure{Status: http.StatusGatewayTimeout, Kind: dial.KindTimeout.String(),
			Reason: fmt.Sprintf("the target did not send response headers within %s", orDefault(s.UpstreamTimeout, DefaultUpstreamTimeout))}
	default:
		return &Failure{Status: http.StatusBadGateway, Kind: "upstream", Reason: "upstream error: " + rootCause(err).Error()}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// countingReader counts a request body and times the client out when the body stops arriving for
// idle: each read extends the connection's read deadline.
type countingReader struct {
	r    io.ReadCloser
	n    atomic.Int64
	rc   *http.ResponseController
	idle time.Duration
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.rc.SetReadDeadline(time.Now().Add(c.idle))
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err == io.EOF {
		// Cleared at once: the server's own read of the connection starts at the end of the body.
		// After a failed read the deadline stays, so that the server's attempt to drain the rest
		// ends at once and the connection is closed.
		c.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// countingWriter records the status and counts response bytes, including those of an upgraded
// (101) connection, which it tracks as a tunnel so that Shutdown waits for it.
type countingWriter struct {
	http.ResponseWriter
	s      *Server
	status int
	n      atomic.Int64
	upIn   atomic.Int64
	upOut  atomic.Int64
	tunnel *tunnel // set once the connection is upgraded
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 || c.status < 200 {
		c.status = code
	}
	if h := c.Header(); h.Get("Content-Type") == "" {
		h["Content-Type"] = nil // pass the target's response as it is: no sniffed type added
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *countingWriter) Flush() { http.NewResponseController(c.ResponseWriter).Flush() }

// Hijack hands the client connection to ReverseProxy after a 101 and counts what crosses it.
func (c *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	t := &tunnel{}
	if !c.s.track(t) {
		return nil, nil, errShuttingDown
	}
	conn, brw, err := http.NewResponseController(c.ResponseWriter).Hijack()
	if err != nil {
		c.s.untrack(t)
		return nil, nil, err
	}
	c.s.mu.Lock()
	t.client = conn
	c.s.mu.Unlock()
	c.tunnel = t
	// ReverseProxy hijacks only to relay an upgraded connection, after writing the 101 itself.
	c.status = http.StatusSwitchingProtocols
	c.s.Metrics.tunnelDelta(1)
	return &countingConn{Conn: conn, in: &c.upIn, out: &c.upOut, done: func() { c.s.Metrics.tunnelDelta(-1) }}, brw, nil
}

var errShuttingDown = errors.New("the proxy is shutting down")

func (c *countingWriter) untrack() {
	if c.tunnel != nil {
		c.s.untrack(c.tunnel)
	}
}

type countingConn struct {
	net.Conn
	in, out *atomic.Int64
	once    sync.Once
	done    func()
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.out.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}
