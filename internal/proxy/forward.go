package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strings"
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

// maxResponseHeadBytes bounds a response head from the target, with its 1xx responses.
const maxResponseHeadBytes = 1 << 20

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
		Proxy:                  nil, // never chain to the proxy of the proxy's own environment
		DialContext:            f.s.dialForTransport,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        upstreamIdle,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  orDefault(f.s.UpstreamTimeout, DefaultUpstreamTimeout),
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
		MaxResponseHeaderBytes: maxResponseHeadBytes,
		TLSClientConfig:        f.s.upstreamTLS(),
		ForceAttemptHTTP2:      true, // HTTP/2 to targets that offer it (a custom dialer turns it off)
		// Frames of up to 256 KiB from HTTP/2 targets instead of 16 KiB: fewer frames per byte
		// (docs/inspection.md has the measurement).
		HTTP2: &http.HTTP2Config{MaxReadFrameSize: 256 << 10},
	}
	rp := &httputil.ReverseProxy{
		Rewrite:        f.s.rewrite,
		ModifyResponse: f.s.modifyResponse,
		Transport:      transport{f.s, t},
		FlushInterval:  flushDelay,
		BufferPool:     bufferPool{},
		ErrorHandler:   f.s.forwardError,
		ErrorLog:       log.New(targetLog{f.s}, "", 0),
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

// bufferPool is the ReverseProxy's pool of copy buffers. A buffer is held by a response while its
// body is copied. Each read from an HTTP/2 target's body gives the flow-control window back, with a
// WINDOW_UPDATE write to the target once 4 KiB are due, so the buffer's size sets how often that
// happens: 128 KiB sends a quarter of the updates of 32 KiB (docs/inspection.md has the measurement).
type bufferPool struct{}

// forwardBufSize is the size of the ReverseProxy's copy buffers.
const forwardBufSize = 128 << 10

var forwardBufs = sync.Pool{New: func() any { b := make([]byte, forwardBufSize); return &b }}

func (bufferPool) Get() []byte  { return *forwardBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { forwardBufs.Put(&b) }

type forwardKey struct{}

// forwardState is what one forwarded request shares between the handler, the ReverseProxy hooks
// and the transport's dial.
type forwardState struct {
	req     *Request
	w       *countingWriter
	body    *requestBody // the outgoing request's body; nil when it has none
	failure *Failure
	conn    atomic.Pointer[decidedConn] // the upstream connection that served the request
	bodyErr error                       // why reading the target's response body failed, if it did

}

func stateOf(ctx context.Context) *forwardState {
	st, _ := ctx.Value(forwardKey{}).(*forwardState)
	return st
}

// rewrite is the ReverseProxy's Rewrite hook. The outgoing request is the proxy's own copy: its
// body is wrapped there, never on the request net/http's server owns (the server must still
// recognise that one, or it reads the body itself when the response begins).
func (s *Server) rewrite(pr *httputil.ProxyRequest) {
	st := stateOf(pr.Out.Context())
	out, req := pr.Out, st.req
	out.URL.User = nil // never forward (or log) credentials from the URL
	out.URL.Scheme = "http"
	if req.Conn != nil {
		out.URL.Scheme = req.Conn.Scheme
	} else if strings.EqualFold(pr.In.URL.Scheme, "https") {
		out.URL.Scheme = "https"
	}
	// The transport dials the decided target, and the request target goes on as the client sent
	// it: ReverseProxy drops query parameters it cannot parse, and URL.Path re-encoded could differ
	// from what was decided and logged.
	out.URL.Host = req.Target.String()
	out.URL.RawQuery = pr.In.URL.RawQuery
	out.URL.Opaque = req.Path
	if strings.HasPrefix(req.Path, "//") {
		out.URL.Opaque = "//" + out.URL.Host + req.Path // origin form would read as an authority
	}
	if req.Conn != nil && out.Host == "" {
		out.Host = req.Target.Host
	}
	out.Header.Add("Via", "1.1 swarm-proxy")
	// The proxy answers a client's "Expect: 100-continue" itself: net/http's server sends 100
	// Continue when the Transport starts reading the body, once the target is connected and has the
	// request head, and a target's early answer reaches the client at once. Passed on, the
	// expectation would let the Transport withhold the body from a target that answers early with
	// Connection: close and reads on, as Go's servers do, which clients such as curl upload to.
	out.Header.Del("Expect")
	if out.Body != nil && out.Body != http.NoBody {
		st.body = &requestBody{r: out.Body, w: st.w.ResponseWriter, rc: http.NewResponseController(st.w.ResponseWriter),
			idle: orDefault(s.IdleTimeout, DefaultIdleTimeout), closed: make(chan struct{})}
		out.Body = st.body
	}
}

// transport is the ReverseProxy's RoundTripper: the request mutator, then the session's
// http.Transport.
type transport struct {
	s *Server
	t *http.Transport
}

func (t transport) RoundTrip(out *http.Request) (*http.Response, error) {
	if t.s.Mutate != nil {
		if f := t.s.Mutate(out, stateOf(out.Context()).req); f != nil {
			return nil, &mutateError{f}
		}
	}
	return t.t.RoundTrip(out)
}

// mutateError is a refusal by Server.Mutate.
type mutateError struct{ f *Failure }

func (e *mutateError) Error() string { return e.f.Reason }

// modifyResponse is the ReverseProxy's ModifyResponse hook. It drops the target's own
// X-Swarm-Proxy-* headers (what a client reads under those names comes from swarm-proxy), adds
// Via, as RFC 9110 asks of a proxy for every message it forwards, and watches the response body.
func (s *Server) modifyResponse(resp *http.Response) error {
	for _, h := range ownHeaders {
		resp.Header.Del(h)
	}
	resp.Header.Add("Via", "1.1 swarm-proxy")
	st := stateOf(resp.Request.Context())
	if s.ModifyResponse != nil {
		if err := s.ModifyResponse(resp, st.req); err != nil {
			return err
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil // the body is the upgraded connection, which ReverseProxy needs writable
	}
	if resp.Body != nil {
		resp.Body = &watchedBody{ReadCloser: resp.Body, st: st}
	}
	return nil
}

// flushDelay is the longest the proxy holds bytes of a response, its head or a part of its body,
// waiting to send them with more in one write (ReverseProxy's FlushInterval): a response reaches
// the client as the target sends it, whatever its framing.
const flushDelay = 5 * time.Millisecond

// watchedBody is the target's response body as ReverseProxy reads it: it records the first error
// other than EOF, for the log.
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
	ahead    *readAhead // reads in large reads; nil but for the upstream of an inspected TLS tunnel
}

func (c *decidedConn) Read(p []byte) (int, error) {
	if c.ahead != nil {
		return c.ahead.read(c.Conn, p)
	}
	return c.Conn.Read(p)
}

// dialForTransport is the Transport's DialContext: it dials the request's decided target through
// the pipeline's Dialer, and nothing else.
func (s *Server) dialForTransport(ctx context.Context, network, addr string) (net.Conn, error) {
	st := stateOf(ctx)
	if st == nil || st.req.dial == nil {
		return nil, errors.New("forward: dial without a decided request")
	}
	if addr != st.req.Target.String() {
		return nil, fmt.Errorf("forward: dial of %s for a request decided for %s", addr, st.req.Target)
	}
	// A copy: the Transport dials on a goroutine of its own, which may outlive the request (the
	// connection then serves another), and the dialer writes its address-stage decision in it.
	dreq := *st.req.dial
	c, err := s.Dialer.Dial(ctx, &dreq)
	if err != nil {
		return nil, err
	}
	dc := &decidedConn{Conn: c, decision: dreq.Decision}
	if st.req.Conn != nil && st.req.Conn.TLS != nil {
		dc.ahead = &readAhead{}
	}
	return dc, nil
}

// forward relays a plain-HTTP request (and, after a 101, the upgraded connection).
func (s *Server) forward(w http.ResponseWriter, r *http.Request, req *Request) {
	pol := s.Policy.Load()
	if f := s.decideForward(r, req, pol); f != nil {
		s.fail(w, r, req, f)
		return
	}
	if r.ContentLength != 0 {
		// The target may answer before it has read the whole body (an early 401 or 413, a
		// streaming handler): the body keeps flowing to it while the response comes back.
		http.NewResponseController(w).EnableFullDuplex()
	}
	cw := &countingWriter{ResponseWriter: w, s: s, req: req}
	if req.Conn != nil && r.ProtoMajor == 1 {
		// HTTP/1 writes to the client's TLS connection while Write runs (HTTP/2 on the
		// connection's own goroutine, which a gather must not hold up).
		cw.batch = req.Conn.batch
	}
	defer cw.untrack() // after the record is written, so Shutdown waits for it
	st := &forwardState{req: req, w: cw}
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
	fr := r.WithContext(ctx)
	if fr.Body != nil && fr.Body != http.NoBody {
		// ReverseProxy closes the body it was given when it returns; the server's own body stays
		// open for lingerDrain, and the server closes it after the handler.
		fr.Body = io.NopCloser(r.Body)
	}
	aborted := s.serveForward(cw, fr, s.forwarders.get(req.Session, pol))
	s.finish(req, s.forwardRecord(r, st, aborted))
	if aborted {
		// Abort the client connection as net/http does for this panic: ending the response normally
		// would make a truncated body look complete.
		panic(http.ErrAbortHandler)
	}
	lingerDrain(r, st.body)
}

// lingerTime bounds how long the proxy reads and discards the rest of an upload that the target
// answered without reading (nginx's lingering close).
const lingerTime = 5 * time.Second

// lingerDrain reads and discards, for up to lingerTime, what is left of a request body that the
// client had begun to send when the target answered without reading all of it (an early 401 or
// 413). Closing a socket with unread data in it sends a reset, and a reset makes the client's
// kernel drop the answer the client had not read yet: the client would see "connection reset"
// instead of the 413. It waits until the Transport is done with the body, so reads never overlap.
func lingerDrain(r *http.Request, b *requestBody) {
	if b == nil {
		return
	}
	t := time.NewTimer(lingerTime)
	defer t.Stop()
	select {
	case <-b.closed:
	case <-t.C:
		return
	}
	if !b.started.Load() || b.eof.Load() {
		return // the client was never asked for the body (Expect), or it all went to the target
	}
	rc := http.NewResponseController(b.w)
	rc.SetReadDeadline(time.Now().Add(lingerTime))
	if _, err := io.Copy(io.Discard, r.Body); err == nil {
		rc.SetReadDeadline(time.Time{}) // the connection may serve the next request
	}
}

// decideForward decides a request to forward: its target under pol, then the per-request rules.
func (s *Server) decideForward(r *http.Request, req *Request, pol *policy.Policy) *Failure {
	if d := s.decide(req, pol); !d.Allow {
		return FailureOf(dial.Denied(req.Target, d))
	}
	if f := requestFailure(pol, req); f != nil {
		return f
	}
	if s.CheckRequest != nil {
		return s.CheckRequest(r, req)
	}
	return nil
}

// forwardRecord is the access record of a forwarded request: its outcome, bytes, the decision
// under which its upstream connection was dialed, and who ended it when it was aborted.
func (s *Server) forwardRecord(r *http.Request, st *forwardState, aborted bool) *accesslog.Record {
	cw := st.w
	rec := s.record(st.req)
	rec.Status = cw.status
	if rec.Status == 0 {
		rec.Status = http.StatusOK
	}
	rec.BytesOut = cw.upOut.Load()
	if st.body != nil {
		rec.BytesOut += st.body.n.Load()
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
	switch {
	case cw.tunnel != nil && cw.tunnel.cred.wasRevoked():
		rec.Error, rec.Reason = accesslog.ErrorTicketRevoked, "the proxy credentials that opened the upgraded connection were revoked while it was open (--revoked)"
	case !aborted:
	case cw.err == nil && r.Context().Err() == nil && st.bodyErr != nil:
		rec.Error, rec.Reason = accesslog.ErrorUpstream, "the response body from the target broke off: "+s.redact(st.bodyErr.Error())
	default:
		rec.Error, rec.Reason = accesslog.ErrorClientClosed, "the client went away before the response was complete"
	}
	return rec
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
	st := stateOf(r.Context())
	if st == nil {
		return
	}
	st.failure = s.forwardFailure(r, err)
	st.failure.Reason = s.redact(st.failure.Reason)
	if st.w.status != 0 {
		return // the response had begun; the connection is closed by the server
	}
	s.writeFailure(w, r, st.req, st.failure)
}

// targetLog is the ReverseProxy's error log: debug lines, with Server.Redact applied, since an
// error reading a target's body can quote what the target sent.
type targetLog struct{ s *Server }

func (l targetLog) Write(p []byte) (int, error) {
	l.s.Logger.Debug(l.s.redact(strings.TrimSuffix(string(p), "\n")))
	return len(p), nil
}

// redact applies Server.Redact to text from a target.
func (s *Server) redact(text string) string {
	if s.Redact == nil {
		return text
	}
	return s.Redact(text)
}

func (s *Server) forwardFailure(r *http.Request, err error) *Failure {
	var de *dial.Error
	var me *mutateError
	switch {
	case r.Context().Err() != nil:
		return &Failure{Status: 499, Kind: accesslog.ErrorClientClosed, Reason: "the client closed the request before the response was complete"}
	case errors.As(err, &de):
		return FailureOf(de)
	case errors.As(err, &me):
		return me.f
	case isTLSError(err):
		return &Failure{Status: http.StatusBadGateway, Kind: accesslog.ErrorUpstreamTLS,
			Reason: "the target's TLS could not be verified, so nothing was sent to it: " + dial.RootCause(err).Error(),
			Fix:    "if the target is meant to be trusted, give its CA to the proxy with --upstream-ca"}
	case dial.IsTimeout(err):
		return &Failure{Status: http.StatusGatewayTimeout, Kind: accesslog.ErrorTimeout,
			Reason: fmt.Sprintf("the target did not send response headers within %s", orDefault(s.UpstreamTimeout, DefaultUpstreamTimeout))}
	default:
		return &Failure{Status: http.StatusBadGateway, Kind: accesslog.ErrorUpstream, Reason: "upstream error: " + dial.RootCause(err).Error()}
	}
}

// isTLSError reports whether err is the failure of a TLS handshake with the target: a certificate
// that does not verify, an alert, or a target that does not speak TLS.
func isTLSError(err error) bool {
	var cve *tls.CertificateVerificationError
	var rhe tls.RecordHeaderError
	var ae tls.AlertError
	var uae x509.UnknownAuthorityError
	var he x509.HostnameError
	var cie x509.CertificateInvalidError
	return errors.As(err, &cve) || errors.As(err, &rhe) || errors.As(err, &ae) || errors.As(err, &uae) || errors.As(err, &he) || errors.As(err, &cie)
}

// requestBody is the outgoing request's body: it counts the client's body and times the client
// out when the body stops arriving for idle (each read extends the connection's read deadline).
type requestBody struct {
	r         io.ReadCloser
	n         atomic.Int64
	w         http.ResponseWriter
	rc        *http.ResponseController
	idle      time.Duration
	started   atomic.Bool   // the Transport asked for the body (and so the client was told to send it)
	eof       atomic.Bool   // the whole body went to the target
	closed    chan struct{} // closed by the Transport's Close: it reads no more
	closeOnce sync.Once
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.started.Store(true)
	b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	if err == io.EOF {
		b.eof.Store(true)
		// Cleared at once: the server's own read of the connection starts at the end of the body.
		// After a failed read the deadline stays, so that the server's attempt to drain the rest
		// ends at once and the connection is closed.
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// Close tells lingerDrain that the Transport is done with the body. The body underneath is the
// server's, which the server closes after the handler.
func (b *requestBody) Close() error {
	b.closeOnce.Do(func() { close(b.closed) })
	return nil
}

// countingWriter records the status and counts response bytes, including those of an upgraded
// (101) connection, which it tracks as a tunnel so that Shutdown waits for it.
type countingWriter struct {
	http.ResponseWriter
	s      *Server
	status int
	err    error // the first failed write to the client
	n      atomic.Int64
	upIn   atomic.Int64
	upOut  atomic.Int64
	req    *Request
	tunnel *tunnel     // set once the connection is upgraded
	batch  *tunnelConn // gathers the TLS records of each write to an inspected HTTP/1 client; nil otherwise
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
	if c.batch != nil {
		c.batch.gather()
	}
	n, err := c.ResponseWriter.Write(p)
	if c.batch != nil {
		if serr := c.batch.send(); err == nil {
			err = serr
		}
	}
	c.n.Add(int64(n))
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *countingWriter) Flush() {
	if c.batch != nil {
		c.batch.gather()
	}
	err := http.NewResponseController(c.ResponseWriter).Flush()
	if c.batch != nil {
		if serr := c.batch.send(); err == nil {
			err = serr
		}
	}
	if err != nil && c.err == nil {
		c.err = err
	}
}

// Hijack hands the client connection to ReverseProxy after a 101 and counts what crosses it.
func (c *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	t := c.s.track()
	if t == nil {
		return nil, nil, errShuttingDown
	}
	conn, brw, err := http.NewResponseController(c.ResponseWriter).Hijack()
	if err != nil {
		t.done()
		return nil, nil, err
	}
	t.set(conn, nil)
	t.cred = c.s.creds.add(c.req, t.abort)
	c.tunnel = t
	// ReverseProxy hijacks only to relay an upgraded connection, after writing the 101 itself.
	c.status = http.StatusSwitchingProtocols
	c.s.Metrics.tunnelDelta(1)
	return &countingConn{Conn: conn, in: &c.upIn, out: &c.upOut, done: func() { c.s.Metrics.tunnelDelta(-1) }}, brw, nil
}

var errShuttingDown = errors.New("the proxy is shutting down")

func (c *countingWriter) untrack() {
	if c.tunnel != nil {
		c.s.creds.remove(c.tunnel.cred)
		c.tunnel.done()
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
