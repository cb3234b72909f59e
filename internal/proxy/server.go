// Package proxy is the HTTP front end of swarm-proxy: plain-HTTP forwarding of absolute-form requests
// and CONNECT passthrough, no TLS interception. Every request runs the same pipeline: identify the
// client, decide by policy, dial through the injected Dialer, relay, write one access-log record.
// Other front ends (SOCKS5, the broker) reuse that pipeline through Server's exported methods.
package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// Authenticator turns proxy credentials into a session. It returns an error for missing or wrong
// credentials; the front end answers 407 (HTTP) or refuses the login (SOCKS5) naming that error.
type Authenticator interface {
	Authenticate(user, password string) (session string, err error)
}

// ErrNoCredentials is returned by front ends when an Authenticator is set and the client sent none.
var ErrNoCredentials = errors.New("proxy credentials required: use session_id:token as the proxy user and password")

// Defaults for Server's timeouts and limits.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultUpstreamTimeout   = 60 * time.Second
	// DefaultMaxHeaderBytes answers 431 to request headers over 64 KiB: net/http allows 4 KiB over
	// its MaxHeaderBytes setting.
	DefaultMaxHeaderBytes = 64<<10 - 4<<10
	// discardLimit bounds how much of a refused request's body is read so the client sees the
	// error response instead of a reset.
	discardLimit = 256 << 10
	// discardTimeout bounds the time spent reading a refused request's body (IdleTimeout, when
	// shorter, bounds it too).
	discardTimeout = 5 * time.Second
)

// DefaultAllowClients are the client ranges served when none are configured: loopback and the
// private ranges that containers and sandboxes use.
var DefaultAllowClients = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fc00::/7"),
}

// Server is the proxy. Set its fields before calling Serve; they must not change afterwards.
type Server struct {
	// Policy holds the policy in force. Required.
	Policy *policy.Holder
	// Dialer opens upstream connections. Required.
	Dialer dial.Dialer
	// Auth, when set, requires proxy credentials and maps them to a session (broker mode).
	Auth Authenticator
	// Log receives one record per request or tunnel; nil discards them.
	Log *accesslog.Writer
	// Metrics, when set, counts requests, tunnels and bytes.
	Metrics *Metrics
	// Logger receives operational messages; nil means slog.Default().
	Logger *slog.Logger
	// AllowClients limits who may use the proxy; nil means DefaultAllowClients.
	AllowClients []netip.Prefix
	// ReadHeaderTimeout, IdleTimeout, UpstreamTimeout and MaxHeaderBytes: zero means the Default*.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	UpstreamTimeout   time.Duration
	MaxHeaderBytes    int
	// TunnelIdleTimeout, when non-zero, ends tunnels that moved no byte for that long.
	TunnelIdleTimeout time.Duration

	initOnce   sync.Once
	srv        *http.Server
	forwarders *forwarders
	pool       *upstreamPool

	mu       sync.Mutex
	tunnels  map[*tunnel]struct{}
	tunnelWG sync.WaitGroup
	closing  bool
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		if s.AllowClients == nil {
			s.AllowClients = DefaultAllowClients
		}
		s.tunnels = map[*tunnel]struct{}{}
		s.forwarders = newForwarders(s)
		s.pool = newUpstreamPool(s.Policy.Load)
		s.srv = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
			IdleTimeout:       orDefault(s.IdleTimeout, DefaultIdleTimeout),
			MaxHeaderBytes:    s.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
		}
		if s.srv.MaxHeaderBytes == 0 {
			s.srv.MaxHeaderBytes = DefaultMaxHeaderBytes
		}
	})
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Serve accepts proxy clients on ln until Shutdown. It returns nil after a Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	err := s.srv.Serve(newFrontListener(ln, s))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets in-flight requests and tunnels finish until ctx ends, then aborts
// what is left. It returns ctx's error when it had to abort.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	err := s.srv.Shutdown(ctx)
	done := make(chan struct{})
	go func() { s.tunnelWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for t := range s.tunnels {
			t.abort()
		}
		s.mu.Unlock()
		<-done
		err = ctx.Err()
	}
	s.forwarders.closeIdle()
	s.pool.closeAll()
	return err
}

// PolicyChanged retires the upstream connections kept alive under earlier policies, idle or busy,
// so that every later request is dialed, and so checked, under the policy in force.
func (s *Server) PolicyChanged() {
	s.init()
	pol := s.Policy.Load()
	s.forwarders.retire(pol)
	s.pool.retire(pol)
}

// Request is one request or tunnel going through the pipeline, whatever front end it came from.
type Request struct {
	ID      string
	Start   time.Time
	Client  netip.AddrPort
	Session string
	Method  string // HTTP method, "CONNECT" or "SOCKS5"
	Target  policy.Target
	Path    string // plain HTTP only, without the query

	dial *dial.Request
}

// NewRequest starts a request from client with the given method.
func (s *Server) NewRequest(client netip.AddrPort, method string) *Request {
	s.init()
	return &Request{ID: newID(), Start: time.Now(), Client: client, Method: method}
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ClientAllowed reports whether addr may use the proxy.
func (s *Server) ClientAllowed(addr netip.Addr) bool {
	s.init()
	addr = addr.Unmap()
	for _, p := range s.AllowClients {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Dial decides req by policy and, when allowed, dials its target. A refusal or failure is a
// *dial.Error; its Kind says which.
func (s *Server) Dial(ctx context.Context, req *Request) (net.Conn, error) {
	pol := s.Policy.Load()
	req.dial = &dial.Request{Target: req.Target, ID: req.ID, Session: req.Session, Client: req.Client.Addr().String()}
	d := pol.Decide(req.Target, nil)
	req.dial.Decision = d
	if !d.Allow {
		return nil, dial.Denied(req.Target, d)
	}
	return s.Dialer.Dial(ctx, req.dial)
}

// record starts the access-log record of req.
func (s *Server) record(req *Request) *accesslog.Record {
	rec := &accesslog.Record{
		RequestID: req.ID,
		Client:    req.Client.Addr().String(),
		Session:   req.Session,
		Method:    req.Method,
		Host:      req.Target.Host,
		Port:      req.Target.Port,
		Path:      req.Path,
		Mode:      string(s.Policy.Load().Mode),
		Decision:  accesslog.DecisionAllow,
	}
	if req.dial != nil {
		rec.Rule = req.dial.Decision.RuleID()
		rec.Reason = req.dial.Decision.Reason
	}
	return rec
}

// finish completes rec and writes it.
func (s *Server) finish(req *Request, rec *accesslog.Record) {
	rec.Timestamp = time.Now().UTC()
	rec.DurationMS = float64(time.Since(req.Start).Microseconds()) / 1000
	s.Metrics.observe(rec.Decision, rec.Status, rec.BytesIn, rec.BytesOut)
	if s.Log == nil {
		return
	}
	if err := s.Log.Write(rec); err != nil {
		s.Logger.Error("access log write failed", "err", err)
	}
}

// LogFailure writes the record of a request that got no upstream: refused by the client check,
// authentication or policy, or a failed dial.
func (s *Server) LogFailure(req *Request, f *Failure) {
	rec := s.record(req)
	rec.Status = f.Status
	rec.Error = f.Kind
	rec.Reason = f.Reason
	rec.Provider = f.Provider
	if f.Denied || f.Status == http.StatusBadRequest {
		rec.Decision = accesslog.DecisionDeny
		rec.Rule = f.Rule
	}
	s.finish(req, rec)
}
