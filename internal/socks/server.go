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

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
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
	// Health, when set, records a listener that failed for good, for /readyz.
	Health *serve.Health

	initOnce sync.Once
	ctx      context.Context // dials; cancelled when Shutdown gives up waiting
	cancel   context.CancelFunc
	mu       sync.Mutex
	closing  bool
	lns      map[net.Listener]struct{}
	conns    serve.Tracker // in their handshake (idle: closed at once by Shutdown), dialing or relaying
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.lns = map[net.Listener]struct{}{}
	})
}

// Serve accepts SOCKS5 clients on ln until Shutdown, after which it returns nil.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	l := serve.Listen(ln, "socks", s.Health, s.Logger)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.lns[l] = struct{}{}
	s.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return nil
			}
			return fmt.Errorf("socks accept: %w", err)
		}
		if !s.conns.Go(func() { c.Close() }, func(it *serve.Item) { s.serveConn(c, it) }) {
			c.Close()
		}
	}
}

// Shutdown stops accepting and closes connections still in their handshake. It then waits, until
// ctx ends, for the others (dialing or relaying) to finish, and aborts what is left. It returns ctx's
// error when it had to abort.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	for ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	s.conns.Refuse()
	err := s.conns.Wait(ctx)
	s.cancel()
	return err
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// serveConn runs one client: handshake, then the proxy pipeline. Once the proxy has taken the
// connection (Relay), it owns closing it.
func (s *Server) serveConn(c net.Conn, it *serve.Item) {
	s.conns.SetAbort(it, func() { relay.Abort(c) })
	if !s.conns.SetIdle(it, true) {
		c.Close()
		return
	}
	client := addrPortOf(c.RemoteAddr())
	req := s.Proxy.NewRequest(client, Method)
	up, ok := s.handshake(c, req, it)
	if !ok {
		c.Close()
		return
	}
	s.Proxy.Relay(req, http.StatusOK, c, up)
}

// handshake negotiates with the client and dials its target. It returns the upstream connection
// and true once the client has been told the tunnel is open; otherwise it has answered (or given
// up on) the client, logged why, and the caller closes the connection.
func (s *Server) handshake(c net.Conn, req *proxy.Request, it *serve.Item) (net.Conn, bool) {
	c.SetDeadline(time.Now().Add(s.handshakeTimeout()))
	allowed := s.Proxy.ClientAllowed(req.Client.Addr())
	if !s.login(c, req, s.Proxy.Auth != nil && allowed) {
		return nil, false
	}
	if !s.readTarget(c, req, allowed) {
		return nil, false
	}
	if !s.conns.SetIdle(it, false) {
		s.reply(c, req, ReplyGeneralFailure, netip.AddrPort{})
		s.Proxy.LogFailure(req, proxy.ShuttingDown())
		return nil, false
	}
	c.SetDeadline(time.Time{})
	return s.dial(c, req)
}

// login runs the greeting and, when the client picks it, the username/password login (RFC 1929).
// With auth, the login is required and authenticates the session.
func (s *Server) login(c net.Conn, req *proxy.Request, auth bool) bool {
	methods, err := readGreeting(c)
	if err != nil {
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return false
	}
	method := chooseMethod(methods, auth)
	if _, err := c.Write([]byte{version5, method}); err != nil {
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return false
	}
	switch method {
	case methodNoAcceptable:
		if auth {
			s.Proxy.LogFailure(req, authFailure(proxy.ErrNoCredentials))
		} else {
			s.Logger.Debug("socks handshake failed: client offers neither no-auth nor username/password", "client", req.Client, "methods", methods)
		}
		return false
	case methodNoAuth:
		return true
	}
	user, pass, err := readUserPass(c)
	if err != nil {
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return false
	}
	// Without an authenticator (or for a client about to be refused) any login is accepted and
	// ignored, so ALL_PROXY URLs with credentials also work against a plain proxy.
	if auth {
		if req.Session, req.Credential, err = s.Proxy.Auth.Authenticate(user, pass); err != nil {
			c.Write([]byte{userPassVersion, userPassFail})
			s.Proxy.LogFailure(req, authFailure(err))
			return false
		}
	}
	if _, err := c.Write([]byte{userPassVersion, userPassOK}); err != nil {
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return false
	}
	return true
}

// readTarget reads the client's request and sets req's target, or refuses it.
func (s *Server) readTarget(c net.Conn, req *proxy.Request, allowed bool) bool {
	r, err := readRequest(c)
	switch {
	case errors.Is(err, ErrAddrType):
		s.reply(c, req, ReplyAddrNotSupported, netip.AddrPort{})
		s.Proxy.LogFailure(req, proxy.BadRequest("address type not supported: use IPv4, IPv6 or a domain name"))
		return false
	case err != nil:
		s.Logger.Debug("socks handshake failed", "client", req.Client, "err", err)
		return false
	}
	t, terr := r.target()
	req.Target = t
	switch {
	case !allowed:
		s.reply(c, req, ReplyNotAllowed, netip.AddrPort{})
		s.Proxy.LogFailure(req, proxy.ClientNotAllowed(req.Client.Addr().String()))
		return false
	case r.cmd != cmdConnect:
		s.reply(c, req, ReplyCommandNotSupported, netip.AddrPort{})
		s.Proxy.LogFailure(req, &proxy.Failure{Status: http.StatusBadRequest, Kind: accesslog.ErrorCommandNotSupport,
			Reason: fmt.Sprintf("SOCKS5 command %s is not supported: only CONNECT is", commandName(r.cmd))})
		return false
	case terr != nil:
		s.reply(c, req, ReplyGeneralFailure, netip.AddrPort{})
		s.Proxy.LogFailure(req, proxy.BadRequest(terr.Error()))
		return false
	}
	return true
}

// dial decides and dials req's target through the pipeline and tells the client the outcome.
func (s *Server) dial(c net.Conn, req *proxy.Request) (net.Conn, bool) {
	timeout := s.handshakeTimeout()
	up, err := s.Proxy.Dial(s.ctx, req)
	if err != nil {
		f := proxy.FailureOf(err)
		c.SetWriteDeadline(time.Now().Add(timeout))
		s.reply(c, req, replyFor(f, err), netip.AddrPort{})
		s.Proxy.LogFailure(req, f)
		return nil, false
	}
	c.SetWriteDeadline(time.Now().Add(timeout))
	if err := s.reply(c, req, ReplySucceeded, boundAddr(up)); err != nil {
		up.Close()
		s.Proxy.LogFailure(req, proxy.ClientClosed("the client went away before the tunnel opened"))
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
	return proxy.AuthRequired(err, "send the session ticket as the SOCKS5 username and password: socks5h://SESSION_ID:TOKEN@broker:port in ALL_PROXY")
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
