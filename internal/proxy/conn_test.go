package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// TestConnectKeepAlive: after a refused CONNECT, the same connection carries a CONNECT that is
// allowed, and after another refusal, a plain GET.
func TestConnectKeepAlive(t *testing.T) {
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

// TestConnectIdleTimeout: a connection kept alive after a refused CONNECT may stay quiet for
// longer than the header timeout (up to the idle timeout) before its next request.
func TestConnectIdleTimeout(t *testing.T) {
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

// TestConnectInPieces: a request whose head arrives in several writes is served once it is whole.
func TestConnectInPieces(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	defer up.Close()
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, piece := range []string{"CON", "NECT " + upAddr, " HTTP/1.1\r\nHost: " + upAddr + "\r", "\n\r\n"} {
		if _, err := io.WriteString(c, piece); err != nil {
			t.Fatal(err)
		}
	}
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT in pieces: %v %v", resp, err)
	}
}

// TestUnreadableRequests: a request head over the limit gets 431, one that cannot be read or
// breaks HTTP's rules 400 (with net/http's reason where it gives one), and each gets an access-log
// record with the status and the reason; the connection is then closed. Whatever the method: one
// server reads every request.
func TestUnreadableRequests(t *testing.T) {
	tp := startProxy(t, loopbackPolicy, nil, nil)
	for _, tc := range []struct{ name, req, status, answer, reason string }{
		{"oversized", "CONNECT a.test:443 HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "431", "", "the request head is over"},
		{"malformed", "CONNECT a.test:443 HTTP/9\r\n\r\n", "400", "", "its line or a header is malformed"},
		{"oversized GET", "GET http://a.test/ HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "431", "", "the request head is over"},
		{"oversized POST", "POST http://a.test/ HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "431", "", "the request head is over"},
		{"header line", "GET http://a.test/ HTTP/1.1\r\nno colon\r\n\r\n", "400", "", "its line or a header is malformed"},
		{"header name", "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX V: a\r\n\r\n", "400", "invalid header name", "invalid header name"},
		{"header name of a PUT", "PUT http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX V: a\r\n\r\n", "400", "invalid header name", "invalid header name"},
		{"host", "GET http://a<.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "400", `invalid host "a<.test"`, `invalid host "a<.test"`},
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
			if got := strconv.Itoa(resp.StatusCode); got != tc.status || !resp.Close || !strings.Contains(string(body), tc.answer) {
				t.Fatalf("%s %q close=%v, want %s with %q", got, body, resp.Close, tc.status, tc.answer)
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				t.Fatalf("the connection was not closed cleanly: %v", err)
			}
			loopbacktest.Eventually(t, "the record", func() bool { return len(tp.records(t)) > 0 && tp.records(t)[0] != "" })
			rec := lastRecord(t, tp)
			if strconv.Itoa(rec.Status) != tc.status || rec.Error != "bad_request" || !strings.Contains(rec.Reason, tc.reason) || rec.Client != "127.0.0.1" {
				t.Fatalf("record %+v", rec)
			}
		})
	}
}

// TestOneAnswerWhereverTheRequest: requests that a hand-written front end and net/http used to
// answer differently get one answer, as a connection's first request and after a POST on it: no
// Host or a malformed one is a 400, Transfer-Encoding: identity a 501, each with a record.
func TestOneAnswerWhereverTheRequest(t *testing.T) {
	upAddr, _ := echoMethodServer(t)
	post := fmt.Sprintf("POST http://%s/p HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\nhi", upAddr, upAddr)
	for _, tc := range []struct {
		name, req string
		status    int
		answer    string
	}{
		{"no Host", fmt.Sprintf("GET http://%s/ HTTP/1.1\r\n\r\n", upAddr), 400, "400 Bad Request: missing required Host header"},
		{"Host with a space", fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: a b\r\n\r\n", upAddr), 400, "400 Bad Request: malformed Host header"},
		{"identity coding", fmt.Sprintf("POST http://%s/ HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: identity\r\n\r\n", upAddr, upAddr), 501, "Unsupported transfer encoding"},
	} {
		for _, after := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/after a POST=%v", tc.name, after), func(t *testing.T) {
				tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
				c, br := dialProxy(t, tp.addr)
				if after {
					if resp, body := roundTrip(t, c, br, post); resp.StatusCode != 200 || body != "post hi" {
						t.Fatalf("POST: %d %q", resp.StatusCode, body)
					}
				}
				resp, body := roundTrip(t, c, br, tc.req)
				if resp.StatusCode != tc.status || !resp.Close || body != tc.answer {
					t.Fatalf("%s %q close=%v, want %d %q", resp.Status, body, resp.Close, tc.status, tc.answer)
				}
				loopbacktest.Eventually(t, "the record", func() bool {
					return strings.Contains(strings.Join(tp.records(t), "\n"), `"status":`+strconv.Itoa(resp.StatusCode))
				})
				if rec := lastRecord(t, tp); rec.Status != resp.StatusCode || rec.Error != "bad_request" {
					t.Fatalf("record %+v", rec)
				}
			})
		}
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

// TestPlainKeepAlive: GETs on one client connection are answered in turn, then a POST, then a GET.
func TestPlainKeepAlive(t *testing.T) {
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

// TestPipelinedRequests: requests sent in one write are answered in order, a POST among them.
func TestPipelinedRequests(t *testing.T) {
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

// TestHTTP10: an HTTP/1.0 request is answered without chunks (HTTP/1.0 has none) and its
// connection closed.
func TestHTTP10(t *testing.T) {
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
	loopbacktest.Eventually(t, "the listener to close", func() bool {
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
