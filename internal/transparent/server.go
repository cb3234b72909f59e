package transparent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

// Defaults of Server's timeouts.
const (
	// DefaultFirstByteWait is how long a captured client may stay silent before it is taken for a
	// server-first protocol (SMTP, MySQL) and decided on its destination address alone.
	DefaultFirstByteWait = 2 * time.Second
	// DefaultPeekTimeout bounds the reading of a ClientHello or request head once it has begun.
	DefaultPeekTimeout = proxy.DefaultReadHeaderTimeout
)

// Via is the ConnInfo.Via of captured connections.
const Via = "transparent"

// Server is the transparent listener (--transparent-listen): it takes the connections the
// firewall redirected to it, reads where each was going (OriginalDst) and the name it claims
// (Peek), checks that the name resolves to that destination (Verifier), and hands it to the
// proxy's pipeline: plain HTTP to the proxy's one HTTP server, where each request is decided and
// logged as an explicit one; TLS whose rule inspects to the same server through HTTPS inspection;
// other TLS and other protocols as a tunnel decided on the name and port (or on the address alone
// when there is no name). Every connection goes to its original destination
// and nowhere else, and every one is logged with "transparent": true.
type Server struct {
	// Proxy is the pipeline. Required.
	Proxy *proxy.Server
	// Verifier checks names against destinations. Required.
	Verifier *Verifier
	// Logger receives operational messages; nil means slog.Default().
	Logger *slog.Logger
	// FirstByteWait and PeekTimeout: zero means DefaultFirstByteWait and DefaultPeekTimeout.
	FirstByteWait time.Duration
	PeekTimeout   time.Duration
	// OriginalDst reads a connection's destination; nil means the package's OriginalDst.
	OriginalDst func(net.Conn) (netip.AddrPort, error)

	mu      sync.Mutex
	lns     map[net.Listener]struct{}
	pending map[net.Conn]struct{} // accepted, not yet handed to the proxy
	closing bool
	wg      sync.WaitGroup
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("transparent: server closed")

// Serve accepts redirected connections on ln until Shutdown, then returns ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.lns == nil {
		s.lns, s.pending = map[net.Listener]struct{}{}, map[net.Conn]struct{}{}
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("transparent: accept: %w", err)
			}
			// Out of file descriptors and the like: wait a little, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger().Warn("transparent: accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.pending[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// handedOver forgets c: the proxy has it now, and its own Shutdown waits for it.
func (s *Server) handedOver(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, c)
}

// Shutdown stops accepting, closes the connections still being looked at, and waits for their
// handlers until ctx ends. Connections already handed to the proxy are the proxy's Shutdown's.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.pending {
		c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// handle takes one redirected connection through the pipeline.
func (s *Server) handle(c net.Conn) {
	defer s.handedOver(c)
	client, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	req := s.Proxy.NewRequest(client, "CONNECT")
	info := &proxy.ConnInfo{Client: client, Via: Via}
	req.Conn = info
	fail := func(f *proxy.Failure) {
		s.Proxy.LogFailure(req, f)
		c.Close()
	}

	origDst := s.OriginalDst
	if origDst == nil {
		origDst = OriginalDst
	}
	dst, err := origDst(c)
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	if err == nil && dst.Addr().Unmap() == local.Addr().Unmap() && dst.Port() == local.Port() {
		err = errors.New("its destination is this listener itself")
	}
	if err != nil {
		req.Target = policy.Target{Host: local.Addr().Unmap().String(), Port: int(local.Port())}
		fail(&proxy.Failure{Status: http.StatusBadRequest, Kind: accesslog.ErrorNotRedirected, Denied: true,
			Reason: fmt.Sprintf("not a connection redirected by the firewall: %v", err),
			Fix:    "clients use the explicit proxy (--listen); the transparent listener takes only what `swarm-proxy firewall --transparent` redirects"})
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	info.OriginalDst = dst
	req.Target = policy.Target{Host: dst.Addr().String(), Port: int(dst.Port())}
	if !s.Proxy.ClientAllowed(client.Addr()) {
		fail(&proxy.Failure{Status: http.StatusForbidden, Kind: accesslog.ErrorClientNotAllowed, Denied: true,
			Reason: fmt.Sprintf("client %s is not allowed to use this proxy", client.Addr())})
		return
	}

	hello, peeked, err := Peek(c, orDefault(s.FirstByteWait, DefaultFirstByteWait), orDefault(s.PeekTimeout, DefaultPeekTimeout))
	if err != nil {
		fail(&proxy.Failure{Status: 499, Kind: accesslog.ErrorClientClosed, Reason: "the client left before it sent anything"})
		return
	}
	if hello.Name != "" {
		req.Target.Host = hello.Name
	}
	info.Target = req.Target
	// The name is decided first: a refused name costs no lookup, and is refused as such.
	d := s.Proxy.Decide(req)
	if !d.Allow {
		s.refuse(c, hello, peeked, req, proxy.FailureOf(dial.Denied(req.Target, d)))
		return
	}
	if hello.Name != "" {
		if err := s.Verifier.Check(context.Background(), client.Addr(), hello.Name, dst.Addr()); err != nil {
			s.refuse(c, hello, peeked, req, &proxy.Failure{Status: http.StatusForbidden, Kind: accesslog.ErrorSNIMismatch, Denied: true,
				Reason: err.Error(), Fix: "connect to an address that " + hello.Name + " resolves to (through the DNS guard or the proxy's resolver)"})
			return
		}
	}
	if hello.Proto == ProtoHTTP && hello.Name != "" {
		// Plain HTTP goes to the one HTTP server: every request on the connection is decided on
		// its own (and one naming another host is refused), forwarded and logged.
		info.Scheme = "http"
		if err := s.Proxy.ServeConn(Replay(c, peeked), *info); err != nil {
			s.logger().Debug("transparent: hand-over refused", "client", client, "err", err)
		}
		return
	}
	if hello.Proto == ProtoTLS && d.Rule.Inspects() {
		// The rule decides each HTTPS request: the client's TLS is terminated with a leaf for
		// its name and the requests go to the one HTTP server, still to the original destination.
		s.handedOver(c)
		s.Proxy.ServeInspected(c, bufio.NewReader(Replay(c, peeked)), req)
		return
	}
	// TLS and anything else: a tunnel to the original destination, decided on the name and port
	// (or on the address alone).
	up, err := s.Proxy.Dial(context.Background(), req)
	if err != nil {
		s.refuse(c, hello, peeked, req, proxy.FailureOf(err))
		return
	}
	if len(peeked) > 0 {
		if _, err := up.Write(peeked); err != nil {
			up.Close()
			s.refuse(c, hello, peeked, req, proxy.FailureOf(err))
			return
		}
		n := int64(len(peeked)) // not peeked itself: the tunnel would keep the buffer
		req.OnRecord(func(rec *accesslog.Record) { rec.BytesOut += n })
	}
	s.handedOver(c)
	// On a goroutine of its own: this one's stack grew while parsing the ClientHello or request
	// head, and an idle tunnel would keep it.
	go s.Proxy.Relay(req, http.StatusOK, c, up)
}

// refuse answers a refused connection in its own protocol and logs it: a TLS client gets a
// handshake alert (sent by crypto/tls), an HTTP client the proxy's 403 or 502 page for each
// request, anything else a closed connection.
func (s *Server) refuse(c net.Conn, hello Hello, peeked []byte, req *proxy.Request, f *proxy.Failure) {
	switch hello.Proto {
	case ProtoHTTP:
		info := *req.Conn
		info.Scheme, info.Refusal = "http", f
		if err := s.Proxy.ServeConn(Replay(c, peeked), info); err != nil {
			c.Close()
		}
		return
	case ProtoTLS:
		c.SetDeadline(time.Now().Add(orDefault(s.PeekTimeout, DefaultPeekTimeout)))
		refused := errors.New(f.Reason)
		tls.Server(Replay(c, peeked), &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return nil, refused
		}}).Handshake()
	}
	s.Proxy.LogFailure(req, f)
	c.Close()
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
