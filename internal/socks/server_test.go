package socks

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

const testPolicy = `mode: enforce
allow:
  - cidr: 127.0.0.0/8
    name: loopback
  - cidr: ::1/128
    name: loopback6
deny:
  - host: blocked.example
    name: no-blocked
`

type fixedAuth struct{ session, token string }

var errBadLogin = errors.New("token is not valid")

func (a fixedAuth) Authenticate(user, pass string) (string, string, error) {
	if user == a.session && pass == a.token {
		return user, "id-" + pass, nil
	}
	return "", "", errBadLogin
}

type fixture struct {
	addr string
	log  *loopbacktest.LogBuffer
	srv  *Server
}

func start(t *testing.T, auth proxy.Authenticator, handshake time.Duration) *fixture {
	t.Helper()
	pol, err := policy.Parse("policy.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	h := policy.NewHolder(pol)
	logs := &loopbacktest.LogBuffer{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ps := &proxy.Server{Policy: h, Dialer: &dial.Direct{Policy: h.Load, Timeout: 5 * time.Second},
		Auth: auth, Log: accesslog.NewWriter(logs), Logger: quiet}
	s := &Server{Proxy: ps, Logger: quiet, HandshakeTimeout: handshake}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &fixture{addr: ln.Addr().String(), log: logs, srv: s}
}

// echoServer answers each connection with "echo:" and everything it read, once the client has
// finished writing (half-close), then closes.
func echoServer(t *testing.T, network, addr string) (string, int) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	loopbacktest.Serve(t, ln, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("echo:"), b...))
	})
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	return ap.Addr().String(), int(ap.Port())
}

func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func greeting(methods ...byte) []byte {
	return append([]byte{version5, byte(len(methods))}, methods...)
}

func userPass(u, p string) []byte {
	b := []byte{userPassVersion, byte(len(u))}
	b = append(append(b, u...), byte(len(p)))
	return append(b, p...)
}

func requestBytes(cmd, atyp byte, addr []byte, port int) []byte {
	b := []byte{version5, cmd, 0, atyp}
	if atyp == atypDomain {
		b = append(b, byte(len(addr)))
	}
	b = append(b, addr...)
	return binary.BigEndian.AppendUint16(b, uint16(port))
}

func ip4(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestHandshake(t *testing.T) {
	_, port := echoServer(t, "tcp", "127.0.0.1:0")
	refused := closedPort(t)
	type tc struct {
		name    string
		auth    proxy.Authenticator
		send    [][]byte // written in order; the reply to the method selection is checked first
		method  byte     // expected method selection
		login   int      // expected RFC 1929 status, -1 for none
		reply   int      // expected SOCKS5 reply code, -1 for none (connection closed)
		echo    bool     // after success, half-close and expect the echo
		rec     bool     // an access-log record is expected
		status  int
		kind    string
		deny    bool
		host    string
		session string
	}
	auth := fixedAuth{session: "sess-1", token: "tok"}
	cases := []tc{
		{name: "connect ipv4", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), port)},
			method: methodNoAuth, login: -1, reply: 0, echo: true, rec: true, status: 200, host: "127.0.0.1"},
		{name: "connect domain", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdConnect, atypDomain, []byte("127.0.0.1"), port)},
			method: methodNoAuth, login: -1, reply: 0, echo: true, rec: true, status: 200, host: "127.0.0.1"},
		{name: "user/pass ignored without authenticator", send: [][]byte{greeting(methodUserPass), userPass("x", "y"), requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), port)},
			method: methodUserPass, login: 0, reply: 0, echo: true, rec: true, status: 200, host: "127.0.0.1"},
		{name: "denied by policy", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdConnect, atypIPv4, ip4("10.1.2.3"), 80)},
			method: methodNoAuth, login: -1, reply: int(ReplyNotAllowed), rec: true, status: 403, kind: "private_address", deny: true, host: "10.1.2.3"},
		{name: "denied name", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdConnect, atypDomain, []byte("Blocked.Example."), 443)},
			method: methodNoAuth, login: -1, reply: int(ReplyNotAllowed), rec: true, status: 403, kind: "denied_by_rule", deny: true, host: "blocked.example"},
		{name: "refused", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), refused)},
			method: methodNoAuth, login: -1, reply: int(ReplyConnectionRefused), rec: true, status: 502, kind: "refused", host: "127.0.0.1"},
		{name: "bind", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdBind, atypIPv4, ip4("127.0.0.1"), port)},
			method: methodNoAuth, login: -1, reply: int(ReplyCommandNotSupported), rec: true, status: 400, kind: "command_not_supported", deny: true, host: "127.0.0.1"},
		{name: "udp associate", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdUDPAssociate, atypIPv4, ip4("0.0.0.0"), 0)},
			method: methodNoAuth, login: -1, reply: int(ReplyCommandNotSupported), rec: true, status: 400, kind: "command_not_supported", deny: true},
		{name: "address type", send: [][]byte{greeting(methodNoAuth), {version5, cmdConnect, 0, 0x09}},
			method: methodNoAuth, login: -1, reply: int(ReplyAddrNotSupported), rec: true, status: 400, kind: "bad_request", deny: true},
		{name: "bad host", send: [][]byte{greeting(methodNoAuth), requestBytes(cmdConnect, atypDomain, []byte("a b"), 80)},
			method: methodNoAuth, login: -1, reply: int(ReplyGeneralFailure), rec: true, status: 400, kind: "bad_request", deny: true},
		{name: "socks4 client", send: [][]byte{{0x04, 0x01, 0, 80, 127, 0, 0, 1, 0}}, method: 0xfe, login: -1, reply: -1},
		{name: "login accepted", auth: auth, send: [][]byte{greeting(methodNoAuth, methodUserPass), userPass("sess-1", "tok"), requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), port)},
			method: methodUserPass, login: 0, reply: 0, echo: true, rec: true, status: 200, host: "127.0.0.1", session: "sess-1"},
		{name: "login refused", auth: auth, send: [][]byte{greeting(methodUserPass), userPass("sess-1", "wrong")},
			method: methodUserPass, login: 1, reply: -1, rec: true, status: 407, kind: "auth", deny: true},
		{name: "login required", auth: auth, send: [][]byte{greeting(methodNoAuth)},
			method: methodNoAcceptable, login: -1, reply: -1, rec: true, status: 407, kind: "auth", deny: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := start(t, c.auth, 0)
			conn, err := net.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			for _, b := range c.send {
				conn.Write(b)
			}
			var sel [2]byte
			_, err = io.ReadFull(conn, sel[:])
			if c.method == 0xfe { // not SOCKS5: closed without an answer
				if err == nil {
					t.Fatalf("got method selection %x from a non-SOCKS5 greeting", sel)
				}
				return
			}
			if err != nil || sel != [2]byte{version5, c.method} {
				t.Fatalf("method selection = %x, %v; want 05 %02x", sel, err, c.method)
			}
			if c.login >= 0 {
				var st [2]byte
				if _, err := io.ReadFull(conn, st[:]); err != nil || st != [2]byte{userPassVersion, byte(c.login)} {
					t.Fatalf("login status = %x, %v; want 01 %02x", st, err, c.login)
				}
			}
			if c.reply >= 0 {
				var rep [10]byte
				if _, err := io.ReadFull(conn, rep[:]); err != nil {
					t.Fatalf("read reply: %v", err)
				}
				if rep[0] != version5 || rep[1] != byte(c.reply) || rep[3] != atypIPv4 {
					t.Fatalf("reply = %x; want code %02x", rep, c.reply)
				}
				if c.reply == 0 && binary.BigEndian.Uint16(rep[8:]) == 0 {
					t.Errorf("success reply without a bound port: %x", rep)
				}
			}
			if c.echo {
				conn.Write([]byte("hello"))
				conn.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(conn)
				if err != nil || string(got) != "echo:hello" {
					t.Fatalf("after half-close read %q, %v; want echo:hello", got, err)
				}
			} else if n, err := conn.Read(make([]byte, 1)); err == nil {
				t.Fatalf("connection still open after a refusal (read %d bytes)", n)
			}
			if !c.rec {
				return
			}
			rec := waitRecord(t, f.log)
			if rec.Method != "SOCKS5" || rec.Status != c.status || rec.Error != c.kind && c.status != 200 ||
				rec.Host != c.host || rec.Session != c.session || (rec.Decision == accesslog.DecisionDeny) != c.deny {
				t.Fatalf("record = %+v; want method SOCKS5 status %d error %q host %q session %q deny %v", rec, c.status, c.kind, c.host, c.session, c.deny)
			}
			if c.status == 200 && (rec.BytesOut != 5 || rec.BytesIn != int64(len("echo:hello"))) {
				t.Errorf("bytes out/in = %d/%d; want 5/10", rec.BytesOut, rec.BytesIn)
			}
		})
	}
}

func waitRecord(t *testing.T, log *loopbacktest.LogBuffer) accesslog.Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if recs := log.Records(t); len(recs) > 0 {
			if len(recs) != 1 {
				t.Fatalf("want one record, got %+v", recs)
			}
			return recs[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("no access-log record written")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIPv6Target(t *testing.T) {
	host, port := echoServer(t, "tcp6", "[::1]:0")
	f := start(t, nil, 0)
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write(greeting(methodNoAuth))
	conn.Write(requestBytes(cmdConnect, atypIPv6, netip.MustParseAddr(host).AsSlice(), port))
	var sel [2]byte
	io.ReadFull(conn, sel[:])
	var rep [22]byte // IPv6 bound address: the proxy reached ::1 over IPv6
	if _, err := io.ReadFull(conn, rep[:]); err != nil || rep[1] != 0 || rep[3] != atypIPv6 {
		t.Fatalf("reply %x, %v; want success with an IPv6 bound address", rep, err)
	}
	conn.Write([]byte("six"))
	conn.(*net.TCPConn).CloseWrite()
	if got, _ := io.ReadAll(conn); string(got) != "echo:six" {
		t.Fatalf("got %q", got)
	}
	if rec := waitRecord(t, f.log); rec.Host != "::1" || rec.Status != 200 {
		t.Fatalf("record %+v", rec)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	f := start(t, nil, 100*time.Millisecond)
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{version5}) // half a greeting, then silence
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read = %v; want EOF once the server gives up on the slow client", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("slow client dropped after %s", d)
	}
}

func TestShutdownClosesHandshakes(t *testing.T) {
	f := start(t, nil, time.Minute)
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{version5})
	// Wait until the server tracks the connection, then shut down: it must not wait a minute.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if f.srv.conns.Len() == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection not tracked")
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// EOF, or a reset when the server closed before reading the byte sent; not a timeout.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read = %v; want the connection closed", err)
	}
}

func TestReplyFor(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want Reply
	}{
		{"denied", dial.Denied(policy.Target{Host: "x", Port: 1}, policy.Decision{Code: policy.CodeNoRule}), ReplyNotAllowed},
		{"resolve", &dial.Error{Kind: dial.KindResolve}, ReplyHostUnreachable},
		{"refused", &dial.Error{Kind: dial.KindRefused}, ReplyConnectionRefused},
		{"timeout", &dial.Error{Kind: dial.KindTimeout}, ReplyTTLExpired},
		{"no provider", &dial.Error{Kind: dial.KindNoProvider}, ReplyNetworkUnreachable},
		{"host unreachable", &dial.Error{Kind: dial.KindUnreachable}, ReplyHostUnreachable},
		{"internal", errors.New("boom"), ReplyGeneralFailure},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := replyFor(proxy.FailureOf(c.err), c.err); got != c.want {
				t.Fatalf("replyFor = %#x; want %#x", got, c.want)
			}
		})
	}
}

// TestShutdownAbortsTunnels: a tunnel still open when the shutdown deadline passes is aborted, and
// Shutdown reports the deadline.
func TestShutdownAbortsTunnels(t *testing.T) {
	ln := loopbacktest.Start(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // never answers: the tunnel stays open
	f := start(t, nil, 0)
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write(greeting(methodNoAuth))
	conn.Write(requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), ln.Addr().(*net.TCPAddr).Port))
	var resp [12]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil || resp[3] != 0 {
		t.Fatalf("tunnel not opened: %x, %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := f.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown = %v; want the deadline", err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("tunnel still open after shutdown")
	}
	if rec := waitRecord(t, f.log); rec.Status != 200 || rec.Error == "" {
		t.Fatalf("record %+v: want the aborted tunnel logged with an error", rec)
	}
}

// TestNoGoroutineLeak: after tunnels, refusals and a shutdown, the goroutine count is back to
// where it started.
func TestNoGoroutineLeak(t *testing.T) {
	_, port := echoServer(t, "tcp", "127.0.0.1:0")
	baseline := runtime.NumGoroutine()
	f := start(t, nil, 0)
	for i := range 20 {
		conn, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(greeting(methodNoAuth))
		target := port
		if i%2 == 1 {
			target = closedPort(t) // a refused dial
		}
		conn.Write(requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), target))
		conn.(*net.TCPConn).CloseWrite()
		io.ReadAll(conn)
		conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline+1 { // +1: the Serve goroutine of the fixture may still be returning
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, baseline %d:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
