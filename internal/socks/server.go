// Package socks is the SOCKS5 front end of swarm-proxy (RFC 1928 CONNECT with IPv4, IPv6 and domain
// name addresses; RFC 1929 username/password login). It only speaks the protocol: every connection
// goes through the pipeline of a proxy.Server (client check, authentication, policy, dialer, relay,
// access log) exactly like an HTTP CONNECT, and is logged with method "SOCKS5".
package socks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
)

// Method is the access-log method of SOCKS5 tunnels.
const Method = "SOCKS5"

// DefaultHandshakeTimeout bounds the handshake (greeting, login, request) when
// Server.HandshakeTimeout is zero; a client slower than that is disconnected.
const DefaultHandshakeTimeout = 10 * time.Second

// Server accepts SOCKS5 clients and hands their requests to a proxy.Server. Set its fields before
// calling Serve; they must not change afterwards.
type Server struct {
	// Proxy runs the pipeline. Required. When Proxy.Auth is set, clients must log in with
	// username/password (RFC 1929) carrying session_id and token; otherwise no login is needed.
	Proxy *proxy.Server
	// Logger receives operational messages; nil means slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout bounds the handshake and the writing of the reply; zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	initOnce  sync.Once
	ctx       context.Context // dials; cancelled when Shutdown gives up waiting
	cancel    context.CancelFunc
	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]phase
	wg        sync.WaitGroup
}

// phase is where a client connection is in its life.
type phase int

const (
	phaseHandshake phase = iota // reading the greeting, login and request
	phaseActive                 // dialing or relaying
)

func (s *Server) init() {
	s.initOnce.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[net.Conn]phase{}
	})
}

// Serve accepts SOCKS5 clients on ln until Shutdown, after which it returns nil.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("socks accept: %w", err)
			}
			// Out of file descriptors and the like: wait a little instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.Logger.Warn("socks accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			continue
		}
		go s.serveConn(c)
	}
}

// Shutdown stops accepting and closes connections still in their handshake. It then waits, until
// ctx ends, for the others (dialing or relaying) to finish, and aborts what is left. It returns ctx's
// error when it had to abort.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c, p := range s.conns {
		if p == phaseHandshake {
			c.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		relay.Abort(c)
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = phaseHandshake
	s.wg.Add(1)
	return true
}

// activate marks c as past its handshake; it refuses once shutdown has begun.
func (s *Server) activate(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = phaseActive
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// serveConn runs one client: handshake, then the proxy pipeline. Once the proxy has taken the
// connection (Relay), it owns closing it.
func (s *Server) serveConn(c net.Conn) {
	defer s.untrack(c)
	client := addrPortOf(c.RemoteAddr())
	req := s.Proxy.NewRequest(client, Method)
	up, ok := s.handshake(c, req)
	if !ok {
		c.Close()
		return
	}
	s.Proxy.Relay(req, http.StatusOK, c, up)
}

// handshake negotiates with the client and dials its target. It returns the upstream connection
// and true once the client has been told the tunnel is open; otherwise it has answered (or given
// up on) the client, logged why, and the caller closes the connection.
func (s *Server) handshake(c net.Conn, req *proxy.Request) (net.Conn, bool) {
	timeout := s.handshakeTimeout()
	c.SetDeadline(time.Now().Add(timeout))
	allowed := s.Proxy.ClientAllowed(req.Client.Addr())
	auth := s.Proxy.Auth != nil && allowed

	methods, err := readGreeting(c)
	if err != nil {
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return nil, false
	}
	method := chooseMethod(methods, auth)
	if _, err := c.Write([]byte{version5, method}); err != nil {
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return nil, false
	}
	if method == methodNoAcceptable {
		if auth {
			s.fail(req, authFailure(proxy.ErrNoCredentials))
		} else {
			s.Logger.Debug("socks handshake failed: client offers neither no-auth nor username/password", "client", req.Client, "methods", methods)
		}
		return nil, false
	}
	if method == methodUserPass {
		user, pass, err := readUserPass(c)
		if err != nil {
			s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
			return nil, false
		}
		// Without an authenticator (or for a client about to be refused) any login is accepted
		// and ignored, so ALL_PROXY URLs with credentials also work against a plain proxy.
		if auth {
			req.Session, err = s.Proxy.Auth.Authenticate(user, pass)
			if err != nil {
				c.Write([]byte{userPassVersion, userPassFail})
				s.fail(req, authFailure(err))
				return nil, false
			}
		}
		if _, err := c.Write([]byte{userPassVersion, userPassOK}); err != nil {
			s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
			return nil, false
		}
	}

	r, err := readRequest(c)
	switch {
	case errors.Is(err, ErrAddrType):
		s.reply(c, req, ReplyAddrNotSupported, netip.AddrPort{})
		s.fail(req, badRequest("address type not supported: use IPv4, IPv6 or a domain name"))
		return nil, false
	case err != nil:
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return nil, false
	}
	t, terr := r.target()
	req.Target = t
	switch {
	case !allowed:
		s.reply(c, req, ReplyNotAllowed, netip.AddrPort{})
		s.fail(req, &proxy.Failure{Status: http.StatusForbidden, Kind: "client_not_allowed", Denied: true,
			Reason: fmt.Sprintf("client %s is not in --allow-clients", req.Client.Addr()),
			Fix:    "start the proxy with --allow-clients including this client's address"})
		return nil, false
	case r.cmd != cmdConnect:
		s.reply(c, req, ReplyCommandNotSupported, netip.AddrPort{})
		s.fail(req, &proxy.Failure{Status: http.StatusBadRequest, Kind: "command_not_supported",
			Reason: fmt.Sprintf("SOCKS5 command %s is not supported: only CONNECT is", commandName(r.cmd))})
		return nil, false
	case terr != nil:
		s.reply(c, req, ReplyGeneralFailure, netip.AddrPort{})
		s.fail(req, badRequest(terr.Error()))
		return nil, false
	}

	if !s.activate(c) {
		s.reply(c, req, ReplyGeneralFailure, netip.AddrPort{})
		s.fail(req, &proxy.Failure{Status: http.StatusServiceUnavailable, Kind: "shutting_down", Reason: "the proxy is shutting down"})
		return nil, false
	}
	c.SetDeadline(time.Time{})
	up, err := s.Proxy.Dial(s.ctx, req)
	if err != nil {
		f := proxy.FailureOf(err)
		c.SetWriteDeadline(time.Now().Add(timeout))
		s.reply(c, req, replyFor(f, err), netip.AddrPort{})
		s.fail(req, f)
		return nil, false
	}
	c.SetWriteDeadline(time.Now().Add(timeout))
	if err := s.reply(c, req, ReplySucceeded, boundAddr(up)); err != nil {
		up.Close()
		s.Proxy.LogFailure(req, &proxy.Failure{Status: 499, Kind: "client_closed", Reason: "the client went away before the tunnel opened"})
		return nil, false
	}
	c.SetWriteDeadline(time.Time{})
	return up, true
}

func (s *Server) reply(c net.Conn, req *proxy.Request, code Reply, bound netip.AddrPort) error {
	_, err := c.Write(appendReply(nil, code, bound))
	if err != nil {
		s.Logger.Debug("socks reply failed", "id", req.ID, "client", req.Client, "err", err)
	}
	return err
}

// fail logs a refused or failed request: the access-log record, and an operational line at the
// level the HTTP front end uses for the same outcome.
func (s *Server) fail(req *proxy.Request, f *proxy.Failure) {
	s.Proxy.LogFailure(req, f)
	level := s.Logger.Debug
	if !f.Denied && f.Status != http.StatusBadRequest {
		level = s.Logger.Info
	}
	level("socks request failed", "id", req.ID, "client", req.Client.Addr(), "target", req.Target, "status", f.Status, "kind", f.Kind, "reason", f.Reason)
}

// chooseMethod picks the authentication method: username/password when login is required, else
// no authentication, or username/password (ignored) for clients that offer only that.
func chooseMethod(offered []byte, auth bool) byte {
	has := func(m byte) bool {
		for _, o := range offered {
			if o == m {
				return true
			}
		}
		return false
	}
	switch {
	case auth && has(methodUserPass):
		return methodUserPass
	case auth:
		return methodNoAcceptable
	case has(methodNoAuth):
		return methodNoAuth
	case has(methodUserPass):
		return methodUserPass
	default:
		return methodNoAcceptable
	}
}

// replyFor maps a dial failure to the SOCKS5 reply code closest in meaning.
func replyFor(f *proxy.Failure, err error) Reply {
	if f.Denied {
		return ReplyNotAllowed
	}
	switch f.DialKind {
	case dial.KindResolve:
		return ReplyHostUnreachable
	case dial.KindRefused:
		return ReplyConnectionRefused
	case dial.KindTimeout:
		return ReplyTTLExpired
	case dial.KindNoProvider:
		return ReplyNetworkUnreachable
	case dial.KindUnreachable:
		if errors.Is(err, syscall.ENETUNREACH) {
			return ReplyNetworkUnreachable
		}
		return ReplyHostUnreachable
	default:
		return ReplyGeneralFailure
	}
}

func authFailure(err error) *proxy.Failure {
	return &proxy.Failure{Status: http.StatusProxyAuthRequired, Kind: "auth", Denied: true, Reason: err.Error(),
		Fix: "send the session ticket as the SOCKS5 username and password: socks5h://SESSION_ID:TOKEN@broker:port in ALL_PROXY"}
}

func badRequest(reason string) *proxy.Failure {
	return &proxy.Failure{Status: http.StatusBadRequest, Kind: "bad_request", Reason: reason}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
