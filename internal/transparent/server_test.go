package transparent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

// The world of these tests: names and the documentation addresses they resolve to. Nothing is ever
// dialed at those addresses: the dialer records the address and connects to a loopback server.
var world = fakeResolver{
	"allowed.test":   {netip.MustParseAddr("192.0.2.7")},
	"inspected.test": {netip.MustParseAddr("192.0.2.7")},
	"denied.test":    {netip.MustParseAddr("192.0.2.9")},
}

const serverPolicy = `mode: enforce
allow:
  - host: allowed.test
  - cidr: 192.0.2.7/32
    ports: [25, 80, 443, 8443]
  - host: inspected.test
    http:
      - methods: [GET]
        paths: ["/ok"]
deny:
  - host: denied.test
`

type fixture struct {
	addr   string // the transparent listener
	caPool *x509.CertPool
	log    *loopbacktest.LogBuffer
	mu     sync.Mutex
	dialed []string
	dsts   sync.Map // client IP -> original destination
	cert   tls.Certificate
}

// startServer runs a proxy and a transparent listener on loopback. Connections to port 443 of any
// address reach a loopback TLS server for allowed.test, port 80 a loopback HTTP server, port 25 a
// server that speaks first.
func startServer(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{log: &loopbacktest.LogBuffer{}, cert: testCert(t, "allowed.test")}
	backends := map[string]string{}
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{f.cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tlsLn.Close() })
	go func() {
		for {
			c, err := tlsLn.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }() // echo over TLS
		}
	}()
	backends["443"] = tlsLn.Addr().String()
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s%s", r.Host, r.URL.Path)
	})}
	go hs.Serve(httpLn)
	t.Cleanup(func() { hs.Close() })
	backends["80"] = httpLn.Addr().String()
	smtpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { smtpLn.Close() })
	go func() {
		for {
			c, err := smtpLn.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 smtp ready\r\n"))
			c.Close()
		}
	}()
	backends["25"] = smtpLn.Addr().String()
	// Port 8443: an HTTPS server for inspected.test, reached through inspection.
	upCert := testCert(t, "inspected.test")
	upLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{upCert}})
	if err != nil {
		t.Fatal(err)
	}
	us := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "inspected upstream answers %s %s", r.Host, r.URL.Path)
	})}
	go us.Serve(upLn)
	t.Cleanup(func() { us.Close() })
	backends["8443"] = upLn.Addr().String()
	upPool := x509.NewCertPool()
	upLeaf, _ := x509.ParseCertificate(upCert.Certificate[0])
	upPool.AddCert(upLeaf)
	ca, err := inspect.CreateCA(t.TempDir(), "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.caPool = x509.NewCertPool()
	f.caPool.AddCert(ca.Cert)

	pol, err := policy.Parse("policy.yaml", []byte(serverPolicy))
	if err != nil {
		t.Fatal(err)
	}
	holder := policy.NewHolder(pol)
	p := &proxy.Server{
		Policy: holder, Log: accesslog.NewWriter(f.log),
		Inspector: &inspect.Minter{CA: ca}, UpstreamTLS: &tls.Config{RootCAs: upPool},
		Dialer: &dial.Direct{Policy: holder.Load, Resolver: world, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			f.mu.Lock()
			f.dialed = append(f.dialed, addr)
			f.mu.Unlock()
			_, port, _ := net.SplitHostPort(addr)
			return (&net.Dialer{}).DialContext(ctx, network, backends[port])
		}},
	}
	s := &Server{Proxy: p, Verifier: &Verifier{Resolver: world}, FirstByteWait: 300 * time.Millisecond,
		OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
			ap := netip.MustParseAddrPort(c.RemoteAddr().String())
			if v, ok := f.dsts.Load(ap.Addr()); ok {
				return v.(netip.AddrPort), nil
			}
			return netip.MustParseAddrPort(c.LocalAddr().String()), nil // not redirected
		}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		p.Shutdown(ctx)
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

var clientIPs struct {
	mu   sync.Mutex
	next byte
}

// connect dials the listener from a loopback address of its own that stands for a client whose
// connection to dst was redirected.
func (f *fixture) connect(t *testing.T, dst string) net.Conn {
	t.Helper()
	clientIPs.mu.Lock()
	clientIPs.next++
	ip := netip.AddrFrom4([4]byte{127, 0, 9, clientIPs.next})
	clientIPs.mu.Unlock()
	if dst != "" {
		f.dsts.Store(ip, netip.MustParseAddrPort(dst))
	}
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip.AsSlice()}}).Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func (f *fixture) wasDialed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.dialed...)
}

// waitRecord waits for a record that match accepts.
func (f *fixture) waitRecord(t *testing.T, what string, match func(accesslog.Record) bool) accesslog.Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range f.log.Records(t) {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record for %s in:\n%+v", what, f.log.Records(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) tlsClient(t *testing.T, c net.Conn, sni string) *tls.Conn {
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(f.cert.Certificate[0])
	pool.AddCert(leaf)
	return tls.Client(c, &tls.Config{ServerName: sni, RootCAs: pool})
}

func TestServerTLS(t *testing.T) {
	f := startServer(t)
	t.Run("allowed name to its address", func(t *testing.T) {
		tc := f.tlsClient(t, f.connect(t, "192.0.2.7:443"), "allowed.test")
		msg := bytes.Repeat([]byte("through the transparent tunnel "), 500)
		go func() {
			tc.Write(msg)
			tc.CloseWrite()
		}()
		got, err := io.ReadAll(tc)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo over TLS: %d bytes, %v", len(got), err)
		}
		tc.Close()
		rec := f.waitRecord(t, "the tunnel", func(r accesslog.Record) bool { return r.Host == "allowed.test" && r.Port == 443 && r.Status == 200 })
		// 192.0.2.7 is a documentation address: the cidr rule that lets it be dialed decides.
		if !rec.Transparent || rec.OriginalDst != "192.0.2.7:443" || rec.Method != "CONNECT" || rec.Decision != "allow" || rec.Rule != "allow#2" ||
			rec.BytesOut < int64(len(msg)) || rec.Error != "" {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("allowed name to another address: sni_mismatch", func(t *testing.T) {
		before := len(f.wasDialed())
		tc := f.tlsClient(t, f.connect(t, "192.0.2.66:443"), "allowed.test")
		err := tc.Handshake()
		if err == nil || !strings.Contains(err.Error(), "remote error: tls") {
			t.Fatalf("handshake: %v, want a TLS alert", err)
		}
		rec := f.waitRecord(t, "the mismatch", func(r accesslog.Record) bool { return r.Error == accesslog.ErrorSNIMismatch })
		if rec.Decision != "deny" || rec.Host != "allowed.test" || rec.OriginalDst != "192.0.2.66:443" || !rec.Transparent ||
			!strings.Contains(rec.Reason, "192.0.2.66") {
			t.Errorf("record %+v", rec)
		}
		if d := f.wasDialed(); len(d) != before {
			t.Errorf("dialed %v for a refused connection", d[before:])
		}
	})
	t.Run("denied name", func(t *testing.T) {
		before := len(f.wasDialed())
		err := f.tlsClient(t, f.connect(t, "192.0.2.9:443"), "denied.test").Handshake()
		if err == nil {
			t.Fatal("handshake succeeded")
		}
		rec := f.waitRecord(t, "the denial", func(r accesslog.Record) bool { return r.Host == "denied.test" })
		if rec.Decision != "deny" || rec.Error != "denied_by_rule" || rec.Rule != "deny#1" || rec.Status != 403 {
			t.Errorf("record %+v", rec)
		}
		if d := f.wasDialed(); len(d) != before {
			t.Errorf("dialed %v for a refused connection", d[before:])
		}
	})
}

func TestServerHTTP(t *testing.T) {
	f := startServer(t)
	get := func(t *testing.T, c net.Conn, br *bufio.Reader, host, path string) (*http.Response, string) {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	t.Run("decided by Host, each request", func(t *testing.T) {
		c := f.connect(t, "192.0.2.7:80")
		br := bufio.NewReader(c)
		resp, body := get(t, c, br, "allowed.test", "/one")
		if resp.StatusCode != 200 || body != "hello allowed.test/one" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		// Domain fronting on the same connection: another Host is refused before any dial.
		resp, body = get(t, c, br, "denied.test", "/two")
		if resp.StatusCode != 400 {
			t.Fatalf("a second request naming another host: %d %q", resp.StatusCode, body)
		}
		rec := f.waitRecord(t, "the request", func(r accesslog.Record) bool { return r.Path == "/one" })
		if !rec.Transparent || rec.OriginalDst != "192.0.2.7:80" || rec.Method != "GET" || rec.Host != "allowed.test" || rec.Status != 200 {
			t.Errorf("record %+v", rec)
		}
		for _, d := range f.wasDialed() {
			if d != "192.0.2.7:80" && !strings.HasSuffix(d, ":443") {
				t.Errorf("dialed %s, want only the original destination", d)
			}
		}
	})
	t.Run("Host to another address: 403 sni_mismatch", func(t *testing.T) {
		c := f.connect(t, "192.0.2.66:80")
		resp, body := get(t, c, bufio.NewReader(c), "allowed.test", "/x")
		if resp.StatusCode != 403 || !strings.Contains(body, "192.0.2.66") || !strings.Contains(resp.Header.Get(proxy.HeaderDecision), "sni_mismatch") {
			t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
		}
		f.waitRecord(t, "the mismatch", func(r accesslog.Record) bool {
			return r.Error == accesslog.ErrorSNIMismatch && r.Path == "/x" && r.Transparent && r.Status == 403
		})
	})
	t.Run("denied Host: 403", func(t *testing.T) {
		c := f.connect(t, "192.0.2.9:80")
		resp, body := get(t, c, bufio.NewReader(c), "denied.test", "/y")
		if resp.StatusCode != 403 || !strings.Contains(body, "denied") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
}

func TestServerNoName(t *testing.T) {
	f := startServer(t)
	t.Run("server-first protocol decided on the address", func(t *testing.T) {
		c := f.connect(t, "192.0.2.7:25")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "220 smtp ready\r\n" {
			t.Fatalf("%q %v", line, err)
		}
		c.Close() // the tunnel's record is written when it ends
		rec := f.waitRecord(t, "the SMTP tunnel", func(r accesslog.Record) bool { return r.Port == 25 })
		if rec.Host != "192.0.2.7" || rec.Rule != "allow#2" || !rec.Transparent {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("address no rule allows", func(t *testing.T) {
		c := f.connect(t, "192.0.2.8:25")
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("read %d bytes from a refused connection", n)
		}
		f.waitRecord(t, "the refusal", func(r accesslog.Record) bool { return r.Host == "192.0.2.8" && r.Decision == "deny" })
	})
	t.Run("not redirected", func(t *testing.T) {
		c := f.connect(t, "")
		c.Write([]byte("GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("read %d bytes", n)
		}
		f.waitRecord(t, "the refusal", func(r accesslog.Record) bool { return r.Error == accesslog.ErrorNotRedirected })
	})
}

// TestServerInspect: a captured TLS connection whose rule inspects is terminated with a leaf from
// the inspection CA, and each request in it is decided by the rule's http entries, forwarded to the
// original destination, and logged as transparent.
func TestServerInspect(t *testing.T) {
	f := startServer(t)
	c := f.connect(t, "192.0.2.7:8443")
	tc := tls.Client(c, &tls.Config{ServerName: "inspected.test", RootCAs: f.caPool, NextProtos: []string{"http/1.1"}})
	br := bufio.NewReader(tc)
	for _, tt := range []struct {
		path   string
		status int
		body   string
	}{{"/ok", 200, "inspected upstream answers inspected.test /ok"}, {"/not-listed", 403, "inspected.test"}} {
		fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: inspected.test\r\n\r\n", tt.path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.body) {
			t.Fatalf("%s: %d %q", tt.path, resp.StatusCode, body)
		}
		rec := f.waitRecord(t, tt.path, func(r accesslog.Record) bool { return r.Path == tt.path })
		if !rec.Transparent || !rec.Inspected || rec.OriginalDst != "192.0.2.7:8443" || rec.Status != tt.status {
			t.Errorf("record %+v", rec)
		}
	}
	for _, d := range f.wasDialed() {
		if d != "192.0.2.7:8443" {
			t.Errorf("dialed %s, want only the original destination", d)
		}
	}
}
