package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// inspectPolicy inspects api.example.com (GET/HEAD under /repos/myorg, POST to issues),
// read-only.example.com and plain.example.com; pass.example.com stays passthrough. Every name is
// the loopback test server, reached through the cidr rule.
const inspectPolicy = `mode: enforce
allow:
  - host: api.example.com
    name: github
    http:
      - methods: [GET, HEAD]
        paths: ["/repos/myorg/**"]
      - methods: [POST]
        paths: ["/repos/myorg/*/issues"]
  - host: read-only.example.com
    access: read-only
  - host: pass.example.com
  - cidr: 127.0.0.1/32
`

var inspectResolver = fakeResolver{"api.example.com": {"127.0.0.1"}, "read-only.example.com": {"127.0.0.1"}, "pass.example.com": {"127.0.0.1"}}

// inspectFixture is a proxy that inspects with a fresh CA, and an HTTPS target on loopback whose
// certificate names *.example.com.
type inspectFixture struct {
	tp       *testProxy
	up       *httptest.Server
	port     string
	hits     atomic.Int32  // requests the target served
	release  chan struct{} // /repos/myorg/stream waits on it between its two parts
	protos   chan int      // the target's request ProtoMajor, per request
	caPool   *x509.CertPool
	upPool   *x509.CertPool
	proxyURL *url.URL
}

func newInspectFixture(t *testing.T, configure ...func(*Server)) *inspectFixture {
	t.Helper()
	fx := &inspectFixture{protos: make(chan int, 100), release: make(chan struct{})}
	fx.up = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fx.hits.Add(1)
		fx.protos <- r.ProtoMajor
		if r.URL.Path == "/repos/myorg/stream" {
			w.Write(streamPart(0))
			http.NewResponseController(w).Flush()
			select {
			case <-fx.release:
				w.Write(streamPart(1))
			case <-r.Context().Done():
			}
			return
		}
		if r.Header.Get("Upgrade") == "websocket" {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			brw.Flush()
			io.Copy(conn, brw)
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s body=%q", r.Method, r.URL.EscapedPath(), r.Host, body)
	}))
	fx.up.EnableHTTP2 = true
	fx.up.StartTLS()
	t.Cleanup(fx.up.Close)
	upAddr := fx.up.Listener.Addr().String()
	_, fx.port, _ = net.SplitHostPort(upAddr)
	fx.upPool = x509.NewCertPool()
	fx.upPool.AddCert(fx.up.Certificate())

	ca, err := inspect.CreateCA(t.TempDir(), "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fx.caPool = x509.NewCertPool()
	fx.caPool.AddCert(ca.Cert)
	cfg := append([]func(*Server){func(s *Server) {
		s.Inspector = &inspect.Minter{CA: ca}
		s.UpstreamTLS = &tls.Config{RootCAs: fx.upPool}
	}}, configure...)
	fx.tp = startProxy(t, inspectPolicy, inspectResolver, []string{upAddr}, cfg...)
	fx.proxyURL = &url.URL{Scheme: "http", Host: fx.tp.addr}
	return fx
}

// client is an agent's HTTP client that trusts only the inspection CA.
func (fx *inspectFixture) client(h2 bool) *http.Client {
	tr := &http.Transport{Proxy: http.ProxyURL(fx.proxyURL), TLSClientConfig: &tls.Config{RootCAs: fx.caPool}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (fx *inspectFixture) url(host, path string) string {
	return "https://" + host + ":" + fx.port + path
}

func do(t *testing.T, c *http.Client, method, u, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func parseRecords(t *testing.T, tp *testProxy) []accesslog.Record {
	t.Helper()
	var out []accesslog.Record
	for _, line := range tp.records(t) {
		if line == "" {
			continue
		}
		var r accesslog.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// waitRecord waits for a record that match accepts.
func waitRecord(t *testing.T, tp *testProxy, match func(accesslog.Record) bool) accesslog.Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range parseRecords(t, tp) {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching record in %v", tp.records(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestInspectedRequestsAreDecidedOneByOne(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client h2 %v", h2), func(t *testing.T) {
			fx := newInspectFixture(t)
			c := fx.client(h2)
			var conns, reused atomic.Int32
			trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
				conns.Add(1)
				if i.Reused {
					reused.Add(1)
				}
			}}
			send := func(method, path, body string) (*http.Response, string) {
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), method, fx.url("api.example.com", path), strings.NewReader(body))
				resp, err := c.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", method, path, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return resp, string(b)
			}
			resp, body := send("GET", "/repos/myorg/tool?ref=main", "")
			want := "GET /repos/myorg/tool api.example.com:" + fx.port + ` body=""`
			if resp.StatusCode != 200 || body != want {
				t.Fatalf("allowed GET: %d %q, want %q", resp.StatusCode, body, want)
			}
			if h2 && resp.ProtoMajor != 2 {
				t.Errorf("client side: HTTP/%d, want HTTP/2 (ALPN h2)", resp.ProtoMajor)
			}
			if p := <-fx.protos; p != 2 {
				t.Errorf("target side: HTTP/%d, want HTTP/2 (the target offers h2)", p)
			}
			if resp.TLS == nil || resp.TLS.PeerCertificates[0].Issuer.CommonName != "swarm-proxy inspection CA on test" {
				t.Errorf("the client did not get a leaf from the inspection CA: %+v", resp.TLS)
			}
			resp, body = send("POST", "/repos/myorg/tool/issues", `{"title":"x"}`)
			if resp.StatusCode != 200 || !strings.Contains(body, `body="{\"title\":\"x\"}"`) {
				t.Fatalf("allowed POST: %d %q", resp.StatusCode, body)
			}
			<-fx.protos
			hits := fx.hits.Load()
			for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
				resp, body = send(m, "/repos/myorg/tool", "data")
				if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get(HeaderDecision), "deny; code=http_rule_not_matched; rule=github; reason=") {
					t.Fatalf("%s: %d %q %q", m, resp.StatusCode, resp.Header.Get(HeaderDecision), body)
				}
				if !strings.Contains(body, m+" /repos/myorg/tool is not allowed by rule github") {
					t.Errorf("%s: body does not name method, path and rule: %q", m, body)
				}
			}
			for _, p := range []string{"/repos/myorg/%2e%2e/other", "/repos/myorg/a%2Fb", "/repos/myorg/x/..;/y", "/repos/%6Dyorg/x"} {
				resp, body = send("GET", p, "")
				if resp.StatusCode != 400 || !strings.Contains(resp.Header.Get(HeaderDecision), "code=ambiguous_path") {
					t.Fatalf("GET %s: %d %q %q", p, resp.StatusCode, resp.Header.Get(HeaderDecision), body)
				}
			}
			// The connection stayed usable after every refusal.
			resp, _ = send("GET", "/repos/myorg/again", "")
			if resp.StatusCode != 200 {
				t.Fatalf("GET after refusals: %d", resp.StatusCode)
			}
			<-fx.protos
			if fx.hits.Load() != hits+1 {
				t.Errorf("the target saw %d refused requests", fx.hits.Load()-hits-1)
			}
			if h2 {
				if conns.Load()-reused.Load() != 1 {
					t.Errorf("%d connections for %d requests, want one", conns.Load()-reused.Load(), conns.Load())
				}
			}
			c.CloseIdleConnections()
			tunnel := waitRecord(t, fx.tp, func(r accesslog.Record) bool { return r.Method == "CONNECT" })
			if !tunnel.Inspected || tunnel.TunnelID != tunnel.RequestID || tunnel.Status != 200 || tunnel.BytesIn == 0 || tunnel.BytesOut == 0 {
				t.Errorf("tunnel record %+v", tunnel)
			}
			var inner int
			for _, r := range parseRecords(t, fx.tp) {
				if r.Method == "CONNECT" {
					continue
				}
				inner++
				if !r.Inspected || r.TunnelID != tunnel.RequestID || r.Host != "api.example.com" || r.Status != 200 && r.Rule != "github" || r.Path == "" {
					t.Errorf("inspected request record %+v", r)
				}
				if r.Status == 403 && r.Error != accesslog.ErrorHTTPRuleNotMatched || r.Status == 400 && r.Error != accesslog.ErrorAmbiguousPath {
					t.Errorf("refusal record %+v", r)
				}
			}
			if inner != 11 {
				t.Errorf("%d request records, want 11", inner)
			}
		})
	}
}

func TestInspectedUpstreamMustVerify(t *testing.T) {
	fx := newInspectFixture(t, func(s *Server) { s.UpstreamTLS = &tls.Config{RootCAs: x509.NewCertPool()} })
	resp, body := do(t, fx.client(false), "GET", fx.url("read-only.example.com", "/x"), "")
	if resp.StatusCode != 502 || !strings.HasPrefix(resp.Header.Get(HeaderError), "upstream_tls; code=upstream_tls") || !strings.Contains(body, "certificate signed by unknown authority") {
		t.Fatalf("%d %q %q", resp.StatusCode, resp.Header.Get(HeaderError), body)
	}
	if fx.hits.Load() != 0 {
		t.Fatal("a request reached a target whose certificate did not verify")
	}
	if rec := waitRecord(t, fx.tp, func(r accesslog.Record) bool { return r.Path == "/x" }); rec.Error != accesslog.ErrorUpstreamTLS || rec.Status != 502 {
		t.Errorf("record %+v", rec)
	}
}

func TestReadOnlyRuleAndPlainHTTP(t *testing.T) {
	fx := newInspectFixture(t)
	c := fx.client(false)
	for _, m := range []string{"GET", "HEAD", "OPTIONS"} {
		if resp, _ := do(t, c, m, fx.url("read-only.example.com", "/simple/pkg/"), ""); resp.StatusCode != 200 {
			t.Errorf("%s: %d", m, resp.StatusCode)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		if resp, _ := do(t, c, m, fx.url("read-only.example.com", "/simple/pkg/"), "x"); resp.StatusCode != 403 {
			t.Errorf("%s: %d", m, resp.StatusCode)
		}
	}
	// The same rules for a plain http:// request through the proxy: no way around them by scheme.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Method) }))
	defer plain.Close()
	_, plainPort, _ := net.SplitHostPort(plain.Listener.Addr().String())
	fx.tp.dialer.mu.Lock()
	fx.tp.dialer.allowed[plain.Listener.Addr().String()] = true
	fx.tp.dialer.mu.Unlock()
	pc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(fx.proxyURL)}}
	resp, body := do(t, pc, "GET", "http://read-only.example.com:"+plainPort+"/a", "")
	if resp.StatusCode != 200 || body != "GET" {
		t.Errorf("plain GET: %d %q", resp.StatusCode, body)
	}
	resp, _ = do(t, pc, "DELETE", "http://read-only.example.com:"+plainPort+"/a", "")
	if resp.StatusCode != 403 || !strings.Contains(resp.Header.Get(HeaderDecision), "code=http_rule_not_matched") {
		t.Errorf("plain DELETE: %d %q", resp.StatusCode, resp.Header.Get(HeaderDecision))
	}
	resp, _ = do(t, pc, "GET", "http://read-only.example.com:"+plainPort+"/a/../b", "")
	if resp.StatusCode != 400 || !strings.Contains(resp.Header.Get(HeaderDecision), "code=ambiguous_path") {
		t.Errorf("plain ambiguous GET: %d %q", resp.StatusCode, resp.Header.Get(HeaderDecision))
	}
	rec := waitRecord(t, fx.tp, func(r accesslog.Record) bool { return r.Method == "DELETE" && r.Port != 0 && r.TunnelID == "" })
	if !rec.Inspected || rec.Decision != accesslog.DecisionDeny {
		t.Errorf("plain DELETE record %+v", rec)
	}
}

// TestPassthroughRuleKeepsTargetCertificate: a rule without http/access/inspect is not inspected:
// the client's TLS reaches the target, which presents its own certificate.
func TestPassthroughRuleKeepsTargetCertificate(t *testing.T) {
	fx := newInspectFixture(t)
	tr := &http.Transport{Proxy: http.ProxyURL(fx.proxyURL), TLSClientConfig: &tls.Config{RootCAs: fx.upPool}}
	resp, _ := do(t, &http.Client{Transport: tr}, "DELETE", fx.url("pass.example.com", "/anything"), "")
	if resp.StatusCode != 200 || !resp.TLS.PeerCertificates[0].Equal(fx.up.Certificate()) {
		t.Fatalf("%d, certificate %v", resp.StatusCode, resp.TLS.PeerCertificates[0].Subject)
	}
	tr.CloseIdleConnections()
	rec := waitRecord(t, fx.tp, func(r accesslog.Record) bool { return r.Method == "CONNECT" })
	if rec.Inspected || rec.TunnelID != "" {
		t.Errorf("passthrough tunnel logged as inspected: %+v", rec)
	}
}

// connectThrough opens a CONNECT tunnel to host:port through the proxy at addr.
func connectThrough(t *testing.T, addr, hostport string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := dialProxy(t, addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hostport, hostport)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", hostport, resp, err)
	}
	return c, br
}

func TestInspectedTunnelRefusals(t *testing.T) {
	fx := newInspectFixture(t)
	connect := func(host string) (net.Conn, *bufio.Reader) { return connectThrough(t, fx.tp.addr, host+":"+fx.port) }
	// An SNI for another host than the CONNECT's gets no certificate.
	c, _ := connect("api.example.com")
	tc := tls.Client(c, &tls.Config{ServerName: "evil.example.com", RootCAs: fx.caPool})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake with a mismatched SNI succeeded")
	}
	rec := waitRecord(t, fx.tp, func(r accesslog.Record) bool { return r.Method == "CONNECT" && r.Error != "" })
	if rec.Error != accesslog.ErrorClientTLS || !strings.Contains(rec.Reason, `SNI "evil.example.com"`) {
		t.Errorf("record %+v", rec)
	}
	// A Host header naming another host inside the tunnel is refused before any decision or dial.
	c, br := connect("api.example.com")
	tc = tls.Client(c, &tls.Config{ServerName: "api.example.com", RootCAs: fx.caPool})
	tbr := bufio.NewReader(tc)
	resp, _ := roundTrip(t, tc, tbr, "GET /repos/myorg/x HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")
	if resp.StatusCode != 400 || fx.hits.Load() != 0 {
		t.Errorf("domain fronting: %d, target hits %d", resp.StatusCode, fx.hits.Load())
	}
	_ = br
	// Plain HTTP inside an inspected tunnel is decided the same way.
	c, br = connect("read-only.example.com")
	resp, _ = roundTrip(t, c, br, fmt.Sprintf("DELETE /x HTTP/1.1\r\nHost: read-only.example.com:%s\r\n\r\n", fx.port))
	if resp.StatusCode != 403 {
		t.Errorf("plain DELETE in a tunnel: %d", resp.StatusCode)
	}
	// A raw tunnel (SOCKS5) to a rule that inspects is refused.
	req := fx.tp.srv.NewRequest(netip.MustParseAddrPort("127.0.0.1:1"), "SOCKS5")
	req.Target = policy.Target{Host: "api.example.com", Port: 443}
	_, err := fx.tp.srv.Dial(context.Background(), req)
	var de *dial.Error
	if !errors.As(err, &de) || de.Kind != dial.KindDenied {
		t.Errorf("raw tunnel to an inspected rule: %v", err)
	}
}

func TestInspectWithoutCARefuses(t *testing.T) {
	tp := startProxy(t, inspectPolicy, inspectResolver, nil)
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
	if resp.StatusCode != 502 || !strings.Contains(body, "--ca-cert") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if d := tp.dialer.Dialed(); len(d) != 0 {
		t.Fatalf("dialed %v", d)
	}
}

// TestInspectedUpgrade: a WebSocket-style upgrade on an inspected connection is allowed when its
// method and path are, and bytes flow both ways after the 101.
func TestInspectedUpgrade(t *testing.T) {
	fx := newInspectFixture(t)
	c, _ := connectThrough(t, fx.tp.addr, "api.example.com:"+fx.port)
	tc := tls.Client(c, &tls.Config{ServerName: "api.example.com", RootCAs: fx.caPool, NextProtos: []string{"http/1.1"}})
	tbr := bufio.NewReader(tc)
	fmt.Fprintf(tc, "GET /repos/myorg/ws HTTP/1.1\r\nHost: api.example.com:%s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", fx.port)
	resp, err := http.ReadResponse(tbr, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(tc, "hello")
	got := make([]byte, 5)
	if _, err := io.ReadFull(tbr, got); err != nil || string(got) != "hello" {
		t.Fatalf("echo: %q %v", got, err)
	}
	tc.Close()
	// An upgrade to a path the rule does not allow is refused like any request.
	c, _ = connectThrough(t, fx.tp.addr, "api.example.com:"+fx.port)
	tc = tls.Client(c, &tls.Config{ServerName: "api.example.com", RootCAs: fx.caPool, NextProtos: []string{"http/1.1"}})
	tbr = bufio.NewReader(tc)
	resp, _ = roundTrip(t, tc, tbr, fmt.Sprintf("GET /other/ws HTTP/1.1\r\nHost: api.example.com:%s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", fx.port))
	if resp.StatusCode != 403 {
		t.Fatalf("upgrade to a refused path: %d", resp.StatusCode)
	}
}

// TestRequestCodesAreErrorKinds: the request-stage policy codes are the access log's error kinds.
func TestRequestCodesAreErrorKinds(t *testing.T) {
	if string(policy.CodeHTTPRuleNotMatched) != accesslog.ErrorHTTPRuleNotMatched || string(policy.CodeAmbiguousPath) != accesslog.ErrorAmbiguousPath {
		t.Fatal("policy codes and accesslog kinds differ")
	}
}

// TestInspectedUpload: a request body of several MiB crosses the inspected tunnel byte for byte.
func TestInspectedUpload(t *testing.T) {
	fx := newInspectFixture(t)
	body := make([]byte, 3<<20)
	for i := range body {
		body[i] = byte(i*31 + i>>9)
	}
	resp, got := do(t, fx.client(false), "POST", fx.url("api.example.com", "/repos/myorg/tool/issues"), string(body))
	want := fmt.Sprintf("POST /repos/myorg/tool/issues api.example.com:%s body=%q", fx.port, body)
	if resp.StatusCode != 200 || got != want {
		t.Fatalf("%d, %d bytes back, want %d", resp.StatusCode, len(got), len(want))
	}
}

// streamPart is part i of /repos/myorg/stream: 200 KiB, more than one write of the forwarder's
// copy buffer and many TLS records.
func streamPart(i int) []byte {
	b := make([]byte, 200<<10)
	for j := range b {
		b[j] = byte(j*7 + j>>11 + i*13)
	}
	return b
}

// TestInspectedResponseIsNotHeldBack: the records of a response write are gathered into one
// write to the client and sent when the write returns, never held until more comes: the client
// gets the first part of a response whose target waits for the client to have it before it
// sends the rest.
func TestInspectedResponseIsNotHeldBack(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client h2 %v", h2), func(t *testing.T) {
			fx := newInspectFixture(t)
			resp, err := fx.client(h2).Get(fx.url("api.example.com", "/repos/myorg/stream"))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := make(chan error)
			go func() {
				b := make([]byte, 200<<10)
				_, err := io.ReadFull(resp.Body, b)
				if err == nil && !bytes.Equal(b, streamPart(0)) {
					err = errors.New("the first part differs")
				}
				got <- err
			}()
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("the first part, while the target waits for the client to have it: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the first part did not reach the client while the target waited")
			}
			close(fx.release)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(rest, streamPart(1)) {
				t.Fatalf("the second part: %d bytes, %v", len(rest), err)
			}
		})
	}
}

// recordingConn records each write made to it.
type recordingConn struct {
	net.Conn
	writes [][]byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func TestTunnelConnGathers(t *testing.T) {
	rc := &recordingConn{}
	tc := &tunnelConn{Conn: rc}
	tc.Write([]byte("alert"))
	if len(rc.writes) != 1 {
		t.Fatalf("a write outside gather was held: %q", rc.writes)
	}
	tc.gather()
	tc.Write([]byte("one"))
	tc.Write([]byte("two"))
	if len(rc.writes) != 1 {
		t.Fatalf("gathered writes were sent before send: %q", rc.writes)
	}
	if err := tc.send(); err != nil {
		t.Fatal(err)
	}
	if len(rc.writes) != 2 || string(rc.writes[1]) != "onetwo" {
		t.Fatalf("writes %q, want the gathered ones in one", rc.writes)
	}
	tc.send() // nothing gathered: no write
	tc.Write([]byte("three"))
	if len(rc.writes) != 3 || string(rc.writes[2]) != "three" {
		t.Fatalf("after send, a write was held: %q", rc.writes)
	}
	// Over the buffer's size, what was gathered goes first, in order, and nothing is lost.
	big := bytes.Repeat([]byte("b"), 200<<10)
	rc.writes = nil
	tc.gather()
	tc.Write([]byte("head"))
	tc.Write(big)
	tc.Write(big[:100<<10])
	tc.Write(big[:100<<10])
	tc.send()
	var all []byte
	for _, w := range rc.writes {
		all = append(all, w...)
	}
	want := slices.Concat([]byte("head"), big, big[:100<<10], big[:100<<10])
	if !bytes.Equal(all, want) || len(rc.writes) != 4 {
		t.Fatalf("%d writes of %d bytes, want 4 of %d", len(rc.writes), len(all), len(want))
	}
	if n := tc.out.Load(); n != int64(len(want)+len("alert")+len("onetwo")+len("three")) {
		t.Errorf("counted %d bytes to the client", n)
	}
}

// chunkConn returns its chunks one per Read, as far as the caller's buffer holds them, then err.
type chunkConn struct {
	net.Conn
	chunks [][]byte
	err    error
	asked  []int // the size of each Read's buffer
}

func (c *chunkConn) Read(p []byte) (int, error) {
	c.asked = append(c.asked, len(p))
	if len(c.chunks) == 0 {
		return 0, c.err
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	if len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func TestReadAhead(t *testing.T) {
	small, record, burst := streamPart(0)[:300], streamPart(1)[:readAheadMin], streamPart(2)[:100<<10]
	c := &chunkConn{chunks: [][]byte{small, record, burst, small}, err: io.EOF}
	a := &readAhead{}
	var got []byte
	p := make([]byte, 20<<10) // what crypto/tls asks for: the room in its record buffer
	read := func() (int, error) {
		n, err := a.read(c, p)
		got = append(got, p[:n]...)
		return n, err
	}
	// Small reads go straight to the connection, with no buffer held.
	if n, err := read(); n != len(small) || err != nil || a.buf != nil || c.asked[0] != len(p) {
		t.Fatalf("first read: %d %v, buffer held %v, asked %v", n, err, a.buf != nil, c.asked)
	}
	// A record's worth: the body streams, so the next read is a large one into the pool's buffer.
	read()
	read()
	if c.asked[2] != readAheadSize || a.buf == nil {
		t.Fatalf("reads asked %v, want the third of %d", c.asked, readAheadSize)
	}
	for a.buf != nil {
		read()
	}
	if len(c.asked) != 3 {
		t.Fatalf("reads from the connection while its buffer held bytes: %v", c.asked)
	}
	// The burst filled the buffer's share: streaming goes on until a read brings little.
	read()
	if a.buf != nil || len(c.asked) != 4 {
		t.Fatalf("after a short read: buffer held %v, reads %v", a.buf != nil, c.asked)
	}
	if n, err := read(); n != 0 || err != io.EOF {
		t.Fatalf("end: %d %v", n, err)
	}
	if want := slices.Concat(small, record, burst, small); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d in order", len(got), len(want))
	}
	if a.streaming || a.buf != nil {
		t.Error("an idle connection holds a buffer or reads ahead")
	}

	// An error that came with bytes is returned once they are.
	c = &chunkConn{chunks: [][]byte{record}, err: io.ErrUnexpectedEOF}
	a = &readAhead{streaming: true}
	c2 := &errConn{chunkConn: c}
	got = nil
	for {
		n, err := a.read(c2, p)
		got = append(got, p[:n]...)
		if err != nil {
			if err != io.ErrUnexpectedEOF || !bytes.Equal(got, record) {
				t.Fatalf("%d bytes then %v", len(got), err)
			}
			break
		}
	}
}

// errConn returns its last chunk together with the error, as a net.Conn may.
type errConn struct{ *chunkConn }

func (c *errConn) Read(p []byte) (int, error) {
	n, _ := c.chunkConn.Read(p)
	if len(c.chunks) == 0 {
		return n, c.err
	}
	return n, nil
}
