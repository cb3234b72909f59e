package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

// AuthError is a broker's refusal of a provider's handshake (or a broker this provider cannot talk
// to). Retrying soon will not help, so the provider waits Backoff.AuthRetry before trying again.
type AuthError struct {
	Code   string // one of the Refuse* codes
	Reason string
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("broker refused the provider (%s): %s", e.Code, e.Reason)
}

// Backoff is the provider's reconnect schedule: exponential from Min to Max with jitter, and
// AuthRetry after the broker refused the ticket.
type Backoff struct {
	Min, Max, AuthRetry time.Duration
}

// stableConnection is how long a connection must last for the reconnect backoff to start over.
const stableConnection = 10 * time.Second

// DefaultBackoff is used for zero Backoff fields.
var DefaultBackoff = Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second, AuthRetry: time.Minute}

// Provider keeps one connection to a broker and opens the upstream connections the broker asks for.
type Provider struct {
	// Broker is the broker's provider address, host:port. Required.
	Broker string
	// TLS, when set, is used to connect to the broker; ServerName defaults to Broker's host.
	TLS *tls.Config
	// Credentials returns the session and token; it is called before every connection attempt, so a
	// ticket file replaced on disk is picked up. Required.
	Credentials func() (session, token string, err error)
	// Dialer connects to targets; it carries the provider's own target policy. Required.
	Dialer dial.Dialer
	// RefusalNote, when set, is appended to the reason of every refusal by the target policy, to
	// say what this provider dials: the worker sees the reason, not the provider's settings.
	RefusalNote string
	// Config tunes the connection; zero fields mean the defaults.
	Config Config
	// Backoff is the reconnect schedule; zero fields mean DefaultBackoff's.
	Backoff Backoff
	// DialContext connects to the broker; nil means a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives operational messages and one line per stream; nil means slog.Default().
	Logger *slog.Logger
	// OnConnect, when set, is called with the id the broker gave this provider after each handshake.
	OnConnect func(id string)
	// DrainTimeout is how long open streams may finish when ctx ends, after the broker has been
	// told to send no new ones; zero means DefaultDrainTimeout.
	DrainTimeout time.Duration
}

// DefaultDrainTimeout is used when Provider.DrainTimeout is zero.
const DefaultDrainTimeout = 30 * time.Second

// Run connects to the broker and serves streams, reconnecting with backoff, until ctx ends. It
// returns nil when ctx ends and an error only for unusable settings.
func (p *Provider) Run(ctx context.Context) error {
	if p.Broker == "" || p.Credentials == nil || p.Dialer == nil {
		return errors.New("tunnel provider: Broker, Credentials and Dialer are required")
	}
	cfg := p.Config.withDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("tunnel provider: %w", err)
	}
	logger := p.Logger
	if logger == nil {
		logger = slog.Default()
	}
	bo := p.Backoff
	if bo.Min <= 0 {
		bo.Min = DefaultBackoff.Min
	}
	if bo.Max <= 0 {
		bo.Max = DefaultBackoff.Max
	}
	if bo.AuthRetry <= 0 {
		bo.AuthRetry = DefaultBackoff.AuthRetry
	}
	attempt := 0
	for {
		start := time.Now()
		connected, err := p.connect(ctx, cfg, logger)
		if ctx.Err() != nil {
			return nil
		}
		var delay time.Duration
		var ae *AuthError
		if errors.As(err, &ae) {
			delay = bo.AuthRetry
			msg := "broker refused this provider; check the ticket"
			if ae.Code == RefuseNotBroker || ae.Code == RefuseTransport {
				msg = "cannot talk to the broker at this address; check --broker and the TLS flags"
			}
			logger.Error(msg, "broker", p.Broker, "code", ae.Code, "reason", ae.Reason, "retry_in", delay)
		} else {
			if connected && time.Since(start) >= stableConnection {
				// Start the schedule over only after a connection that lasted: a broker that
				// accepts and drops at once must not be redialed in a tight loop.
				attempt = 0
			}
			delay = jitter(min(bo.Min<<min(attempt, 20), bo.Max))
			attempt++
			logger.Warn("broker connection failed; reconnecting", "broker", p.Broker, "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// jitter spreads d over [d/2, d) so that providers cut off together do not reconnect together.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// connect runs one connection: dial, handshake, then serve streams until it ends. connected reports
// whether the handshake succeeded.
func (p *Provider) connect(ctx context.Context, cfg Config, logger *slog.Logger) (connected bool, err error) {
	session, token, err := p.Credentials()
	if err != nil {
		return false, &AuthError{Code: "credentials", Reason: err.Error()}
	}
	public, err := ticket.Public(token)
	if err != nil {
		return false, &AuthError{Code: RefuseMalformed, Reason: fmt.Sprintf("the token of session %s: %v", session, err)}
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	dialFn := p.DialContext
	if dialFn == nil {
		dialFn = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	raw, err := dialFn(dctx, "tcp", p.Broker)
	if err != nil {
		return false, fmt.Errorf("dial broker: %w", err)
	}
	// The handshake ends when ctx does, so that a stopped provider does not wait for a silent peer.
	stopWatch := context.AfterFunc(dctx, func() { raw.SetDeadline(time.Now()) })
	conn, id, err := p.handshake(dctx, raw, session, public, token)
	if !stopWatch() || err != nil {
		conn.Close()
		if err == nil {
			err = dctx.Err()
		}
		return false, err
	}
	mux, err := serverMux(conn, cfg, logger)
	if err != nil {
		conn.Close()
		return false, fmt.Errorf("start multiplexer: %w", err)
	}
	var open streamCount
	ctl := make(chan *yamux.Stream, 1)
	stop := context.AfterFunc(ctx, func() {
		p.drain(mux, ctl, cfg, &open, logger)
		mux.Close()
	})
	defer stop()
	logger.Info("connected to broker", "broker", p.Broker, "session", session, "provider", id, "tls", p.TLS != nil)
	if p.OnConnect != nil {
		p.OnConnect(id)
	}
	// Streams outlive ctx while draining; closing the multiplexer ends them.
	sctx := context.WithoutCancel(ctx)
	for first := true; ; first = false {
		st, err := mux.AcceptStream()
		if err != nil {
			mux.Close()
			<-open.zero()
			return true, fmt.Errorf("connection to broker lost: %w", err)
		}
		if first {
			// The broker's first stream is the control stream (docs/tunnel-protocol.md, section 5).
			go p.acceptControl(st, ctl, cfg, mux, logger)
			continue
		}
		open.add(1)
		go func() {
			relayFn := p.serveStream(sctx, cfg, logger, session, st)
			if relayFn == nil {
				open.add(-1)
				return
			}
			// The relay runs on a fresh goroutine: this one's stack grew deep while dialing, and
			// an open tunnel should not keep it.
			go func() {
				defer open.add(-1)
				relayFn()
			}()
		}()
	}
}

// acceptControl checks the control stream's first frame and hands the stream to drain.
func (p *Provider) acceptControl(st *yamux.Stream, ctl chan<- *yamux.Stream, cfg Config, mux *yamux.Session, logger *slog.Logger) {
	st.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	msg, err := readFrame(st)
	if err != nil || msg != controlMsg {
		logger.Warn("the broker's first stream is not its control stream; disconnecting", "frame", short(msg), "err", err)
		mux.Close()
		return
	}
	st.SetDeadline(time.Time{})
	ctl <- st
}

// handshake sends the preface, reads the broker's hello, runs TLS when configured, and logs in with
// a proof over the broker's nonce and the TLS channel. It returns the connection to run the
// multiplexer on.
func (p *Provider) handshake(ctx context.Context, conn net.Conn, session, public, token string) (net.Conn, string, error) {
	if _, err := io.WriteString(conn, preface(p.TLS != nil)); err != nil {
		return conn, "", fmt.Errorf("send preface to %s: %w", p.Broker, err)
	}
	s, err := p.readHello(conn)
	if err != nil {
		return conn, "", err
	}
	if code, reason, ok := strings.Cut(strings.TrimPrefix(s, "ERR "), " "); strings.HasPrefix(s, "ERR ") && ok {
		return conn, "", &AuthError{Code: code, Reason: reason}
	}
	h, err := parseHello(s)
	if err != nil {
		return conn, "", &AuthError{Code: RefuseMalformed, Reason: fmt.Sprintf("%s does not look like a swarm-proxy broker's provider port: %v", p.Broker, err)}
	}
	if h.Version != Version {
		return conn, "", &AuthError{Code: RefuseVersion, Reason: fmt.Sprintf("the broker speaks tunnel protocol version %d, this provider %d", h.Version, Version)}
	}
	if h.TLS != (p.TLS != nil) {
		return conn, "", &AuthError{Code: RefuseTransport, Reason: "the broker agreed to another transport than the one asked for"}
	}
	if p.TLS != nil {
		tc := tls13(p.TLS).Clone()
		if tc.ServerName == "" {
			host, _, _ := net.SplitHostPort(p.Broker)
			tc.ServerName = host
		}
		tlsConn := tls.Client(&batchConn{Conn: conn}, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			return conn, "", &AuthError{Code: RefuseTransport, Reason: fmt.Sprintf("tls handshake with broker %s: %v", p.Broker, err)}
		}
		conn = tlsConn
	}
	bind, err := binding(conn)
	if err != nil {
		return conn, "", fmt.Errorf("tls channel binding: %w", err)
	}
	msg := authMsg{Version: Version, Session: session, Public: public, Proof: ticket.Proof(token, challenge(Version, h.Nonce, session, bind))}
	if err := writeFrame(conn, msg.String()); err != nil {
		return conn, "", fmt.Errorf("send auth: %w", err)
	}
	s, err = readFrame(conn)
	if err != nil {
		return conn, "", fmt.Errorf("read broker answer: %w", err)
	}
	if id, ok := strings.CutPrefix(s, "OK "); ok {
		conn.SetDeadline(time.Time{})
		return conn, id, nil
	}
	code, reason, _ := strings.Cut(strings.TrimPrefix(s, "ERR "), " ")
	if !strings.HasPrefix(s, "ERR ") {
		code, reason = RefuseMalformed, "unexpected broker answer "+short(s)
	}
	return conn, "", &AuthError{Code: code, Reason: reason}
}

// RefuseNotBroker is the code of a provider's own refusal to go on with a peer that is not a
// swarm-proxy broker's provider port.
const RefuseNotBroker = "not_a_broker"

// readHello reads the broker's first frame and, when the peer is no swarm-proxy broker, says what it
// is: the worker port answers the preface with an HTTP error, a TLS server with an alert, a broker of
// protocol version 1 with its own hello.
func (p *Provider) readHello(conn net.Conn) (string, error) {
	var head [5]byte
	n, err := io.ReadFull(conn, head[:2])
	notBroker := func(what string) error {
		return &AuthError{Code: RefuseNotBroker, Reason: fmt.Sprintf("%s %s", p.Broker, what)}
	}
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF || errors.Is(err, syscall.ECONNRESET):
		return "", notBroker("closed the connection without answering: is it a swarm-proxy broker's --provider-listen address?")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "", notBroker("did not answer the swarm-tunnel preface: is it a swarm-proxy broker's --provider-listen address?")
	case err != nil:
		return "", fmt.Errorf("read broker hello: %w", err)
	}
	if head[0] == 0x15 {
		return "", notBroker("answered with a TLS alert: it speaks TLS but not swarm-tunnel version 2 (an older broker, or not a broker)")
	}
	if string(head[:2]) == "HT" {
		if m, _ := io.ReadFull(conn, head[2:]); string(head[:2+m]) == "HTTP/" {
			return "", notBroker("answered HTTP: that is the broker's worker port; use its --provider-listen address")
		}
	}
	size := int(head[0])<<8 | int(head[1])
	if size == 0 || size > MaxFrame {
		return "", notBroker(fmt.Sprintf("answered %q, not a swarm-tunnel frame: is it a swarm-proxy broker's --provider-listen address?", head[:n]))
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return "", fmt.Errorf("read broker hello: %w", err)
	}
	return string(buf), nil
}

// serveStream reads one open header, dials the target under the provider's policy and answers. It
// returns the relay to run once the target is connected, or nil after a refusal, which is answered
// on the stream before the stream is closed.
func (p *Provider) serveStream(ctx context.Context, cfg Config, logger *slog.Logger, session string, st *yamux.Stream) (relayFn func()) {
	start := time.Now()
	st.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	s, err := readFrame(st)
	if err != nil {
		st.Reset()
		logger.Debug("stream closed before its open header", "err", err)
		return nil
	}
	o, err := parseOpen(s)
	if err != nil {
		// A reset, not an answer and a close: the broker gets its window back at once.
		st.Reset()
		logger.Warn("bad open header from broker; stream reset", "err", err)
		return nil
	}
	st.SetDeadline(time.Time{})
	req := &dial.Request{Target: o.Target, ID: o.ID, Session: session, Client: "broker"}
	if o.Check != nil {
		check := *o.Check
		req.AddrCheck = func(a netip.Addr) error {
			if check.allows(a) {
				return nil
			}
			return &BrokerRefusal{Addr: a.Unmap()}
		}
	}
	up, err := p.Dialer.Dial(ctx, req)
	if err != nil {
		r := replyFor(err)
		if r.Status == StatusDenied && p.RefusalNote != "" {
			r.Reason += "; " + p.RefusalNote
		}
		writeFrame(st, r.String())
		st.Close()
		logger.Info("open refused", "id", o.ID, "target", o.Target.String(), "status", r.Status, "kind", r.Kind, "reason", r.Reason)
		return nil
	}
	if err := writeFrame(st, reply{Status: StatusOK, Kind: "ok", Reason: "connected to " + up.RemoteAddr().String()}.String()); err != nil {
		relay.Abort(up)
		st.Reset()
		logger.Info("broker gave up on the open before the target answered", "id", o.ID, "target", o.Target.String())
		return nil
	}
	return func() { relayStream(logger, o, st, up, start) }
}

// relayStream carries an opened stream's bytes to and from its target and logs the outcome.
func relayStream(logger *slog.Logger, o openMsg, st *yamux.Stream, up net.Conn, start time.Time) {
	res := relay.Pipe(stream{st}, up, 0)
	attrs := []any{"id", o.ID, "target", o.Target.String(), "upstream", up.RemoteAddr().String(),
		"bytes_out", res.AToB, "bytes_in", res.BToA, "duration_ms", time.Since(start).Milliseconds()}
	if res.Err != nil {
		logger.Info("stream failed", append(attrs, "err", res.Err)...)
		return
	}
	logger.Info("stream done", attrs...)
}

// drain tells the broker on the control stream to send no new streams, waits for its
// acknowledgement, then lets open streams finish for up to DrainTimeout.
func (p *Provider) drain(mux *yamux.Session, ctl <-chan *yamux.Stream, cfg Config, open *streamCount, logger *slog.Logger) {
	timeout := p.DrainTimeout
	if timeout == 0 {
		timeout = DefaultDrainTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var st *yamux.Stream
	select {
	case st = <-ctl:
	case <-mux.CloseChan():
		return
	case <-time.After(cfg.HandshakeTimeout):
		return
	}
	st.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	if err := writeFrame(st, drainMsg); err != nil {
		st.Reset()
		return
	}
	// The broker closes the stream once it will send no new streams here.
	if _, err := io.Copy(io.Discard, st); err != nil {
		logger.Warn("broker did not acknowledge the drain", "err", err)
	}
	st.Close()
	if n := open.get(); n > 0 {
		logger.Info("draining: waiting for open streams", "streams", n, "timeout", timeout)
		select {
		case <-open.zero():
			logger.Info("drained")
		case <-ctx.Done():
			logger.Warn("drain timeout reached: cutting the remaining streams", "streams", open.get())
		}
	}
}

// streamCount counts open streams and tells when none is left.
type streamCount struct {
	mu      sync.Mutex
	n       int
	waiters []chan struct{}
}

func (c *streamCount) add(d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += d
	if c.n == 0 {
		for _, w := range c.waiters {
			close(w)
		}
		c.waiters = nil
	}
}

func (c *streamCount) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// zero returns a channel that is closed once no stream is open.
func (c *streamCount) zero() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	if c.n == 0 {
		close(ch)
	} else {
		c.waiters = append(c.waiters, ch)
	}
	return ch
}
