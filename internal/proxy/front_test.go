package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// TestFrontConnectKeepAlive: after a refused CONNECT, the same connection carries a CONNECT that
// is allowed, and after another refusal, a plain GET (which net/http then serves).
func TestFrontConnectKeepAlive(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain") }))
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", up.Listener.Addr().(*net.TCPAddr).Port)
	tp := startProxy(t, pol, nil, []string{upAddr})

	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
	if resp.StatusCode != 403 || !strings.Contains(body, "blocked 127.0.0.1:1") || resp.Header.Get("Date") == "" {
		t.Fatalf("refused CONNECT: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp.Close {
		t.Fatal("the connection is closed after a refusal")
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("allowed CONNECT on the kept-alive connection: %v %v", resp, err)
	}
	// The tunnel carries a request to the target.
	resp, body = roundTrip(t, c, br, fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr))
	if resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, body)
	}
	c.Close()

	c2, br2 := dialProxy(t, tp.addr)
	if resp, _ := roundTrip(t, c2, br2, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"); resp.StatusCode != 403 {
		t.Fatalf("refused CONNECT: %d", resp.StatusCode)
	}
	resp, body = roundTrip(t, c2, br2, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("GET after a refused CONNECT: %d %q", resp.StatusCode, body)
	}
}

// TestFrontConnectIdleTimeout: a connection kept alive after a refused CONNECT may stay quiet for
// longer than the header timeout (up to the idle timeout) before its next request.
func TestFrontConnectIdleTimeout(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", up.Listener.Addr().(*net.TCPAddr).Port)
	tp := startProxy(t, pol, nil, []string{upAddr}, func(s *Server) {
		s.ReadHeaderTimeout = 100 * time.Millisecond
		s.IdleTimeout = 10 * time.Second
	})
	c, br := dialProxy(t, tp.addr)
	if resp, _ := roundTrip(t, c, br, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"); resp.StatusCode != 403 {
		t.Fatalf("refused CONNECT: %d", resp.StatusCode)
	}
	time.Sleep(300 * time.Millisecond) // quiet for three header timeouts: what is tested
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT after a quiet spell: %v %v", resp, err)
	}
	c.Close()
}

// TestFrontConnectInPieces: a CONNECT whose first bytes arrive alone is recognised once the rest
// of its first line has come; peekConnect waits for it rather than handing the connection to
// net/http, and consumes nothing.
func TestFrontConnectInPieces(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	server := sc.(*net.TCPConn)
	defer server.Close()
	io.WriteString(client, "CON")
	server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := peekConnect(server); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after %q: %v, want it to wait for more", "CON", err)
	}
	io.WriteString(client, "NECT a.test:443 HTTP/1.1\r\n\r\n")
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if ok, err := peekConnect(server); !ok || err != nil {
		t.Fatalf("whole first line: %v %v, want a CONNECT", ok, err)
	}
	r, err := http.ReadRequest(bufio.NewReader(server))
	if err != nil || r.Method != http.MethodConnect || r.Host != "a.test:443" {
		t.Fatalf("the request after the peeks: %v %v", r, err)
	}

	io.WriteString(client, "GET / HTTP/1.1\r\n\r\n")
	if ok, err := peekConnect(server); ok || err != nil {
		t.Fatalf("GET: %v %v, want not a CONNECT", ok, err)
	}
}

// TestFrontConnectUnreadable: a CONNECT head over the limit gets 431, an unparsable one 400, as
// net/http answers them, and the connection is closed.
func TestFrontConnectUnreadable(t *testing.T) {
	tp := startProxy(t, loopbackPolicy, nil, nil)
	for _, tc := range []struct{ name, req, want string }{
		{"oversized", "CONNECT a.test:443 HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "HTTP/1.1 431 "},
		{"malformed", "CONNECT a.test:443 HTTP/9\r\n\r\n", "HTTP/1.1 400 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := dialProxy(t, tp.addr)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			go io.WriteString(c, tc.req) // the proxy may stop reading before the end
			line, err := br.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, tc.want) {
				t.Fatalf("status line %q %v, want %q", line, err, tc.want)
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				t.Fatalf("the connection was not closed cleanly: %v", err)
			}
		})
	}
}

// TestShutdownClosesSilentConnection: a client that connected and sent nothing does not hold up
// Shutdown.
func TestShutdownClosesSilentConnection(t *testing.T) {
	tp := startProxy(t, loopbackPolicy, nil, nil)
	c, br := dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// A request on another connection proves the server is serving before it shuts down.
	c0, br0 := dialProxy(t, tp.addr)
	if resp, _ := roundTrip(t, c0, br0, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"); resp.StatusCode != 502 {
		t.Fatalf("CONNECT to a closed port: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the silent connection: %v, want EOF", err)
	}
	if _, err := br0.ReadByte(); err != io.EOF {
		t.Fatalf("the kept-alive connection: %v, want EOF", err)
	}
}
