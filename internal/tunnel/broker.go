package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

// maxPending bounds the provider connections that may be in their handshake at once, and
// maxPendingPerSource those from one source (an IPv4 address or an IPv6 /64), so that one address
// cannot take every slot.
const (
	maxPending          = 1024
	maxPendingPerSource = 16
)

// maxRefusedStreams is how many streams a provider may try to open (it may open none) before the
// broker disconnects it.
const maxRefusedStreams = 16

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("tunnel broker closed")

// Broker accepts provider connections and opens streams through them. It is the dial.Dialer of
// broker mode: Dial sends a request of a session to one of that session's providers.
type Broker struct {
	// Auth verifies provider handshakes. Required.
	Auth *ticket.Authority
	// TLS, when set, makes the provider listener speak TLS (1.3 at least, for the channel binding);
	// nil means plaintext, which only a provider that also asked for plaintext is accepted on.
	TLS *tls.Config
	// Config tunes connections; zero fields mean the defaults.
	Config Config
	// Logger receives operational messages; nil means slog.Default().
	Logger *slog.Logger
	// Metrics, when set, counts providers, streams, opens and handshakes.
	Metrics *Metrics
	// Policy returns the broker's policy in force, whose address stage the provider applies to
	// the addresses a name resolves to. Without it, a name only an allow cidr rule could admit is
	// refused.
	Policy func() *policy.Policy

	initOnce sync.Once
	cfg      Config
	tlsCfg   *tls.Config // TLS, requiring 1.3
	rr       atomic.Uint64

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	pending   map[net.Conn]string // connections still in their handshake, by source
	perSource map[string]int
	sessions  map[string]*group
	wg        sync.WaitGroup
}

// group is the providers of one session and the streams open through them.
type group struct {
	providers []*provider
	joining   int // providers past their proof, not yet registered
	streams   int
}

// provider is one connected provider.
type provider struct {
	id      string
	session string
	tokenID string
	mux     *yamux.Session
	active  atomic.Int64
	// draining is set when the provider announced it is shutting down: it finishes its streams
	// but gets no new ones.
	draining atomic.Bool
}

func (b *Broker) init() {
	b.initOnce.Do(func() {
		b.cfg = b.Config.withDefaults()
		b.tlsCfg = tls13(b.TLS)
		if b.Logger == nil {
			b.Logger = slog.Default()
		}
		b.listeners = map[net.Listener]struct{}{}
		b.pending = map[net.Conn]string{}
		b.perSource = map[string]int{}
		b.sessions = map[string]*group{}
	})
}

// tls13 returns c requiring TLS 1.3, whose exporter the channel binding uses (TLS 1.2's is safe only
// with the extended master secret); nil stays nil.
func tls13(c *tls.Config) *tls.Config {
	if c == nil || c.MinVersion >= tls.VersionTLS13 {
		return c
	}
	c = c.Clone()
	c.MinVersion = tls.VersionTLS13
	return c
}

// sourceOf is the key of a connection's source for the per-source cap.
func sourceOf(c net.Conn) string {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// Serve accepts providers on ln until Close. It returns ErrClosed after Close, and the error of an
// Accept that fails otherwise: give it a listener that rides out temporary failures (serve.Listen).
func (b *Broker) Serve(ln net.Listener) error {
	b.init()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	b.listeners[ln] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.listeners, ln)
		b.mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			b.mu.Lock()
			closed := b.closed
			b.mu.Unlock()
			if closed {
				return ErrClosed
			}
			return fmt.Errorf("tunnel accept: %w", err)
		}
		src := sourceOf(c)
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return ErrClosed
		}
		if len(b.pending) >= maxPending || b.perSource[src] >= maxPendingPerSource {
			// A flood of connections that never finish their handshake must not pile up, and
			// one source must not hold every slot.
			b.mu.Unlock()
			c.Close()
			b.Metrics.handshake("overload")
			continue
		}
		b.pending[c] = src
		b.perSource[src]++
		b.wg.Add(1)
		b.mu.Unlock()
		go b.handle(c)
	}
}

// handle runs one provider connection: handshake, then the multiplexer until the connection ends.
func (b *Broker) handle(raw net.Conn) {
	defer b.wg.Done()
	remote := raw.RemoteAddr().String()
	c, li, err := b.handshake(raw)
	b.mu.Lock()
	src := b.pending[raw]
	delete(b.pending, raw)
	if b.perSource[src]--; b.perSource[src] <= 0 {
		delete(b.perSource, src)
	}
	closed := b.closed
	b.mu.Unlock()
	if err != nil {
		c.Close()
		var ae *AuthError
		if errors.As(err, &ae) {
			b.Metrics.handshake(ae.Code)
			b.Logger.Warn("provider refused", "remote", remote, "session", li.session, "code", ae.Code, "reason", ae.Reason)
		} else {
			b.Metrics.handshake("error")
			b.Logger.Info("provider handshake failed", "remote", remote, "err", err)
		}
		return
	}
	p := &provider{id: li.id, session: li.session, tokenID: li.tokenID}
	if closed {
		b.unjoin(p.session)
		c.Close()
		return
	}
	var refused atomic.Int64
	p.mux, err = clientMux(c, b.cfg, b.Logger, func() {
		b.Metrics.refusedStream()
		if n := refused.Add(1); n == maxRefusedStreams {
			b.Metrics.handshake("provider_opened_streams")
			b.Logger.Warn("provider keeps opening streams, which providers may not do; disconnecting it", "session", p.session, "provider", p.id, "streams_refused", n)
			go c.Close()
		}
	})
	if err != nil {
		b.unjoin(p.session)
		c.Close()
		b.Logger.Error("provider multiplexer failed", "remote", remote, "err", err)
		return
	}
	ctl, err := p.mux.OpenStream(context.Background())
	if err == nil {
		err = writeFrame(ctl, controlMsg)
	}
	if err != nil || !b.register(p) {
		b.unjoin(p.session)
		p.mux.Close()
		return
	}
	b.Metrics.handshake("ok")
	b.Logger.Info("provider connected", "session", p.session, "provider", p.id, "expires", li.expiry.Format(time.RFC3339))
	b.wg.Add(1)
	go b.control(p, ctl)
	expire := time.AfterFunc(time.Until(li.expiry), func() {
		b.Logger.Info("provider ticket expired; disconnecting it", "session", p.session, "provider", p.id)
		p.mux.Close()
	})
	<-p.mux.CloseChan()
	expire.Stop()
	b.unregister(p)
	b.Logger.Info("provider disconnected", "session", p.session, "provider", p.id, "streams_open", p.active.Load(), "streams_refused", refused.Load())
}

// control reads the control stream: the only frame defined is DRAIN, which marks the provider
// draining and is acknowledged by closing the stream. Anything else ends the connection.
func (b *Broker) control(p *provider, st *yamux.Stream) {
	defer b.wg.Done()
	msg, err := readFrame(st)
	switch {
	case err != nil:
		st.Reset()
	case msg == drainMsg:
		p.draining.Store(true)
		b.Logger.Info("provider draining: no new streams for it", "session", p.session, "provider", p.id, "streams_open", p.active.Load())
		st.Close()
	default:
		b.Logger.Warn("provider sent an unknown control frame; disconnecting it", "session", p.session, "provider", p.id, "frame", short(msg))
		p.mux.Close()
	}
}

// login is what a handshake established.
type login struct {
	session, id, tokenID string
	expiry               time.Time
}

// handshake reads the provider's preface, agrees on the transport, runs TLS when configured, and
// checks the provider's proof. Refusals are answered on the connection and returned as *AuthError.
// It returns the connection to run the multiplexer on (the TLS one, with TLS), also on failure so
// that the caller closes it.
func (b *Broker) handshake(c net.Conn) (net.Conn, login, error) {
	var li login
	c.SetDeadline(time.Now().Add(b.cfg.HandshakeTimeout))
	refuse := func(code, reason string) (net.Conn, login, error) {
		writeFrame(c, "ERR "+code+" "+reason)
		return c, li, &AuthError{Code: code, Reason: reason}
	}
	v, provTLS, err := readPreface(c)
	if err != nil {
		return c, li, fmt.Errorf("read preface: %w", err)
	}
	if v != Version {
		return refuse(RefuseVersion, fmt.Sprintf("this broker speaks tunnel protocol version %d, not %d", Version, v))
	}
	switch {
	case b.tlsCfg != nil && !provTLS:
		return refuse(RefuseTransport, "this broker's provider port requires TLS: drop --insecure-plaintext from the provider (and give it --ca or --broker-fingerprint if the broker's certificate is not from a public CA)")
	case b.tlsCfg == nil && provTLS:
		return refuse(RefuseTransport, "this broker's provider port is plaintext (broker --insecure-plaintext): give the provider --insecure-plaintext too, or the broker --tls-cert and --tls-key")
	}
	nonce := make([]byte, nonceLen)
	rand.Read(nonce)
	if err := writeFrame(c, hello{Version: Version, TLS: provTLS, Nonce: nonce}.String()); err != nil {
		return c, li, fmt.Errorf("send hello: %w", err)
	}
	if b.tlsCfg != nil {
		tc := tls.Server(&batchConn{Conn: c}, b.tlsCfg)
		if err := tc.Handshake(); err != nil {
			return c, li, fmt.Errorf("tls handshake: %w", err)
		}
		c = tc
	}
	bind, err := binding(c)
	if err != nil {
		return c, li, fmt.Errorf("tls channel binding: %w", err)
	}
	s, err := readFrame(c)
	if err != nil {
		return c, li, fmt.Errorf("read auth: %w", err)
	}
	a, err := parseAuth(s)
	if err != nil {
		return refuse(RefuseMalformed, err.Error())
	}
	li.session = a.Session
	if a.Version != Version {
		return refuse(RefuseVersion, fmt.Sprintf("this broker speaks tunnel protocol version %d, not %d", Version, a.Version))
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return refuse(RefuseShutdown, "the broker is shutting down")
	}
	li.expiry, li.tokenID, err = b.Auth.VerifyProof(a.Session, a.Public, challenge(Version, nonce, a.Session, bind), a.Proof, ticket.RoleProvider)
	if err != nil {
		code := RefuseInvalid
		switch {
		case errors.Is(err, ticket.ErrExpired):
			code = RefuseExpired
		case errors.Is(err, ticket.ErrWrongSession):
			code = RefuseSession
		case errors.Is(err, ticket.ErrMalformed):
			code = RefuseMalformed
		case errors.Is(err, ticket.ErrWrongRole):
			code = RefuseRole
		case errors.Is(err, ticket.ErrRevoked):
			code = RefuseRevoked
		}
		return refuse(code, err.Error())
	}
	if !b.join(a.Session) {
		return refuse(RefuseTooMany, fmt.Sprintf("session %s already has %d providers, the most it may have (broker --max-providers-per-session)", a.Session, b.cfg.MaxProvidersPerSession))
	}
	li.id = c.RemoteAddr().String() + "/" + shortID()
	if err := writeFrame(c, "OK "+li.id); err != nil {
		b.unjoin(a.Session)
		return c, li, fmt.Errorf("send ok: %w", err)
	}
	c.SetDeadline(time.Time{})
	return c, li, nil
}

// join takes one of a session's provider slots for a provider whose proof verified.
func (b *Broker) join(session string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.sessions[session]
	if g == nil {
		g = &group{}
		b.sessions[session] = g
	}
	if len(g.providers)+g.joining >= b.cfg.MaxProvidersPerSession {
		b.maybeForget(session, g)
		return false
	}
	g.joining++
	return true
}

// unjoin gives back a slot that join took for a provider that did not register.
func (b *Broker) unjoin(session string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g := b.sessions[session]; g != nil {
		g.joining--
		b.maybeForget(session, g)
	}
}

// Revoke disconnects the providers whose session or token the revoked function names; the broker
// calls it when its revocation list changes. It returns how many it disconnected.
func (b *Broker) Revoke(revoked func(session, tokenID string) bool) int {
	b.init()
	b.mu.Lock()
	var cut []*provider
	for _, g := range b.sessions {
		for _, p := range g.providers {
			if revoked(p.session, p.tokenID) {
				cut = append(cut, p)
			}
		}
	}
	b.mu.Unlock()
	for _, p := range cut {
		b.Logger.Info("provider's ticket revoked; disconnecting it", "session", p.session, "provider", p.id)
		p.mux.Close()
	}
	return len(cut)
}

func shortID() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (b *Broker) register(p *provider) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	g := b.sessions[p.session]
	g.joining--
	g.providers = append(g.providers, p)
	b.Metrics.providerDelta(p.session, 1)
	return true
}

func (b *Broker) unregister(p *provider) {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.sessions[p.session]
	if g == nil {
		return
	}
	for i, q := range g.providers {
		if q == p {
			g.providers = append(g.providers[:i:i], g.providers[i+1:]...)
			b.Metrics.providerDelta(p.session, -1)
			break
		}
	}
	b.maybeForget(p.session, g)
}

// maybeForget drops an empty group. b.mu must be held.
func (b *Broker) maybeForget(session string, g *group) {
	if len(g.providers) == 0 && g.joining == 0 && g.streams == 0 && b.sessions[session] == g {
		delete(b.sessions, session)
		b.Metrics.forget(session)
	}
}

// Providers returns the ids of the providers connected for session.
func (b *Broker) Providers(session string) []string {
	b.init()
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	if g := b.sessions[session]; g != nil {
		for _, p := range g.providers {
			ids = append(ids, p.id)
		}
	}
	return ids
}

// Close stops accepting providers, disconnects every provider (their streams fail) and waits for
// the connection goroutines. It is idempotent.
func (b *Broker) Close() error {
	b.init()
	b.mu.Lock()
	b.closed = true
	var muxes []*yamux.Session
	for ln := range b.listeners {
		ln.Close()
	}
	for c := range b.pending {
		c.Close()
	}
	for _, g := range b.sessions {
		for _, p := range g.providers {
			muxes = append(muxes, p.mux)
		}
	}
	b.mu.Unlock()
	for _, m := range muxes {
		m.Close()
	}
	b.wg.Wait()
	return nil
}

// acquire picks the provider of session with the fewest open streams (round robin among equals)
// and counts a stream against the session's cap.
func (b *Broker) acquire(req *dial.Request, skip map[*provider]bool) (*provider, *group, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.sessions[req.Session]
	var live []*provider
	if g != nil {
		for _, p := range g.providers {
			if !skip[p] && !p.draining.Load() && !p.mux.IsClosed() {
				live = append(live, p)
			}
		}
	}
	if len(live) == 0 {
		return nil, nil, &dial.Error{Kind: dial.KindNoProvider, Target: req.Target,
			Reason: fmt.Sprintf("no provider is connected for session %s", orNone(req.Session))}
	}
	if g.streams >= b.cfg.MaxStreams {
		return nil, nil, &dial.Error{Kind: dial.KindUnreachable, Target: req.Target,
			Reason: fmt.Sprintf("session %s already has %d streams open, the most it may have", req.Session, g.streams)}
	}
	start := int(b.rr.Add(1) % uint64(len(live)))
	best := live[start]
	for i := 1; i < len(live); i++ {
		if p := live[(start+i)%len(live)]; p.active.Load() < best.active.Load() {
			best = p
		}
	}
	best.active.Add(1)
	g.streams++
	b.Metrics.streamDelta(req.Session, 1)
	return best, g, nil
}

func (b *Broker) release(p *provider, g *group) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p.active.Add(-1)
	g.streams--
	b.Metrics.streamDelta(p.session, -1)
	b.maybeForget(p.session, g)
}

func orNone(s string) string {
	if s == "" {
		return `"" (no session: the request carried no ticket)`
	}
	return s
}

// Dial opens a stream to a provider of req.Session and asks it to connect to req.Target. It returns
// once the provider has connected, or a *dial.Error: KindNoProvider when no provider serves the
// session, KindTimeout when the provider did not answer within Config.OpenTimeout, and the
// provider's own kind and reason when it refused or failed to connect.
func (b *Broker) Dial(ctx context.Context, req *dial.Request) (net.Conn, error) {
	b.init()
	if err := dial.Refuse(req); err != nil {
		b.Metrics.open(dial.KindDenied.String())
		return nil, err
	}
	var check *addrCheck
	if _, isIP := req.Target.Addr(); !isIP && b.Policy != nil {
		c := checkFor(b.Policy(), req.Target, req.Decision)
		check = &c
		if o := (openMsg{ID: req.ID, Target: req.Target, Check: check}).String(); len(o) > MaxFrame {
			d := req.Decision
			d.Allow, d.Pending, d.Code = false, false, policy.CodeNoRule
			d.Reason = fmt.Sprintf("the broker's policy has too many cidr rules for port %d to send to its provider (%d bytes, at most %d)", req.Target.Port, len(o), MaxFrame)
			b.Metrics.open(dial.KindDenied.String())
			return nil, dial.Denied(req.Target, d)
		}
	}
	if d := req.Decision; d.Pending && check == nil {
		// The broker's policy admits this name only if its addresses fall in an allow cidr rule, but
		// the provider resolves the name on its own network: the broker cannot check that, so it
		// refuses rather than let the name through unchecked.
		d.Allow, d.Pending, d.Code = false, false, policy.CodeNoRule
		d.Reason = fmt.Sprintf("the broker's policy allows %s only by a cidr rule, which a broker cannot check: its provider resolves the name", req.Target.Host)
		d.Fix = fmt.Sprintf("add to allow in the broker's policy: - {host: %s, ports: [%d]}", req.Target.Host, req.Target.Port)
		b.Metrics.open(dial.KindDenied.String())
		return nil, dial.Denied(req.Target, d)
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpenTimeout)
	defer cancel()
	skip := map[*provider]bool{}
	for {
		p, g, err := b.acquire(req, skip)
		if err != nil {
			if len(skip) > 0 {
				// Every provider we tried vanished while we opened.
				err = &dial.Error{Kind: dial.KindNoProvider, Target: req.Target,
					Reason: fmt.Sprintf("the providers of session %s disconnected while opening the stream", req.Session)}
			}
			b.Metrics.open(kindName(err))
			return nil, err
		}
		c, err := b.open(ctx, p, req, check)
		if err == nil {
			b.Metrics.open("ok")
			return &Conn{stream: stream{c}, provider: p.id, release: func() { b.release(p, g) }}, nil
		}
		b.release(p, g)
		if errors.Is(err, errProviderGone) && ctx.Err() == nil {
			skip[p] = true
			continue
		}
		b.Metrics.open(kindName(err))
		return nil, err
	}
}

var errProviderGone = errors.New("provider connection closed")

func kindName(err error) string {
	var de *dial.Error
	if errors.As(err, &de) {
		return de.Kind.String()
	}
	return dial.KindInternal.String()
}

// open runs the open exchange on a new stream of p.
func (b *Broker) open(ctx context.Context, p *provider, req *dial.Request, check *addrCheck) (*yamux.Stream, error) {
	t := req.Target
	timeoutErr := func(err error) error {
		if errors.Is(ctx.Err(), context.Canceled) {
			return dial.Classify(t, context.Canceled)
		}
		return &dial.Error{Kind: dial.KindTimeout, Target: t, Err: err, Provider: p.id,
			Reason: fmt.Sprintf("provider %s did not answer the open within %v", p.id, b.cfg.OpenTimeout)}
	}
	st, err := p.mux.OpenStream(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, timeoutErr(err)
		}
		return nil, fmt.Errorf("%w: %w", errProviderGone, err)
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	err = writeFrame(st, openMsg{ID: req.ID, Target: t, Check: check}.String())
	var s string
	if err == nil {
		s, err = readFrame(st)
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		st.Reset()
		if ctx.Err() != nil {
			return nil, timeoutErr(err)
		}
		if p.draining.Load() || p.mux.IsClosed() {
			// The provider is leaving; nothing was sent to the target yet, so another may serve.
			return nil, fmt.Errorf("%w: %w", errProviderGone, err)
		}
		return nil, &dial.Error{Kind: dial.KindUnreachable, Target: t, Err: err, Provider: p.id,
			Reason: fmt.Sprintf("provider %s dropped the stream before answering", p.id)}
	}
	r, err := parseReply(s)
	if err != nil {
		st.Reset()
		return nil, &dial.Error{Kind: dial.KindInternal, Target: t, Err: err, Provider: p.id, Reason: fmt.Sprintf("provider %s sent a bad answer", p.id)}
	}
	if r.Kind == kindBrokerDenied && check != nil {
		st.Reset()
		return nil, b.brokerDenied(t, r.Reason, p.id)
	}
	if r.Status != StatusOK {
		st.Reset()
		return nil, &dial.Error{Kind: kindOf(r), Target: t, Provider: p.id, Reason: fmt.Sprintf("provider %s: %s", p.id, r.Reason)}
	}
	st.SetDeadline(time.Time{})
	return st, nil
}

// brokerDenied is the broker's own refusal of an address its provider resolved t to: the decision
// its policy gives that address, as if the broker had resolved the name itself.
func (b *Broker) brokerDenied(t policy.Target, addr, providerID string) error {
	a, err := netip.ParseAddr(addr)
	if err == nil {
		if d := b.Policy().Decide(t, []netip.Addr{a}); !d.Allow {
			e := dial.Denied(t, d)
			e.Provider = providerID
			return e
		}
	}
	return &dial.Error{Kind: dial.KindDenied, Target: t, Provider: providerID,
		Reason: fmt.Sprintf("the broker's policy refuses the address %s resolved to at provider %s", t.Host, providerID)}
}

// Conn is a stream to a target through a provider. Close sends a clean end (FIN) after a complete
// transfer; Reset makes the far side see a failure. Both release the stream's slot.
type Conn struct {
	stream
	provider string
	once     sync.Once
	release  func()
}

// Provider names the provider that carries the stream (its address and a short id); the proxy logs
// it in the provider field.
func (c *Conn) Provider() string { return c.provider }

// Read reads from the target through the provider. A failure names the provider and says whether
// its connection died or it reset the stream, so that the access log explains a cut transfer.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.stream.Read(b)
	return n, c.explain(err)
}

// Write writes towards the target through the provider; failures are explained as in Read.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.stream.Write(b)
	return n, c.explain(err)
}

func (c *Conn) explain(err error) error {
	switch {
	case err == nil || err == io.EOF || errors.Is(err, yamux.ErrTimeout):
		return err
	case c.Stream.Session().IsClosed():
		return fmt.Errorf("provider %s disconnected: %w", c.provider, err)
	case errors.Is(err, yamux.ErrStreamReset):
		return fmt.Errorf("provider %s reset the stream (its connection to the target failed): %w", c.provider, err)
	}
	return err
}

// Close closes both directions of the stream.
func (c *Conn) Close() error {
	err := c.Stream.Close()
	c.once.Do(c.release)
	return err
}

// Reset aborts the stream; the provider resets its connection to the target.
func (c *Conn) Reset() error {
	err := c.Stream.Reset()
	c.once.Do(c.release)
	return err
}

// stream is a yamux stream whose Read never mistakes a dead connection for a clean end. yamux's Read
// returns data together with the error of the window update it sends afterwards; when the connection
// ended with EOF, that error is io.EOF itself, which a copy loop takes for a FIN and passes on as a
// clean half-close. Dropping it is safe: the next Read reports the stream's true state (the session's
// reset error, or io.EOF after a real FIN).
type stream struct{ *yamux.Stream }

func (s stream) Read(b []byte) (int, error) {
	n, err := s.Stream.Read(b)
	if err == io.EOF && (n > 0 || len(b) == 0) {
		return n, nil
	}
	return n, err
}
