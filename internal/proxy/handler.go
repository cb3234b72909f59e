package proxy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
)

// ServeHTTP is the one HTTP handler: it identifies the client, parses the target and hands the
// request to the CONNECT or the forwarding path. Requests on connections handed over by ServeConn
// come here too.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	handling(r)
	req := s.NewRequest(netip.AddrPort{}, r.Method)
	req.Conn = connInfoOf(r)
	if req.Conn != nil {
		req.Client, req.Session = req.Conn.Client, req.Conn.Session
	} else {
		req.Client, _ = netip.ParseAddrPort(r.RemoteAddr)
	}
	if f := s.admit(r, req); f != nil {
		s.fail(w, r, req, f)
		return
	}
	if r.Method == http.MethodConnect {
		s.serveConnect(w, r, req)
		return
	}
	s.forward(w, r, req)
}

// admit runs the checks every request passes before its target is considered: client address,
// credentials, and a well-formed proxy request. The target is parsed first, so that even a refused
// client's log record and error name what it asked for.
func (s *Server) admit(r *http.Request, req *Request) *Failure {
	malformed := parseTarget(r, req)
	if !s.ClientAllowed(req.Client.Addr()) {
		return ClientNotAllowed(req.Client.Addr().String())
	}
	if req.Conn != nil && req.Conn.Refusal != nil {
		return req.Conn.Refusal
	}
	if s.Auth != nil && req.Conn == nil {
		user, pass, err := proxyCredentials(r.Header.Get("Proxy-Authorization"))
		if err == nil {
			req.Session, req.Credential, err = s.Auth.Authenticate(user, pass)
		}
		if err != nil {
			return AuthRequired(err, "send the session ticket as proxy credentials (user SESSION_ID, password TOKEN): http://SESSION_ID:TOKEN@broker:port in HTTP_PROXY, curl --proxy-user SESSION_ID:TOKEN, or swarm-proxy connect --ticket FILE")
		}
	}
	return malformed
}

// parseTarget sets req's target (and path) from a proxy request, or says why it is malformed.
func parseTarget(r *http.Request, req *Request) *Failure {
	if req.Conn != nil {
		return parseHandedTarget(r, req)
	}
	var err error
	if r.Method == http.MethodConnect {
		req.Target, err = policy.ParseTarget(r.Host, 0)
		if err != nil {
			return BadRequest(fmt.Sprintf("CONNECT needs host:port: %v", err))
		}
		return nil
	}
	if !r.URL.IsAbs() || r.URL.Host == "" {
		return BadRequest("not a proxy request: the request line must carry an absolute URL (GET http://host/path); point HTTP_PROXY at this address instead of requesting it directly")
	}
	port, ok := defaultPorts[strings.ToLower(r.URL.Scheme)]
	if !ok {
		return BadRequest(fmt.Sprintf("scheme %q is not supported: use http or https", r.URL.Scheme))
	}
	req.Target, err = policy.ParseTarget(r.URL.Host, port)
	if err != nil {
		return BadRequest(err.Error())
	}
	req.Path = rawPath(r.RequestURI)
	return nil
}

// parseHandedTarget sets the target of a request on a connection handed over by ServeConn: the
// connection's, which the request's Host must name.
func parseHandedTarget(r *http.Request, req *Request) *Failure {
	info := req.Conn
	req.Target = info.Target
	if r.Method == http.MethodConnect {
		return BadRequest("CONNECT is not accepted inside a " + info.Via + " connection")
	}
	host, err := policy.ParseTarget(r.Host, info.Target.Port)
	if err != nil || host.Host != info.Target.Host || host.Port != info.Target.Port {
		return BadRequest(fmt.Sprintf("the request's Host %q is not %s, the target of the connection", r.Host, info.Target))
	}
	if r.URL.IsAbs() && r.URL.Host != r.Host {
		return BadRequest(fmt.Sprintf("the request names %q, not %s, the target of the connection", r.URL.Host, info.Target))
	}
	req.Path = rawPath(r.RequestURI)
	return nil
}

// rawPath is the path of a request target (absolute or origin form) as the client sent it: not
// decoded, not re-encoded, without the query.
func rawPath(target string) string {
	if _, rest, ok := strings.Cut(target, "://"); ok {
		i := strings.IndexAny(rest, "/?")
		if i < 0 || rest[i] == '?' {
			return "/"
		}
		target = rest[i:]
	}
	target, _, _ = strings.Cut(target, "?")
	return target
}

var defaultPorts = map[string]int{"http": 80, "https": 443}

// errCredentials reports unusable Proxy-Authorization headers.
type errCredentials string

func (e errCredentials) Error() string { return string(e) }

func proxyCredentials(h string) (user, pass string, err error) {
	if h == "" {
		return "", "", ErrNoCredentials
	}
	scheme, val, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", "", errCredentials("proxy credentials must use the Basic scheme")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(val))
	if err != nil {
		return "", "", errCredentials("proxy credentials are not valid base64")
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", errCredentials("proxy credentials must be session_id:token")
	}
	return user, pass, nil
}

// fail answers the client with f and logs it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, req *Request, f *Failure) {
	s.writeFailure(w, r, req, f)
	s.LogFailure(req, f)
}

// serveConnect dials the target and, only once it is connected, answers 200 and relays raw bytes.
func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request, req *Request) {
	// Track the tunnel before the connection is hijacked: from then on http.Server no longer waits
	// for it, and Shutdown must.
	t := s.track()
	if t == nil {
		s.fail(w, r, req, ShuttingDown())
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			t.done()
		}
	}()
	d := s.Decide(req)
	if d.Allow && d.Rule.Inspects() {
		s.serveInspected(w, r, req)
		return
	}
	if !d.Allow {
		s.fail(w, r, req, FailureOf(dial.Denied(req.Target, d)))
		return
	}
	upstream, err := s.Dialer.Dial(r.Context(), req.dial)
	if err != nil {
		s.fail(w, r, req, FailureOf(err))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		upstream.Close()
		s.fail(w, r, req, &Failure{Status: http.StatusInternalServerError, Kind: accesslog.ErrorInternal, Reason: "cannot take over the connection: " + err.Error()})
		return
	}
	conn = unwrapConn(conn)
	rec := s.record(req)
	rec.Status = http.StatusOK
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		relay.Abort(conn)
		upstream.Close()
		rec.Error, rec.Reason = accesslog.ErrorClientClosed, "the client went away before the tunnel opened"
		s.finish(req, rec)
		return
	}
	// Bytes the client sent right after the CONNECT (say, a TLS ClientHello) may sit in the
	// server's read buffer: pass them on first, so the relay can use the raw connections.
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		m, err := upstream.Write(early)
		rec.BytesOut += int64(m)
		if err != nil {
			relay.Abort(conn)
			upstream.Close()
			rec.Error, rec.Reason = accesslog.ErrorTunnelBroken, "the tunnel broke: "+dial.RootCause(err).Error()
			s.finish(req, rec)
			return
		}
	}
	// The relay runs on a fresh goroutine and this handler returns, so that an open tunnel does not
	// keep the HTTP server's connection goroutine, its deep stack and its buffers alive.
	handedOff = true
	go func() {
		defer t.done()
		s.relay(t, req, rec, conn, upstream)
	}()
}

// Relay runs an established tunnel between client and upstream until both directions end, then
// writes its access-log record with status. Front ends call it after answering their client.
func (s *Server) Relay(req *Request, status int, client, upstream net.Conn) {
	rec := s.record(req)
	rec.Status = status
	t := s.track()
	if t == nil {
		relay.Abort(client)
		upstream.Close()
		rec.Error, rec.Reason = accesslog.ErrorShuttingDown, "the proxy is shutting down"
		s.finish(req, rec)
		return
	}
	defer t.done()
	s.relay(t, req, rec, client, upstream)
}

type providerConn interface{ Provider() string }

func (s *Server) relay(t *tunnel, req *Request, rec *accesslog.Record, client, upstream net.Conn) {
	rec.Upstream = upstreamAddr(upstream)
	if pc, ok := upstream.(providerConn); ok {
		rec.Provider = pc.Provider()
	}
	t.set(client, upstream)
	t.cred = s.creds.add(req, t.abort)
	defer s.creds.remove(t.cred)
	s.Metrics.tunnelDelta(1)
	defer s.Metrics.tunnelDelta(-1)
	res := relay.Pipe(client, upstream, s.TunnelIdleTimeout)
	rec.BytesOut += res.AToB
	rec.BytesIn += res.BToA
	if res.Err != nil {
		rec.Error, rec.Reason = s.tunnelFailure(t, res)
	}
	s.finish(req, rec)
}

// tunnelFailure names why an established tunnel ended in a failure: a kind for the record's error
// field and the words for its reason. The client is the relay's side a: a reset from it (curl
// resets a finished HTTP/2 connection) is the client's doing, not a broken tunnel.
func (s *Server) tunnelFailure(t *tunnel, res relay.Result) (kind, reason string) {
	switch {
	case t.cred.wasRevoked():
		return accesslog.ErrorTicketRevoked, "the proxy credentials that opened the tunnel were revoked while it was open (--revoked)"
	case t.aborted():
		return accesslog.ErrorShuttingDown, "the proxy shut down while the tunnel was open (--shutdown-timeout ran out): " + dial.RootCause(res.Err).Error()
	case errors.Is(res.Err, relay.ErrIdle):
		return accesslog.ErrorIdleTimeout, fmt.Sprintf("no byte moved for %s (--tunnel-idle-timeout)", s.TunnelIdleTimeout)
	case res.ErrSide == relay.SideA:
		return accesslog.ErrorClientClosed, "the client ended the tunnel with an error: " + dial.RootCause(res.Err).Error()
	}
	return accesslog.ErrorTunnelBroken, "the tunnel broke on the target's side: " + res.Err.Error()
}

func upstreamAddr(c net.Conn) string {
	if _, ok := c.(providerConn); ok {
		return "" // the provider dials; its address is in the provider field
	}
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// tunnel is an open relay or upgraded connection, tracked so Shutdown can wait for it and abort it
// when time runs out. Its connections are set once they exist; an upgraded connection has only a
// client side here (ReverseProxy holds the upstream and ends it with it).
type tunnel struct {
	s                *Server
	item             *serve.Item
	mu               sync.Mutex
	client, upstream net.Conn
	cred             *credConn // set by relay when the tunnel was opened with proxy credentials
}

// track starts tracking a tunnel; it returns nil once shutdown has begun.
func (s *Server) track() *tunnel {
	t := &tunnel{s: s}
	if t.item = s.inflight.Add(t.abort); t.item == nil {
		return nil
	}
	return t
}

func (t *tunnel) set(client, upstream net.Conn) {
	t.mu.Lock()
	t.client, t.upstream = client, upstream
	t.mu.Unlock()
}

func (t *tunnel) abort() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range []net.Conn{t.client, t.upstream} {
		if c != nil {
			relay.Abort(c)
		}
	}
}

// aborted reports whether Shutdown aborted the tunnel when its time ran out.
func (t *tunnel) aborted() bool { return t.s.inflight.Aborted(t.item) }

func (t *tunnel) done() { t.s.inflight.Done(t.item) }
