package tunnel

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/relay"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

var testSecret = []byte("test-secret-test-secret-test-secret!")

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

type env struct {
	t         testing.TB
	auth      *ticket.Authority
	broker    *Broker
	addr      string
	ln        *countingListener
	clientTLS *tls.Config
	reg       *prometheus.Registry
	logs      *loopbacktest.LogBuffer
}

func (e *env) hasProvider(id string) bool {
	for _, s := range []string{"s1", "public", "loop", "dns"} {
		if slices.Contains(e.broker.Providers(s), id) {
			return true
		}
	}
	return false
}

func newEnv(t testing.TB, useTLS bool, cfg Config) *env {
	t.Helper()
	auth, err := ticket.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, auth: auth, reg: prometheus.NewRegistry(), logs: &loopbacktest.LogBuffer{}}
	e.broker = &Broker{Auth: auth, Config: cfg, Metrics: NewMetrics(e.reg),
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if useTLS {
		srvCfg, cliCfg := testTLS(t)
		e.broker.TLS, e.clientTLS = srvCfg, cliCfg
	}
	e.start("127.0.0.1:0")
	t.Cleanup(func() { e.broker.Close() })
	return e
}

func (e *env) start(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.ln = &countingListener{Listener: ln}
	e.addr = ln.Addr().String()
	go e.broker.Serve(e.ln)
}

func testTLS(t testing.TB) (*tls.Config, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool}
}

type testProvider struct {
	cancel    context.CancelFunc
	done      chan struct{}
	connected chan string
	conns     chan net.Conn
	logs      *loopbacktest.LogBuffer
	env       *env
}

func (e *env) provider(session string, targets string, mod func(*Provider)) *testProvider {
	e.t.Helper()
	tk, err := e.auth.Issue(session, ticket.RoleProvider, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	pol, err := policy.ForTargets(targets)
	if err != nil {
		e.t.Fatal(err)
	}
	tp := &testProvider{done: make(chan struct{}), connected: make(chan string, 16), conns: make(chan net.Conn, 16), logs: &loopbacktest.LogBuffer{}, env: e}
	p := &Provider{
		Broker:       e.addr,
		TLS:          e.clientTLS,
		Credentials:  func() (string, string, error) { return session, tk.Token, nil },
		Dialer:       dial.Deciding{Policy: func() *policy.Policy { return pol }, Dialer: &dial.Direct{Policy: func() *policy.Policy { return pol }, Timeout: 2 * time.Second}},
		Backoff:      Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond, AuthRetry: time.Hour},
		DrainTimeout: 5 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(tp.logs, nil)),
		OnConnect:    func(id string) { tp.connected <- id },
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				select {
				case tp.conns <- c:
				default:
				}
			}
			return c, err
		},
	}
	if mod != nil {
		mod(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp.cancel = cancel
	go func() { defer close(tp.done); p.Run(ctx) }()
	e.t.Cleanup(tp.stop)
	return tp
}

func (tp *testProvider) stop() {
	tp.cancel()
	<-tp.done
}

func (tp *testProvider) waitConnected(t testing.TB) string {
	t.Helper()
	select {
	case id := <-tp.connected:
		// The provider hears OK just before the broker registers it.
		waitFor(t, "broker registers "+id, func() bool { return tp.env.hasProvider(id) })
		return id
	case <-time.After(10 * time.Second):
		t.Fatalf("provider did not connect; its log:\n%s", tp.logs.String())
		return ""
	}
}

// echoServer echoes every connection until EOF, then closes its write side.
func echoServer(t testing.TB) policy.Target {
	t.Helper()
	ln := loopbacktest.Start(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return targetOf(t, ln.Addr())
}

func targetOf(t testing.TB, a net.Addr) policy.Target {
	ap := netip.MustParseAddrPort(a.String())
	return policy.Target{Host: ap.Addr().String(), Port: int(ap.Port())}
}

func req(session string, target policy.Target) *dial.Request {
	return &dial.Request{Target: target, ID: "req-1", Session: session, Client: "127.0.0.1",
		Decision: policy.Decision{Allow: true, Code: policy.CodeDiscovery}}
}

func TestOpenAndRelay(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "tcp"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, useTLS, Config{})
			tp := e.provider("s1", "loopback", nil)
			id := tp.waitConnected(t)
			target := echoServer(t)
			c, err := e.broker.Dial(context.Background(), req("s1", target))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.(interface{ Provider() string }).Provider(); got != id || !strings.HasPrefix(got, "127.0.0.1:") {
				t.Fatalf("Provider() = %q, want %q", got, id)
			}
			msg := bytes.Repeat([]byte("hello tunnel "), 10000)
			go func() {
				c.Write(msg)
				c.(interface{ CloseWrite() error }).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo: %d bytes, err %v; want %d bytes", len(got), err, len(msg))
			}
			if v := value(e.broker.Metrics.providers.WithLabelValues("s1")); v != 1 {
				t.Fatalf("providers metric = %v", v)
			}
			if v := value(e.broker.Metrics.opens.WithLabelValues("ok")); v != 1 {
				t.Fatalf("opens{ok} = %v", v)
			}
		})
	}
}

// silentProvider completes the handshake and accepts streams but never answers an open.
func silentProvider(t testing.TB, e *env, session string) {
	t.Helper()
	tk, _ := e.auth.Issue(session, ticket.RoleProvider, time.Hour)
	c := e.login(t, session, tk.Token)
	t.Cleanup(func() { c.Close() })
	cfg := Config{}.withDefaults()
	mux, err := serverMux(c, cfg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mux.Close() })
	go func() {
		for {
			st, err := mux.AcceptStream()
			if err != nil {
				return
			}
			t.Cleanup(func() { st.Reset() })
		}
	}()
}

// dialRaw connects to the broker, sends the preface and returns the connection (TLS when the
// broker speaks it) and the broker's hello.
func (e *env) dialRaw(t testing.TB) (net.Conn, hello) {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, preface(e.clientTLS != nil))
	s, err := readFrame(c)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHello(s)
	if err != nil {
		t.Fatalf("hello %q: %v", s, err)
	}
	if e.clientTLS != nil {
		tc := tls.Client(c, e.clientTLS)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = tc
	}
	return c, h
}

// login runs a provider's handshake by hand and returns the connection, ready for the multiplexer.
func (e *env) login(t testing.TB, session, token string) net.Conn {
	t.Helper()
	c, h := e.dialRaw(t)
	pub, _ := ticket.Public(token)
	bind, _ := binding(c)
	writeFrame(c, authMsg{Version: Version, Session: session, Public: pub, Proof: ticket.Proof(token, challenge(Version, h.Nonce, session, bind))}.String())
	if s, err := readFrame(c); err != nil || !strings.HasPrefix(s, "OK ") {
		t.Fatalf("handshake answer %q, %v", s, err)
	}
	return c
}

type fakeResolver struct{}

func (fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestDialFailures(t *testing.T) {
	e := newEnv(t, false, Config{OpenTimeout: 300 * time.Millisecond})
	ids := map[string]string{
		"public": e.provider("public", "public", nil).waitConnected(t),
		"loop":   e.provider("loop", "loopback", func(p *Provider) { p.RefusalNote = "loopback only" }).waitConnected(t),
		"dns":    e.provider("dns", "any", func(p *Provider) { p.Dialer.(dial.Deciding).Dialer.(*dial.Direct).Resolver = fakeResolver{} }).waitConnected(t),
	}
	silentProvider(t, e, "silent")
	waitFor(t, "silent provider", func() bool { return len(e.broker.Providers("silent")) == 1 })
	ids["silent"] = e.broker.Providers("silent")[0]

	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedTarget := targetOf(t, closed.Addr())
	closed.Close()
	echo := echoServer(t)

	tests := []struct {
		name    string
		session string
		target  policy.Target
		kind    dial.Kind
		reason  string
	}{
		{"no provider", "nobody", echo, dial.KindNoProvider, "no provider is connected for session nobody"},
		{"provider policy denies", "public", echo, dial.KindDenied, "loopback address"},
		{"provider policy denies with a note", "loop", policy.Target{Host: "8.8.8.8", Port: 22}, dial.KindDenied, "no allow rule matches 8.8.8.8:22 (mode: enforce); loopback only"},
		{"target refuses", "loop", closedTarget, dial.KindRefused, "connection refused"},
		{"name does not resolve", "dns", policy.Target{Host: "nothing.example", Port: 80}, dial.KindResolve, "no such host"},
		{"provider does not answer", "silent", echo, dial.KindTimeout, "did not answer the open within 300ms"},
		{"broker policy needs addresses", "loop", policy.Target{Host: "internal.example", Port: 80}, dial.KindDenied, "only by a cidr rule"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := req(tt.session, tt.target)
			r.Decision.Pending = strings.HasSuffix(tt.target.Host, ".example") && tt.kind == dial.KindDenied
			c, err := e.broker.Dial(context.Background(), r)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			var de *dial.Error
			if !errors.As(err, &de) || de.Kind != tt.kind || !strings.Contains(de.Reason, tt.reason) {
				t.Fatalf("Dial error %#v (%v), want kind %v with reason containing %q", de, err, tt.kind, tt.reason)
			}
			if de.Kind == dial.KindDenied && (de.Decision != nil) != r.Decision.Pending {
				t.Fatalf("decision %+v: a provider's refusal carries none, the broker's own refusal does", de.Decision)
			}
			// The provider that refused or failed is named, for the access log's provider field.
			want := ids[tt.session]
			if r.Decision.Pending {
				want = "" // the broker refused before asking a provider
			}
			if de.Provider != want {
				t.Fatalf("Provider = %q, want %q", de.Provider, want)
			}
		})
	}
	// The failed opens left no stream behind.
	for _, s := range []string{"public", "loop", "dns", "silent"} {
		waitFor(t, "streams of "+s+" released", func() bool {
			return value(e.broker.Metrics.streams.WithLabelValues(s)) == 0
		})
	}
}

func TestHandshakeRefusals(t *testing.T) {
	e := newEnv(t, false, Config{})
	good, _ := e.auth.Issue("s1", ticket.RoleProvider, time.Hour)
	other, _ := e.auth.Issue("s2", ticket.RoleProvider, time.Hour)
	worker, _ := e.auth.Issue("s1", ticket.RoleWorker, time.Hour)
	past := *e.auth
	past.Now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
	expired, _ := past.Issue("s1", ticket.RoleProvider, time.Hour)
	foreign, _ := ticket.New([]byte("some-other-secret-some-other-secret"))
	forged, _ := foreign.Issue("s1", ticket.RoleProvider, time.Hour)

	// A recorded handshake of a good provider, replayed on a new connection, must fail.
	var recorded string
	{
		c, h := e.dialRaw(t)
		pub, _ := ticket.Public(good.Token)
		recorded = authMsg{Version: Version, Session: "s1", Public: pub, Proof: ticket.Proof(good.Token, challenge(Version, h.Nonce, "s1", nil))}.String()
		c.Close()
	}
	tests := []struct {
		name    string
		session string
		token   string
		raw     string // sent instead of a computed AUTH frame
		code    string
	}{
		{"good", "s1", good.Token, "", ""},
		{"replayed", "", "", recorded, RefuseInvalid},
		{"expired", "s1", expired.Token, "", RefuseExpired},
		{"other session", "s1", other.Token, "", RefuseSession},
		{"worker ticket", "s1", worker.Token, "", RefuseRole},
		{"other secret", "s1", forged.Token, "", RefuseInvalid},
		{"garbage", "", "", "HELLO there", RefuseMalformed},
		{"future version", "", "", strings.Replace(recorded, "AUTH 2 ", "AUTH 3 ", 1), RefuseVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.raw != "" {
				c, _ := e.dialRaw(t)
				defer c.Close()
				writeFrame(c, tt.raw)
				s, _ := readFrame(c)
				if !strings.HasPrefix(s, "ERR "+tt.code+" ") {
					t.Fatalf("answer %q, want ERR %s", s, tt.code)
				}
				return
			}
			c, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			p := &Provider{Broker: e.addr}
			pub, _ := ticket.Public(tt.token)
			_, _, err = p.handshake(context.Background(), c, tt.session, pub, tt.token)
			var ae *AuthError
			switch {
			case tt.code == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tt.code != "" && (!errors.As(err, &ae) || ae.Code != tt.code):
				t.Fatalf("handshake error %v, want code %s", err, tt.code)
			}
		})
	}
}

func TestAuthFailureBacksOff(t *testing.T) {
	e := newEnv(t, false, Config{})
	foreign, _ := ticket.New([]byte("some-other-secret-some-other-secret"))
	bad, _ := foreign.Issue("s1", ticket.RoleProvider, time.Hour)
	tp := e.provider("s1", "public", func(p *Provider) {
		p.Credentials = func() (string, string, error) { return "s1", bad.Token, nil }
	})
	waitFor(t, "refusal logged", func() bool { return strings.Contains(tp.logs.String(), "broker refused this provider") })
	log := tp.logs.String()
	if !strings.Contains(log, "code=invalid") || !strings.Contains(log, "retry_in=1h0m0s") {
		t.Fatalf("provider log does not explain the refusal and the long retry:\n%s", log)
	}
	if n := e.ln.accepted.Load(); n != 1 {
		t.Fatalf("provider connected %d times after a refusal, want 1", n)
	}
}

// streamTarget sends data forever.
func streamTarget(t testing.TB) policy.Target {
	t.Helper()
	ln := loopbacktest.Start(t, func(c net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	return targetOf(t, ln.Addr())
}

func TestProviderVanishesMidTransfer(t *testing.T) {
	base := runtime.NumGoroutine()
	e := newEnv(t, false, Config{})
	tp := e.provider("s1", "loopback", nil)
	tp.waitConnected(t)
	target := streamTarget(t)

	// A worker's TCP connection relayed to the stream, as the proxy does.
	wl, _ := net.Listen("tcp", "127.0.0.1:0")
	defer wl.Close()
	worker, err := net.Dial("tcp", wl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()
	server, _ := wl.Accept()
	up, err := e.broker.Dial(context.Background(), req("s1", target))
	if err != nil {
		t.Fatal(err)
	}
	relayDone := make(chan relay.Result, 1)
	go func() { relayDone <- relay.Pipe(server, up, 0) }()
	if _, err := io.ReadFull(worker, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	(<-tp.conns).Close() // the provider's connection dies mid-transfer
	worker.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, worker)
	if err == nil || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("worker read ended with %v, want a connection reset (never a clean EOF)\nprovider log:\n%s\nbroker log:\n%s", err, tp.logs, e.logs)
	}
	if res := <-relayDone; res.Err == nil || !strings.Contains(res.Err.Error(), "provider "+up.(*Conn).Provider()+" disconnected") {
		t.Fatalf("relay error %v does not say the provider disconnected", res.Err)
	}
	e.broker.Close()
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// TestBrokerVanishesMidUpload is the other direction: the target must see a reset, not a clean end
// of a truncated upload.
func TestBrokerVanishesMidUpload(t *testing.T) {
	e := newEnv(t, false, Config{})
	e.provider("s1", "loopback", nil).waitConnected(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	received := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
			got <- err
			return
		}
		close(received)
		_, err = io.Copy(io.Discard, c)
		got <- err
	}()
	up, err := e.broker.Dial(context.Background(), req("s1", targetOf(t, ln.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := up.Write(buf); err != nil {
				return
			}
		}
	}()
	<-received
	e.broker.Close()
	if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("target read ended with %v, want a connection reset (never a clean EOF)", err)
	}
}

func TestReconnect(t *testing.T) {
	e := newEnv(t, true, Config{})
	tp := e.provider("s1", "loopback", nil)
	first := tp.waitConnected(t)
	target := echoServer(t)
	check := func() string {
		t.Helper()
		c, err := e.broker.Dial(context.Background(), req("s1", target))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return c.(*Conn).Provider()
	}
	check()

	// The connection drops: the provider reconnects by itself.
	(<-tp.conns).Close()
	second := tp.waitConnected(t)
	if second == first {
		t.Fatalf("same provider id %q after reconnect", second)
	}
	waitFor(t, "old provider gone", func() bool { return len(e.broker.Providers("s1")) == 1 })
	if got := check(); got != second {
		t.Fatalf("stream went through %q, want %q", got, second)
	}

	// The broker restarts on the same address: the provider reconnects to the new one.
	addr := e.addr
	e.broker.Close()
	e.broker = &Broker{Auth: e.auth, TLS: e.broker.TLS, Logger: e.broker.Logger}
	e.start(addr)
	t.Cleanup(func() { e.broker.Close() })
	tp.waitConnected(t)
	check()
}

func TestTwoProviders(t *testing.T) {
	e := newEnv(t, false, Config{})
	a := e.provider("s1", "loopback", nil)
	idA := a.waitConnected(t)
	b := e.provider("s1", "loopback", nil)
	idB := b.waitConnected(t)
	target := echoServer(t)

	used := map[string]int{}
	var conns []net.Conn
	for range 10 {
		c, err := e.broker.Dial(context.Background(), req("s1", target))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		used[c.(*Conn).Provider()]++
	}
	if used[idA] != 5 || used[idB] != 5 {
		t.Fatalf("streams spread %v, want 5 on each of %s and %s", used, idA, idB)
	}
	for _, c := range conns {
		c.Close()
	}
	a.stop()
	for i := range 10 {
		c, err := e.broker.Dial(context.Background(), req("s1", target))
		if err != nil {
			t.Fatalf("dial %d after one provider left: %v", i, err)
		}
		if p := c.(*Conn).Provider(); p != idB {
			t.Fatalf("stream through %s, want the remaining %s", p, idB)
		}
		c.Close()
	}
}

func TestStormOverOneConnection(t *testing.T) {
	base := runtime.NumGoroutine()
	e := newEnv(t, false, Config{})
	tp := e.provider("s1", "loopback", nil)
	tp.waitConnected(t)
	target := echoServer(t)
	const n = 200
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := req("s1", target)
			r.ID = "storm-" + string(rune('a'+i%26))
			c, err := e.broker.Dial(context.Background(), r)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			go func() { c.Write(payload); c.(*Conn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				errs <- errors.New("echo mismatch")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.ln.accepted.Load(); got != 1 {
		t.Fatalf("broker accepted %d provider connections, want exactly 1", got)
	}
	if v := value(e.broker.Metrics.opens.WithLabelValues("ok")); v != n {
		t.Fatalf("opens{ok} = %v, want %d", v, n)
	}
	waitFor(t, "streams released", func() bool {
		return value(e.broker.Metrics.streams.WithLabelValues("s1")) == 0
	})
	tp.stop()
	e.broker.Close()
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// value reads a gauge or counter.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	m.Write(&d)
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}

// freezer forwards a connection until frozen, then stops moving bytes without closing anything: a
// peer that went silent (power loss, a dropped route), which only keepalives can notice.
type freezer struct {
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
}

func (f *freezer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	up, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	a, b := net.Pipe()
	f.mu.Lock()
	f.conns = append(f.conns, up, a, b)
	f.mu.Unlock()
	go f.copy(up, a)
	go f.copy(a, up)
	return b, nil
}

func (f *freezer) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		frozen := f.frozen
		f.mu.Unlock()
		if err != nil || frozen {
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

func (f *freezer) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	const keepalive = 2 * time.Second
	e := newEnv(t, false, Config{KeepAlive: keepalive})
	f := &freezer{}
	defer f.close()
	tp := e.provider("s1", "loopback", func(p *Provider) {
		p.DialContext = f.dial
		p.Config.KeepAlive = keepalive
		p.Backoff.Min = time.Hour // stay disconnected once dropped
		p.Backoff.Max = time.Hour
	})
	tp.waitConnected(t)
	f.freeze()
	start := time.Now()
	waitFor(t, "broker to drop the silent provider", func() bool { return len(e.broker.Providers("s1")) == 0 })
	waitFor(t, "provider to notice", func() bool { return strings.Contains(tp.logs.String(), "broker connection failed") })
	if d := time.Since(start); d > keepalive+2*time.Second {
		t.Fatalf("silent peer noticed after %v, want within about %v", d, keepalive)
	}
}

func TestStreamCapPerSession(t *testing.T) {
	e := newEnv(t, false, Config{MaxStreams: 2})
	e.provider("s1", "loopback", nil).waitConnected(t)
	target := echoServer(t)
	a, err := e.broker.Dial(context.Background(), req("s1", target))
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.broker.Dial(context.Background(), req("s1", target))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = e.broker.Dial(context.Background(), req("s1", target))
	var de *dial.Error
	if !errors.As(err, &de) || !strings.Contains(de.Reason, "already has 2 streams open") {
		t.Fatalf("third stream: %v, want the session's cap", err)
	}
	a.Close()
	c, err := e.broker.Dial(context.Background(), req("s1", target))
	if err != nil {
		t.Fatalf("after one closed: %v", err)
	}
	c.Close()
}

// TestProviderSaysWhatItReached: a provider pointed at the broker's worker port (an HTTP server),
// or with the other transport than the broker's, or at a silent peer, says so at once, in words.
func TestProviderSaysWhatItReached(t *testing.T) {
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	silent := loopbacktest.Start(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	tlsEnv := newEnv(t, true, Config{})
	plainEnv := newEnv(t, false, Config{})
	tk, _ := tlsEnv.auth.Issue("s1", ticket.RoleProvider, time.Hour)
	tests := []struct {
		name   string
		addr   string
		tls    *tls.Config
		code   string
		reason string
	}{
		{"plaintext provider at the worker port", web.Listener.Addr().String(), nil, RefuseNotBroker, "answered HTTP: that is the broker's worker port; use its --provider-listen address"},
		{"TLS provider at the worker port", web.Listener.Addr().String(), tlsEnv.clientTLS, RefuseNotBroker, "answered HTTP: that is the broker's worker port"},
		{"plaintext provider at a TLS broker", tlsEnv.addr, nil, RefuseTransport, "requires TLS: drop --insecure-plaintext"},
		{"TLS provider at a plaintext broker", plainEnv.addr, tlsEnv.clientTLS, RefuseTransport, "is plaintext (broker --insecure-plaintext)"},
		{"silent peer", silent.Addr().String(), nil, RefuseNotBroker, "did not answer the swarm-tunnel preface"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Provider{Broker: tt.addr, TLS: tt.tls, Credentials: func() (string, string, error) { return "s1", tk.Token, nil }}
			start := time.Now()
			_, err := p.connect(context.Background(), Config{HandshakeTimeout: time.Second}.withDefaults(), slog.Default())
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Code != tt.code || !strings.Contains(ae.Reason, tt.reason) {
				t.Fatalf("connect: %v; want code %s and %q", err, tt.code, tt.reason)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v to say so, want at most 2s", d)
			}
		})
	}
}

// TestProviderStopsAtOnce: a provider that is not connected stops within a second of being asked,
// whether it is waiting to retry or in the middle of a handshake with a silent peer.
func TestProviderStopsAtOnce(t *testing.T) {
	reached := make(chan struct{}, 1)
	silent := loopbacktest.Start(t, func(c net.Conn) {
		reached <- struct{}{}
		io.Copy(io.Discard, c)
	})
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	for _, addr := range []string{silent.Addr().String(), closedAddr} {
		logs := &loopbacktest.LogBuffer{}
		p := &Provider{Broker: addr, Credentials: func() (string, string, error) { return "s1", "v2.p.1.AAAAAAAA." + strings.Repeat("A", 43), nil },
			Dialer: &dial.Direct{Policy: policy.Default}, Config: Config{HandshakeTimeout: time.Minute}, Logger: slog.New(slog.NewTextHandler(logs, nil))}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); p.Run(ctx) }()
		if addr == closedAddr {
			waitFor(t, "the provider to wait for its retry", func() bool { return strings.Contains(logs.String(), "broker connection failed") })
		} else {
			<-reached // the provider is in its handshake with a peer that never answers
		}
		start := time.Now()
		cancel()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Fatalf("provider for %s still running 1s after it was stopped", addr)
		}
		t.Logf("%s: stopped in %v", addr, time.Since(start))
	}
}

func TestProviderDrains(t *testing.T) {
	e := newEnv(t, false, Config{})
	a := e.provider("s1", "loopback", func(p *Provider) { p.DrainTimeout = time.Minute })
	idA := a.waitConnected(t)
	target := echoServer(t)
	c, err := e.broker.Dial(context.Background(), req("s1", target))
	if err != nil {
		t.Fatal(err)
	}
	if c.(*Conn).Provider() != idA {
		t.Fatal("stream not on the only provider")
	}
	b := e.provider("s1", "loopback", nil)
	idB := b.waitConnected(t)

	a.cancel() // a is asked to stop: it drains
	waitFor(t, "provider a to drain", func() bool { return strings.Contains(e.logs.String(), "provider draining") })
	for range 4 {
		n, err := e.broker.Dial(context.Background(), req("s1", target))
		if err != nil {
			t.Fatal(err)
		}
		if got := n.(*Conn).Provider(); got != idB {
			t.Fatalf("new stream went to %s, want %s (a is draining)", got, idB)
		}
		n.Close()
	}
	// The stream a still carries keeps working until it ends by itself.
	if _, err := c.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("stream on the draining provider: %q, %v", buf, err)
	}
	select {
	case <-a.done:
		t.Fatal("provider a quit with a stream still open")
	default:
	}
	c.(*Conn).CloseWrite()
	io.ReadAll(c)
	c.Close()
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("provider a did not quit once its last stream ended")
	}
	if !strings.Contains(a.logs.String(), "drained") {
		t.Fatalf("provider log:\n%s", a.logs.String())
	}
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// sizedTarget sends size bytes on its first connection, then closes it.
func sizedTarget(t testing.TB, size int) policy.Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := c.Write(buf[:min(len(buf), size-sent)]); err != nil {
				return
			}
		}
	}()
	return targetOf(t, ln.Addr())
}

// TestSlowReaderDoesNotStallOtherStreams: a stream whose reader stops reading fills only its own
// window; another stream on the same provider connection moves 64 MiB meanwhile, and the stalled
// stream resumes once it is read again.
func TestSlowReaderDoesNotStallOtherStreams(t *testing.T) {
	const bulk = 64 << 20
	e := newEnv(t, false, Config{})
	stalledTarget := streamTarget(t)
	var fromStalled atomic.Int64 // bytes the provider took from the stalled stream's target
	e.provider("s1", "loopback", func(p *Provider) {
		p.Dialer.(dial.Deciding).Dialer.(*dial.Direct).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil && addr == stalledTarget.String() {
				c = &countingConn{Conn: c, n: &fromStalled}
			}
			return c, err
		}
	}).waitConnected(t)

	stalled, err := e.broker.Dial(context.Background(), req("s1", stalledTarget))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.(*Conn).Reset() // a FIN would leave the provider's side waiting on the full window
	// Nobody reads the stalled stream: once the provider has taken its initial window's worth from
	// the target, the window is (all but one relay buffer) used up and the provider blocks on it.
	waitFor(t, "the stalled stream's window to fill", func() bool { return fromStalled.Load() >= 256<<10 })

	fast, err := e.broker.Dial(context.Background(), req("s1", sizedTarget(t, bulk)))
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	start := time.Now()
	fast.(*Conn).SetReadDeadline(start.Add(30 * time.Second))
	n, err := io.Copy(io.Discard, fast)
	if err != nil || n != bulk {
		t.Fatalf("the other stream moved %d bytes in %v (%v), want %d: the slow reader stalled it", n, time.Since(start), err, bulk)
	}
	t.Logf("64 MiB on the other stream in %v", time.Since(start).Round(time.Millisecond))
	if got := fromStalled.Load(); got > 1<<20 {
		t.Fatalf("the provider took %d bytes for the unread stream: its window did not hold it back", got)
	}

	// The stalled stream was only paused.
	stalled.(*Conn).SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(stalled, make([]byte, 4<<20)); err != nil {
		t.Fatalf("the stalled stream does not resume: %v", err)
	}
}
