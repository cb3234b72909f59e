// Package proxy is the HTTP front end of swarm-proxy: plain-HTTP forwarding of absolute-form requests
// and CONNECT passthrough, no TLS interception. Every request runs the same pipeline: identify the
// client, decide by policy, dial through the injected Dialer, relay, write one access-log record.
// Other front ends (SOCKS5, the broker) reuse that pipeline through Server's exported methods.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
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
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
)

// Authenticator turns proxy credentials into a session and a credential id: a name of the
// credential that is not secret (a ticket's token id), by which Server.EndRevoked finds the
// connections it opened. It returns an error for missing or wrong credentials; the front end
// answers 407 (HTTP) or refuses the login (SOCKS5) naming that error.
type Authenticator interface {
	Authenticate(user, password string) (session, credential string, err error)
}

// ErrNoCredentials is returned by front ends when an Authenticator is set and the client sent none.
var ErrNoCredentials = errors.New("proxy credentials required: use session_id:token as the proxy user and password")

// Defaults for Server's timeouts and limits.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	// DefaultUpstreamTimeout bounds the wait for a target's response headers. Long polls hold a
	// request for minutes; 15 minutes is Squid's read_timeout.
	DefaultUpstreamTimeout = 15 * time.Minute
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
	// Dialer opens upstream connections, for tunnels and for the Transport that forwards plain
	// HTTP. It is handed the decision Decide made and refuses any that is not an allow. Required.
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
	// CheckRequest, when set, is asked about every HTTP request that is to be forwarded (explicit,
	// inspected or captured) once its target has been allowed: method and path rules. A non-nil
	// Failure refuses the request with it. It must not change r.
	CheckRequest func(r *http.Request, req *Request) *Failure
	// Mutate, when set, changes each allowed request's outgoing copy just before the Transport
	// sends it (credentials bound to the deciding rule). A non-nil Failure refuses the request with
	// it; its reason goes to the client and the log, so it must hold no secret.
	Mutate func(out *http.Request, req *Request) *Failure
	// ModifyResponse, when set, sees each response from a target before it goes to the client
	// (after the proxy removed hop-by-hop and X-Swarm-Proxy-* headers): it may change its headers or
	// wrap its body. An error answers 502 with kind upstream instead.
	ModifyResponse func(resp *http.Response, req *Request) error
	// Redact, when set, removes secrets from text that comes from a target (a Transport error can
	// quote what the target sent, such as a malformed status line) before the client or the log
	// gets it.
	Redact func(string) string
	// Inspector, when set, terminates the TLS of CONNECT tunnels whose rule inspects, so that each
	// request inside is decided by the rule's http entries; without it such tunnels are refused.
	Inspector Inspector
	// UpstreamTLS, when set, is the base of the TLS config that verifies targets reached over
	// https (its RootCAs: the system's plus --upstream-ca); nil means the system roots. Verification
	// is never skipped.
	UpstreamTLS *tls.Config

	// Health, when set, records a listener that failed for good, for /readyz.
	Health *serve.Health

	initOnce   sync.Once
	srv        *http.Server
	forwarders *forwarders
	conns      connTracker
	handed     *handoffListener // the connections ServeConn hands to srv
	handedOnce sync.Once
	inflight   serve.Tracker // tunnels and upgraded connections: http.Server no longer sees them
	creds      credentialConns
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		if s.AllowClients == nil {
			s.AllowClients = DefaultAllowClients
		}
		s.forwarders = newForwarders(s)
		s.conns.init()
		s.handed = newHandoffListener()
		s.srv = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
			IdleTimeout:       orDefault(s.IdleTimeout, DefaultIdleTimeout),
			MaxHeaderBytes:    s.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
			ConnState:         s.conns.state,
			ConnContext:       s.conns.context,
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
	err := s.srv.Serve(observingListener{serve.Listen(ln, "proxy", s.Health, s.Logger), s})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets in-flight requests and tunnels finish until ctx ends, then aborts
// what is left. It returns ctx's error when it had to abort.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.inflight.Refuse()
	s.handed.Close()
	// A client that connected and has sent no request yet would hold http.Server.Shutdown for five
	// seconds: it has nothing in flight, so it is closed at once.
	s.conns.shutdown()
	err := s.srv.Shutdown(ctx)
	if werr := s.inflight.Wait(ctx); werr != nil {
		err = werr
	}
	s.forwarders.closeIdle()
	return err
}

// PolicyChanged retires the upstream connections kept alive under earlier policies, idle or busy,
// so that every later request is dialed, and so checked, under the policy in force.
func (s *Server) PolicyChanged() {
	s.init()
	s.forwarders.retire(s.Policy.Load())
}

// Request is one request or tunnel going through the pipeline, whatever front end it came from.
type Request struct {
	ID      string
	Start   time.Time
	Client  netip.AddrPort
	Session string
	// Credential is the id of the proxy credential that admitted the request (Authenticator);
	// "" without one.
	Credential string
	Method     string // HTTP method, "CONNECT" or "SOCKS5"
	Target     policy.Target
	// Path is the request target's path as the client sent it (not decoded, no query), for plain
	// HTTP only: what is checked, logged and sent on are the same bytes.
	Path string
	// Conn describes the connection a request arrived on when another front end handed it over
	// (ServeConn); nil for clients of the proxy's own listeners.
	Conn *ConnInfo

	dial      *dial.Request // set by Decide
	inspected bool          // set by Decide: the deciding rule inspects, so each request is decided by method and path
	onRecord  []func(*accesslog.Record)
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

// Decision is the policy decision Decide made for req; the zero Decision (a refusal) before that.
func (req *Request) Decision() policy.Decision {
	if req.dial == nil {
		return policy.Decision{}
	}
	return req.dial.Decision
}

// OnRecord registers f to add fields to req's access-log record just before it is written.
func (req *Request) OnRecord(f func(*accesslog.Record)) { req.onRecord = append(req.onRecord, f) }

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

// Decide makes the name-stage policy decision for req's target under the policy in force and
// keeps it with req for the dial and the record. It is the one place a request's target is
// decided: every front end calls it, and dialers only re-check the addresses a name resolves to.
func (s *Server) Decide(req *Request) policy.Decision {
	return s.decide(req, s.Policy.Load())
}

func (s *Server) decide(req *Request, pol *policy.Policy) policy.Decision {
	d := pol.Decide(req.Target, nil)
	req.dial = &dial.Request{Target: req.Target, ID: req.ID, Session: req.Session,
		Client: req.Client.Addr().String(), Decision: d}
	req.inspected = d.Allow && d.Rule.Inspects()
	if req.Conn != nil && req.Conn.OriginalDst.IsValid() {
		req.dial.Pin = req.Conn.OriginalDst.Addr() // captured: connect to where the client was going
	}
	return d
}

// Dial decides req (Decide) and, when allowed, dials its target. A refusal or failure is a
// *dial.Error; its Kind says which. A target whose rule inspects is refused: its requests must be
// decided one by one, which a raw tunnel (SOCKS5) does not allow.
func (s *Server) Dial(ctx context.Context, req *Request) (net.Conn, error) {
	d := s.Decide(req)
	if !d.Allow {
		return nil, dial.Denied(req.Target, d)
	}
	if d.Rule.Inspects() {
		f := inspectRefusal(req, d, "a raw tunnel cannot be inspected")
		return nil, dial.Denied(req.Target, policy.Decision{Code: policy.Code(f.Kind), Rule: d.Rule, Reason: f.Reason, Fix: f.Fix})
	}
	return s.Dialer.Dial(ctx, req.dial)
}

// upstreamTLS is the TLS config of the Transport that forwards to https targets.
func (s *Server) upstreamTLS() *tls.Config {
	if s.UpstreamTLS == nil {
		return nil
	}
	c := s.UpstreamTLS.Clone()
	c.InsecureSkipVerify = false
	return c
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
	rec.Inspected = req.inspected
	if req.Conn != nil {
		rec.TunnelID = req.Conn.TunnelID
	}
	if req.Conn != nil && req.Conn.OriginalDst.IsValid() {
		rec.Transparent, rec.OriginalDst = true, req.Conn.OriginalDst.String()
	}
	return rec
}

// finish completes rec and writes it.
func (s *Server) finish(req *Request, rec *accesslog.Record) {
	rec.Timestamp = time.Now().UTC()
	rec.DurationMS = float64(time.Since(req.Start).Microseconds()) / 1000
	for _, f := range req.onRecord {
		f(rec)
	}
	s.Metrics.observe(rec.Decision, rec.Status, rec.BytesIn, rec.BytesOut)
	if s.Log == nil {
		return
	}
	if err := s.Log.Write(rec); err != nil {
		s.Logger.Error("access log write failed", "err", err)
	}
}

// LogFailure writes the record of a request that got no upstream (refused by the client check,
// authentication or policy, or a failed dial) and an operational line: debug for a refusal, info
// for a failure. Every front end reports its refusals with it.
func (s *Server) LogFailure(req *Request, f *Failure) {
	level := s.Logger.Debug
	if !f.Denied && f.Status != http.StatusBadRequest {
		level = s.Logger.Info
	}
	level("request failed", "id", req.ID, "method", req.Method, "client", req.Client.Addr(), "target", req.Target, "status", f.Status, "kind", f.Kind, "reason", f.Reason)
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
