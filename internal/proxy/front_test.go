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
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
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

// TestFrontConnectInPieces: a request whose first bytes arrive alone is recognised once enough of
// its first line has come; peekKind waits for it rather than handing the connection to net/http,
// and consumes nothing.
func TestFrontConnectInPieces(t *testing.T) {
	client, server := tcpPair(t)
	io.WriteString(client, "CON")
	server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := peekKind(server); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after %q: %v, want it to wait for more", "CON", err)
	}
	io.WriteString(client, "NECT a.test:443 HTTP/1.1\r\n\r\n")
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if kind, err := peekKind(server); kind != kindConnect || err != nil {
		t.Fatalf("whole first line: %v %v, want a CONNECT", kind, err)
	}
	r, err := http.ReadRequest(bufio.NewReader(server))
	if err != nil || r.Method != http.MethodConnect || r.Host != "a.test:443" {
		t.Fatalf("the request after the peeks: %v %v", r, err)
	}

	io.WriteString(client, "GET http")
	server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := peekKind(server); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after %q: %v, want it to wait for more", "GET http", err)
	}
	io.WriteString(client, "://a.test/ HTTP/1.1\r\n\r\n")
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if kind, err := peekKind(server); kind != kindSimple || err != nil {
		t.Fatalf("GET of an http URL: %v %v, want a simple one", kind, err)
	}
	bufio.NewReader(server).Discard(len("GET http://a.test/ HTTP/1.1\r\n\r\n"))

	io.WriteString(client, "GET / HTTP/1.1\r\n\r\n")
	if kind, err := peekKind(server); kind != kindOther || err != nil {
		t.Fatalf("GET of a path: %v %v, want one for net/http", kind, err)
	}

	// A client that stops sending in the middle of a prefix is not waited for: net/http answers it.
	client, server = tcpPair(t)
	io.WriteString(client, "GET ht")
	client.(*net.TCPConn).CloseWrite()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if kind, err := peekKind(server); kind != kindOther || err != nil {
		t.Fatalf("a prefix and the end of the stream: %v %v, want one for net/http at once", kind, err)
	}
}

// tcpPair returns the two ends of a loopback TCP connection, closed when the test ends.
func tcpPair(t *testing.T) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return client, sc.(*net.TCPConn)
}

// TestFrontUnreadableRequests: a request head over the limit gets 431 and one that cannot be read
// or breaks net/http's rules gets 400, as from net/http, but with the reason in the answer and in
// an access-log record; the connection is then closed.
func TestFrontUnreadableRequests(t *testing.T) {
	tp := startProxy(t, loopbackPolicy, nil, nil)
	for _, tc := range []struct{ name, req, status, reason string }{
		{"oversized", "CONNECT a.test:443 HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "431", "the request head is over"},
		{"malformed", "CONNECT a.test:443 HTTP/9\r\n\r\n", "400", "malformed HTTP version"},
		{"oversized GET", "GET http://a.test/ HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "431", "the request head is over"},
		{"header line", "GET http://a.test/ HTTP/1.1\r\nno colon\r\n\r\n", "400", "malformed MIME header"},
		{"header name", "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX V: a\r\n\r\n", "400", `invalid header name \"X V\"`},
		{"host", "GET http://a<.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "400", `invalid host \"a<.test\"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := dialProxy(t, tp.addr)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			go io.WriteString(c, tc.req) // the proxy may stop reading before the end
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if got := strconv.Itoa(resp.StatusCode); got != tc.status || !resp.Close ||
				!strings.Contains(resp.Header.Get(HeaderError), tc.reason) {
				t.Fatalf("%s %q close=%v %s, want %s with %q", got, body, resp.Close, resp.Header.Get(HeaderError), tc.status, tc.reason)
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				t.Fatalf("the connection was not closed cleanly: %v", err)
			}
			rec := lastRecord(t, tp)
			if strconv.Itoa(rec.Status) != tc.status || rec.Error != "bad_request" || !strings.Contains(rec.Reason, strings.ReplaceAll(tc.reason, `\"`, `"`)) {
				t.Fatalf("record %+v", rec)
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

// echoMethodServer answers GET with "get <path>" (or streams it without a length when the path is
// /stream) and POST with "post <body>".
func echoMethodServer(t *testing.T) (string, *atomic.Int32) {
	up, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost:
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "post %s", b)
		case r.URL.Path == "/stream":
			io.WriteString(w, "get ")
			w.(http.Flusher).Flush()
			io.WriteString(w, r.URL.Path)
		default:
			fmt.Fprintf(w, "get %s", r.URL.Path)
		}
	})
	return up.Listener.Addr().String(), conns
}

// TestFrontPlainKeepAliveThenHandOff: GETs on one client connection are answered in turn, and
// a POST after them, which net/http serves, gets the bytes the front end had already read.
func TestFrontPlainKeepAliveThenHandOff(t *testing.T) {
	upAddr, _ := echoMethodServer(t)
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	for _, path := range []string{"/a", "/b", "/stream"} {
		resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s%s HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, path, upAddr))
		if resp.StatusCode != 200 || body != "get "+path || resp.Close {
			t.Fatalf("GET %s: %d %q close=%v", path, resp.StatusCode, body, resp.Close)
		}
	}
	resp, body := roundTrip(t, c, br, fmt.Sprintf("POST http://%s/p HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n\r\nhello", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "post hello" {
		t.Fatalf("POST after GETs: %d %q", resp.StatusCode, body)
	}
	resp, body = roundTrip(t, c, br, fmt.Sprintf("GET http://%s/c HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "get /c" {
		t.Fatalf("GET after the hand-off: %d %q", resp.StatusCode, body)
	}
	if n := len(tp.records(t)); n != 5 {
		t.Fatalf("%d records, want 5", n)
	}
}

// TestFrontPipelinedRequests: requests sent in one write are answered in order, including a POST
// behind a GET, which is handed to net/http with the bytes read ahead.
func TestFrontPipelinedRequests(t *testing.T) {
	upAddr, _ := echoMethodServer(t)
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	get := func(path string) string {
		return fmt.Sprintf("GET http://%s%s HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, path, upAddr)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, get("/1")+get("/2")+
		fmt.Sprintf("POST http://%s/p HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\nhi", upAddr, upAddr)+get("/3"))
	for _, want := range []string{"get /1", "get /2", "post hi", "get /3"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
	}
}

// TestFrontHTTP10HandedOff: an HTTP/1.0 request goes to net/http, which answers it without chunks
// (HTTP/1.0 has none) and closes the connection.
func TestFrontHTTP10HandedOff(t *testing.T) {
	upAddr, _ := echoMethodServer(t)
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/stream HTTP/1.0\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != 200 || body != "get /stream" || len(resp.TransferEncoding) > 0 || !resp.Close {
		t.Fatalf("HTTP/1.0 GET: %d %q transfer-encoding=%v close=%v", resp.StatusCode, body, resp.TransferEncoding, resp.Close)
	}
}

// TestShutdownWaitsForPlainRequest: a GET in flight when Shutdown begins is answered in full, and
// Shutdown returns only after its record is written.
func TestShutdownWaitsForPlainRequest(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	up, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "late")
	})
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	fmt.Fprintf(c, "GET http://%s/slow HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the target")
	}
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- tp.srv.Shutdown(ctx)
	}()
	waitFor(t, "the listener to close", func() bool {
		probe, err := net.Dial("tcp", tp.addr)
		if err == nil {
			probe.Close()
		}
		return err != nil
	})
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	case <-time.After(100 * time.Millisecond): // a bounded wait for the wrong outcome
	}
	close(release)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the request in flight was cut: %v", err)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != "late" {
		t.Fatalf("body %q", body)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if recs := tp.records(t); len(recs) != 1 || !strings.Contains(recs[0], `"status":200`) {
		t.Fatalf("records when Shutdown returned: %v", recs)
	}
}

// TestFrontWriterFraming: a short body the handler leaves without a length is sent with one, a
// longer one chunked, and a body shorter than its declared length ends the connection.
func TestFrontWriterFraming(t *testing.T) {
	client, server := tcpPair(t)
	fc := &frontConn{conn: server}
	br := bufio.NewReader(client)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	long := strings.Repeat("x", holdLimit+1)
	for _, tc := range []struct {
		name, declared, body string
		keep                 bool
		te                   []string
		length               int64
	}{
		{"short", "", "abc", true, nil, 3},
		{"long", "", long, true, []string{"chunked"}, -1},
		{"declared", "3", "abc", true, nil, 3},
		{"cut short", "10", "abc", false, nil, 10},
	} {
		r := httptest.NewRequest(http.MethodGet, "http://a.test/", nil)
		w := newFrontWriter(fc, r)
		if tc.declared != "" {
			w.Header().Set("Content-Length", tc.declared)
		}
		io.WriteString(w, tc.body)
		if keep := w.finish(); keep != tc.keep {
			t.Fatalf("%s: finish says keep=%v, want %v", tc.name, keep, tc.keep)
		}
		w.release()
		resp, err := http.ReadResponse(br, r)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !slices.Equal(resp.TransferEncoding, tc.te) || resp.ContentLength != tc.length {
			t.Fatalf("%s: transfer-encoding %v, length %d", tc.name, resp.TransferEncoding, resp.ContentLength)
		}
		if !tc.keep {
			break // the body is incomplete: the client can only read it to the connection's end
		}
		if body, err := io.ReadAll(resp.Body); err != nil || string(body) != tc.body {
			t.Fatalf("%s: body %d bytes, %v", tc.name, len(body), err)
		}
	}
}
