package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// recordingDialer stands in for the network: it records every address the proxy tries to reach and
// connects only to addresses in allowed (loopback test servers); anything else is a test failure
// that never leaves the machine.
type recordingDialer struct {
	mu      sync.Mutex
	dialed  []string
	allowed map[string]bool
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dialed = append(d.dialed, addr)
	d.mu.Unlock()
	if !d.allowed[addr] {
		return nil, fmt.Errorf("recording dialer: %s is not a test server", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *recordingDialer) Dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dialed...)
}

// fakeResolver answers from a table; unknown names do not exist.
type fakeResolver map[string][]string

func (r fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	list, ok := r[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, s := range list {
		out = append(out, netip.MustParseAddr(s))
	}
	return out, nil
}

type testProxy struct {
	addr   string
	dialer *recordingDialer
	log    *bytes.Buffer
	logMu  *sync.Mutex
	srv    *Server
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func startProxy(t testing.TB, policySrc string, resolver fakeResolver, allowedAddrs []string, configure ...func(*Server)) *testProxy {
	t.Helper()
	pol, err := policy.Parse("policy.yaml", []byte(policySrc))
	if err != nil {
		t.Fatal(err)
	}
	rd := &recordingDialer{allowed: map[string]bool{}}
	for _, a := range allowedAddrs {
		rd.allowed[a] = true
	}
	holder := policy.NewHolder(pol)
	tp := &testProxy{dialer: rd, log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	tp.srv = &Server{
		Policy: holder,
		Dialer: &dial.Direct{Policy: holder.Load, Resolver: resolver, DialContext: rd.DialContext, Timeout: 2 * time.Second},
		Log:    accesslog.NewWriter(lockedWriter{tp.logMu, tp.log}),
	}
	for _, c := range configure {
		c(tp.srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- tp.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tp.srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return tp
}

func (tp *testProxy) records(t *testing.T) []string {
	tp.logMu.Lock()
	defer tp.logMu.Unlock()
	return strings.Split(strings.TrimSpace(tp.log.String()), "\n")
}

// roundTrip writes a raw request to the proxy and reads one response.
func roundTrip(t *testing.T, conn net.Conn, br *bufio.Reader, raw string) (*http.Response, string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func dialProxy(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// TestSSRFNeverDials checks refusals with a recording dialer: if the policy were wrong, the dial
// would be recorded (and refused by the dialer), never sent to the network.
func TestSSRFNeverDials(t *testing.T) {
	resolver := fakeResolver{
		"rebind.example":   {"127.0.0.1"},
		"metadata.example": {"169.254.169.254"},
		"mixed.example":    {"10.0.0.7", "fd00:ec2::254"},
	}
	tp := startProxy(t, "mode: discovery\n", resolver, nil)
	tests := []struct{ name, request, wantCode string }{
		{"name resolving to loopback", "GET http://rebind.example/ HTTP/1.1\r\nHost: rebind.example\r\n\r\n", "private_address"},
		{"metadata literal", "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", "private_address"},
		{"metadata by name via CONNECT", "CONNECT metadata.example:80 HTTP/1.1\r\nHost: metadata.example:80\r\n\r\n", "private_address"},
		{"ipv6 metadata literal", "CONNECT [fd00:ec2::254]:80 HTTP/1.1\r\nHost: [fd00:ec2::254]:80\r\n\r\n", "private_address"},
		{"private and ULA addresses", "GET http://mixed.example/ HTTP/1.1\r\nHost: mixed.example\r\n\r\n", "private_address"},
		{"loopback literal", "GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n", "private_address"},
		{"unspecified literal", "CONNECT 0.0.0.0:22 HTTP/1.1\r\nHost: 0.0.0.0:22\r\n\r\n", "private_address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := dialProxy(t, tp.addr)
			resp, body := roundTrip(t, c, br, tt.request)
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("status %d, want 403; body:\n%s", resp.StatusCode, body)
			}
			if h := resp.Header.Get(HeaderDecision); !strings.Contains(h, "code="+tt.wantCode) {
				t.Errorf("%s = %q, want code=%s", HeaderDecision, h, tt.wantCode)
			}
			if !strings.Contains(body, "which is refused unless an allow rule with a cidr covers it") || !strings.Contains(body, "fix: ") {
				t.Errorf("body does not explain the refusal:\n%s", body)
			}
		})
	}
	if d := tp.dialer.Dialed(); len(d) != 0 {
		t.Fatalf("the proxy tried to connect to %v", d)
	}
}

func TestDialFailures(t *testing.T) {
	// A listener that accepts and never answers, and a port with nothing listening.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	tp := startProxy(t, "mode: discovery\nallow:\n  - cidr: 127.0.0.0/8\n", fakeResolver{"silent.test": {"127.0.0.1"}},
		[]string{silent.Addr().String(), closedAddr}, func(s *Server) { s.UpstreamTimeout = 300 * time.Millisecond })
	silentPort := silent.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name, request string
		status        int
		wantErr       string
	}{
		{"unknown name", "GET http://nowhere.test/ HTTP/1.1\r\nHost: nowhere.test\r\n\r\n", 502, "no such host"},
		{"refused", fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: x\r\n\r\n", closedAddr), 502, "connection refused"},
		{"refused via CONNECT", fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n", closedAddr), 502, "connection refused"},
		{"no response headers", fmt.Sprintf("GET http://silent.test:%d/ HTTP/1.1\r\nHost: x\r\n\r\n", silentPort), 504, "did not send response headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := dialProxy(t, tp.addr)
			resp, body := roundTrip(t, c, br, tt.request)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.wantErr) || resp.Header.Get(HeaderError) == "" {
				t.Fatalf("status %d %s=%q body:\n%s\nwant %d and %q", resp.StatusCode, HeaderError, resp.Header.Get(HeaderError), body, tt.status, tt.wantErr)
			}
		})
	}
}

// TestUpgradeRelaysBothWays runs a WebSocket-style upgrade through the proxy: after the 101, bytes
// flow both ways until the client closes.
// echoUpgradeServer accepts "Upgrade: echo" requests and echoes bytes after its 101.
func echoUpgradeServer(t *testing.T) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw)
	}))
	t.Cleanup(up.Close)
	return up
}

// upgradeThroughProxy starts a proxy that allows upAddr and upgrades a connection through it to
// upAddr's echo protocol.
func upgradeThroughProxy(t *testing.T, upAddr string) (*testProxy, net.Conn, *bufio.Reader) {
	t.Helper()
	tp := startProxy(t, "mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n", nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", upAddr, upAddr)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return tp, c, br
}

func TestUpgradeRelaysBothWays(t *testing.T) {
	up := echoUpgradeServer(t)
	upAddr := up.Listener.Addr().String()
	tp, c, br := upgradeThroughProxy(t, upAddr)
	for _, msg := range []string{"hello", "second message"} {
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, got, err)
		}
	}
	c.Close()
	loopbacktest.Eventually(t, "the 101 record", func() bool { return strings.Contains(strings.Join(tp.records(t), "\n"), `"status":101`) })
	rec := tp.records(t)[0]
	if !strings.Contains(rec, `"bytes_in":19`) || !strings.Contains(rec, `"bytes_out":19`) {
		t.Errorf("upgraded bytes not counted: %s", rec)
	}
}

// TestKeepAliveDecidesEachRequest sends an allowed, a blocked and another allowed request on one
// client connection: each is decided and logged on its own and the connection stays usable.
func TestKeepAliveDecidesEachRequest(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", up.Listener.Addr().(*net.TCPAddr).Port)
	tp := startProxy(t, pol, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/a HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "hello /a" {
		t.Fatalf("first: %d %q", resp.StatusCode, body)
	}
	resp, body = roundTrip(t, c, br, "POST http://blocked.test/upload HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: 5\r\n\r\nhello")
	if resp.StatusCode != 403 || !strings.Contains(body, "no allow rule matches blocked.test:80") {
		t.Fatalf("second: %d %q", resp.StatusCode, body)
	}
	resp, body = roundTrip(t, c, br, fmt.Sprintf("PUT http://%s/c HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n\r\nabc", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "hello /c" {
		t.Fatalf("third: %d %q", resp.StatusCode, body)
	}
	recs := tp.records(t)
	if len(recs) != 3 || !strings.Contains(recs[1], `"decision":"deny"`) || !strings.Contains(recs[2], `"bytes_out":3`) {
		t.Fatalf("records:\n%s", strings.Join(recs, "\n"))
	}
}

func TestRefusedBodyIsDrainedSoClientSees403(t *testing.T) {
	tp := startProxy(t, "mode: enforce\n", nil, nil)
	c, br := dialProxy(t, tp.addr)
	body := strings.Repeat("x", 100<<10)
	resp, text := roundTrip(t, c, br, fmt.Sprintf("POST http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	if resp.StatusCode != 403 || !strings.Contains(text, "swarm-proxy blocked blocked.test:80") {
		t.Fatalf("%d %q", resp.StatusCode, text)
	}
}

func TestClientNotAllowed(t *testing.T) {
	tp := startProxy(t, "mode: discovery\n", nil, nil, func(s *Server) {
		s.AllowClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	})
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
	if resp.StatusCode != 403 || !strings.Contains(body, "blocked example.test:80") || !strings.Contains(body, "client 127.0.0.1 is not in --allow-clients") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if rec := tp.records(t)[0]; !strings.Contains(rec, `"host":"example.test","port":80`) || !strings.Contains(rec, `"error":"client_not_allowed"`) {
		t.Fatalf("record %s: want the target and the reason", rec)
	}
	if d := tp.dialer.Dialed(); len(d) != 0 {
		t.Fatalf("dialed %v for a refused client", d)
	}
}

type staticAuth struct{}

func (staticAuth) Authenticate(user, pass string) (string, string, error) {
	if user == "s1" && (pass == "good" || pass == "other") {
		return "s1", "id-" + pass, nil
	}
	return "", "", errors.New("wrong token for session " + user)
}

func TestProxyAuthentication(t *testing.T) {
	tp := startProxy(t, "mode: enforce\n", nil, nil, func(s *Server) { s.Auth = staticAuth{} })
	tests := []struct{ name, header, want string }{
		{"missing", "", "proxy credentials required"},
		{"wrong", "Proxy-Authorization: Basic czE6YmFk\r\n", "wrong token for session s1"},
		{"not basic", "Proxy-Authorization: Bearer x\r\n", "must use the Basic scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := dialProxy(t, tp.addr)
			resp, body := roundTrip(t, c, br, "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n"+tt.header+"\r\n")
			if resp.StatusCode != http.StatusProxyAuthRequired || resp.Header.Get("Proxy-Authenticate") == "" || !strings.Contains(body, tt.want) {
				t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, body)
			}
		})
	}
	c, br := dialProxy(t, tp.addr)
	resp, _ := roundTrip(t, c, br, "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nProxy-Authorization: Basic czE6Z29vZA==\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("good credentials: status %d, want the policy's 403", resp.StatusCode)
	}
	recs := tp.records(t)
	if last := recs[len(recs)-1]; !strings.Contains(last, `"session":"s1"`) || strings.Contains(last, "good") {
		t.Fatalf("record lacks the session or leaks the token: %s", last)
	}
}

// TestTruncatedResponseIsAbortedAndLogged: when the target's response breaks off in the middle of
// its body, the client's connection is aborted (a chunked response must not get its final chunk, a
// sized one must come up short) and the request still gets its log record, saying why.
func TestTruncatedResponseIsAbortedAndLogged(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !chunked {
					w.Header().Set("Content-Length", "1000000")
				}
				w.Write(bytes.Repeat([]byte("x"), 100<<10))
				http.NewResponseController(w).Flush()
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
			}))
			defer up.Close()
			upAddr := up.Listener.Addr().String()
			pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", up.Listener.Addr().(*net.TCPAddr).Port)
			tp := startProxy(t, pol, nil, []string{upAddr})
			c, br := dialProxy(t, tp.addr)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "GET http://%s/big HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil {
				t.Fatalf("read %d bytes of a broken-off body with no error: the truncation was hidden", n)
			}
			var rec accesslog.Record
			for _, line := range tp.records(t) {
				json.Unmarshal([]byte(line), &rec)
			}
			if rec.Path != "/big" || rec.Error != "upstream" || !strings.Contains(rec.Reason, "broke off") || rec.BytesIn < n {
				t.Fatalf("record %+v: want error upstream, a reason saying the body broke off and bytes_in >= %d", rec, n)
			}
		})
	}
}

// TestReloadRetiresBusyUpstreamConnections: an upstream connection that was busy when the policy
// changed must not be reused afterwards, or a target the new policy refuses would stay reachable.
func TestReloadRetiresBusyUpstreamConnections(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	port := up.Listener.Addr().(*net.TCPAddr).Port
	tp := startProxy(t, "mode: discovery\nallow:\n  - cidr: 127.0.0.1/32\n", fakeResolver{"up.test": {"127.0.0.1"}},
		[]string{up.Listener.Addr().String()})

	slow := make(chan int, 1)
	go func() {
		c, err := net.Dial("tcp", tp.addr)
		if err != nil {
			slow <- 0
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "GET http://up.test:%d/slow HTTP/1.1\r\nHost: up.test\r\n\r\n", port)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			slow <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		slow <- resp.StatusCode
	}()
	<-entered
	newPol, err := policy.Parse("policy.yaml", []byte("mode: discovery\n"))
	if err != nil {
		t.Fatal(err)
	}
	tp.srv.Policy.Store(newPol)
	tp.srv.PolicyChanged()
	// A request after the reload and before the busy connection is free again: with one transport
	// for all policies it would make that transport keep connections that become idle.
	c0, br0 := dialProxy(t, tp.addr)
	if resp, _ := roundTrip(t, c0, br0, "GET http://nowhere.test/ HTTP/1.1\r\nHost: nowhere.test\r\n\r\n"); resp.StatusCode != 502 {
		t.Fatalf("unknown name: %d, want 502", resp.StatusCode)
	}
	close(release)
	if code := <-slow; code != 200 {
		t.Fatalf("the request in flight during the reload got %d, want 200", code)
	}
	// The connection that served it is idle again now; the new policy refuses loopback.
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://up.test:%d/x HTTP/1.1\r\nHost: up.test\r\n\r\n", port))
	if resp.StatusCode != 403 || !strings.Contains(body, "loopback") {
		t.Fatalf("after the reload: %d %q, want 403 for a loopback address", resp.StatusCode, body)
	}
}

// TestStalledBodyIsTimedOut: a client that announces a body and stops sending it is timed out after
// the idle timeout, whether its request was refused (the proxy still answers 403) or allowed (the
// connection is closed and the request logged).
func TestStalledBodyIsTimedOut(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", up.Listener.Addr().(*net.TCPAddr).Port)
	tp := startProxy(t, pol, nil, []string{upAddr}, func(s *Server) { s.IdleTimeout = 300 * time.Millisecond })

	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, "POST http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: 1000\r\n\r\nabc")
	if resp.StatusCode != 403 || !strings.Contains(body, "blocked.test") {
		t.Fatalf("refused request with a stalled body: %d %q", resp.StatusCode, body)
	}

	c, br = dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST http://%s/upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000\r\n\r\nabc", upAddr, upAddr)
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("the proxy did not close the stalled connection: %v", err)
	}
	var rec accesslog.Record
	for _, line := range tp.records(t) {
		json.Unmarshal([]byte(line), &rec)
	}
	if rec.Path != "/upload" || rec.Error == "" || rec.BytesOut != 3 {
		t.Fatalf("record %+v: want the upload logged with an error and bytes_out 3", rec)
	}
}

// TestShutdownWaitsForUpgradedConnection: an upgraded (101) connection is a tunnel like CONNECT's:
// Shutdown lets it finish and its record is written before Shutdown returns.
func TestShutdownWaitsForUpgradedConnection(t *testing.T) {
	up := echoUpgradeServer(t)
	upAddr := up.Listener.Addr().String()
	tp, c, br := upgradeThroughProxy(t, upAddr)
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- tp.srv.Shutdown(ctx)
	}()
	// The server is shutting down once it refuses new connections; the upgraded one still works.
	loopbacktest.Eventually(t, "the listener to close", func() bool {
		probe, err := net.Dial("tcp", tp.addr)
		if err == nil {
			probe.Close()
		}
		return err != nil
	})
	io.WriteString(c, "after shutdown began")
	got := make([]byte, len("after shutdown began"))
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatalf("the upgraded connection was cut when shutdown began: %v", err)
	}
	c.Close()
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v, want nil after the connection finished", err)
	}
	if recs := tp.records(t); len(recs) != 1 || !strings.Contains(recs[0], `"status":101`) {
		t.Fatalf("records when Shutdown returned: %v", recs)
	}
}

// TestResponseHeadersPassUnchanged: the proxy adds no Content-Type the target did not send, and
// adds Via to the response as to the request.
func TestResponseHeadersPassUnchanged(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil
		io.WriteString(w, "<html>no declared type</html>")
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, "mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n", nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "<html>no declared type</html>" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Fatalf("Content-Type %q added by the proxy", ct)
	}
	if via := resp.Header.Get("Via"); via != "1.1 swarm-proxy" {
		t.Fatalf("Via %q, want 1.1 swarm-proxy on the forwarded response", via)
	}
}

// TestForwardersDropUnusedSessions: a transport that no request used for upstreamIdle is dropped
// at the next sweep, so a broker does not keep one per session it ever served; one in use stays.
func TestForwardersDropUnusedSessions(t *testing.T) {
	s := &Server{Policy: policy.NewHolder(policy.Default())}
	s.init()
	f := s.forwarders
	clock := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return clock }
	pol := s.Policy.Load()
	for i := range 100 {
		f.get(fmt.Sprintf("s%d", i), pol)
	}
	busy := f.get("busy", pol)
	clock = clock.Add(upstreamIdle / 2)
	if f.get("busy", pol) != busy {
		t.Fatal("a session's transport changed while in use")
	}
	clock = clock.Add(upstreamIdle / 2)
	f.get("busy", pol) // sweeps: the 100 others have been unused for upstreamIdle
	if n := len(f.by); n != 1 {
		t.Fatalf("%d transports kept after the sweep, want only the busy session's", n)
	}
	if f.get("busy", pol) != busy {
		t.Fatal("the busy session's transport was dropped")
	}
}

// TestEarlyAnswerLingers: a target that answers an upload at once (413) without reading it. The
// client sends its whole body before it reads the answer, as simple clients do; the proxy reads
// and discards what the target did not take, so the client's writes do not meet a reset that
// would also destroy the 413 it has not read yet.
func TestEarlyAnswerLingers(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", up.Listener.Addr().(*net.TCPAddr).Port)
	tp := startProxy(t, pol, nil, []string{upAddr})

	const size = 32 << 20
	c, br := dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "PUT http://%s/big HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", upAddr, upAddr, size)
	chunk := make([]byte, 1<<20)
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("after %d of %d body bytes: %v (the proxy closed the connection on an unread upload)", sent, size, err)
		}
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "too large") {
		t.Fatalf("answer %d %q, want the target's 413", resp.StatusCode, body)
	}
}
