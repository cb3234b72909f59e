package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// loopbackPolicy allows the tests' loopback servers.
const loopbackPolicy = "mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n"

// countingServer is an httptest server that counts the connections it accepted.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	up := httptest.NewUnstartedServer(h)
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	return up, &conns
}

func lastRecord(t *testing.T, tp *testProxy) accesslog.Record {
	t.Helper()
	recs := tp.records(t)
	var rec accesslog.Record
	if err := json.Unmarshal([]byte(recs[len(recs)-1]), &rec); err != nil {
		t.Fatalf("record %q: %v", recs[len(recs)-1], err)
	}
	return rec
}

// TestForwardKeepsUpstreamConnectionsAlive: sequential GETs from different clients reuse one
// upstream connection, and each is logged with its upstream.
func TestForwardKeepsUpstreamConnectionsAlive(t *testing.T) {
	up, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.URL.Path) })
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	for i := range 5 {
		c, br := dialProxy(t, tp.addr)
		resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/%d HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, i, upAddr))
		if resp.StatusCode != 200 || body != fmt.Sprintf("ok /%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		c.Close()
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 5 sequential requests, want 1", n)
	}
	if rec := lastRecord(t, tp); rec.Upstream != upAddr || rec.BytesIn != 5 || rec.Status != 200 {
		t.Fatalf("record %+v", rec)
	}
}

// TestForwardRetriesClosedKeptAliveConnection: a target that closes an idle kept-alive
// connection without a word (as servers do after their idle timeout) costs the client nothing: the
// request is sent again on a new connection.
func TestForwardRetriesClosedKeptAliveConnection(t *testing.T) {
	var accepted atomic.Int32
	upAddr := loopbacktest.Start(t, func(c net.Conn) {
		// One response, announced as keep-alive; the next request on the connection closes it
		// unanswered: the race a kept-alive connection meets when the server's idle timeout fires
		// as a request is sent.
		accepted.Add(1)
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		br.Peek(1)
	}).Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	for i := range 3 {
		c, br := dialProxy(t, tp.addr)
		resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q: a closed kept-alive connection reached the client", i, resp.StatusCode, body)
		}
		c.Close()
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d upstream connections, want 3 (one per request)", n)
	}
}

// TestForwardStreamsUnknownLength: a response of unknown length (a stream) reaches the client
// chunk by chunk, not when the target finishes.
func TestForwardStreamsUnknownLength(t *testing.T) {
	release := make(chan struct{})
	up, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		<-release
		io.WriteString(w, "second\n")
	})
	defer close(release)
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://%s/stream HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first chunk: %q, %v (held back until the target finished?)", line, err)
	}
}

// TestForwardPassesInformationalAndTrailers: a 103 Early Hints goes to the client before the
// final response, and trailers follow the body.
func TestForwardPassesInformationalAndTrailers(t *testing.T) {
	up, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	})
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nTE: trailers\r\n\r\n", upAddr, upAddr)
	hints, err := http.ReadResponse(br, nil)
	if err != nil || hints.StatusCode != http.StatusEarlyHints || hints.Header.Get("Link") == "" {
		t.Fatalf("first response: %v %v, want 103 with its Link", hints, err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("final response: %v %v", resp, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("body %q, trailer %v, %v", body, resp.Trailer, err)
	}
	if rec := lastRecord(t, tp); rec.Status != 200 {
		t.Fatalf("logged status %d, want the final 200", rec.Status)
	}
}

// TestForwardClientGoneStopsWaiting: when the client leaves while the target has not answered,
// the upstream connection is closed at once (the target sees it) and the request is logged as
// client_closed.
func TestForwardClientGoneStopsWaiting(t *testing.T) {
	entered, gone := make(chan struct{}), make(chan struct{})
	up, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
		close(gone)
	})
	upAddr := up.Listener.Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, _ := dialProxy(t, tp.addr)
	fmt.Fprintf(c, "GET http://%s/slow HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr)
	<-entered
	c.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the target still waits for the proxy 10 s after the client left")
	}
	loopbacktest.Eventually(t, "the record", func() bool { return strings.Contains(strings.Join(tp.records(t), "\n"), "client_closed") })
	if rec := lastRecord(t, tp); rec.Status != 499 || rec.Error != "client_closed" {
		t.Fatalf("record %+v, want 499 client_closed", rec)
	}
}

// TestForwardUpstreamTimeout: a target that never sends response headers gets a 504 naming the
// timeout.
func TestForwardUpstreamTimeout(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	upAddr := loopbacktest.Start(t, func(net.Conn) { <-stop }).Addr().String() // never answers
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr}, func(s *Server) { s.UpstreamTimeout = 200 * time.Millisecond })
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "did not send response headers within 200ms") {
		t.Fatalf("%d %q, want 504 naming the timeout", resp.StatusCode, body)
	}
	if rec := lastRecord(t, tp); rec.Error != "timeout" || rec.Upstream != upAddr {
		t.Fatalf("record %+v", rec)
	}
}

// TestForwardBoundsResponseHead: a target that sends an endless response head gets a 502, and
// the proxy does not buffer it all.
func TestForwardBoundsResponseHead(t *testing.T) {
	upAddr := loopbacktest.Start(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Filler: " + strings.Repeat("x", 1000) + "\r\n"
		for range 2 * maxResponseHeadBytes / len(line) {
			if _, err := io.WriteString(c, line); err != nil {
				return // the proxy gave up
			}
		}
	}).Addr().String()
	tp := startProxy(t, loopbackPolicy, nil, []string{upAddr})
	c, br := dialProxy(t, tp.addr)
	resp, body := roundTrip(t, c, br, fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", upAddr, upAddr))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, fmt.Sprintf("server response headers exceeded %d bytes", maxResponseHeadBytes)) {
		t.Fatalf("%d %q, want 502 naming the oversized head", resp.StatusCode, body)
	}
}

// TestRequestHeadAsForwarded: the head the target gets has the client's request target in origin
// form, an ASCII Host, no hop-by-hop, forwarding or credential headers, TE reduced to trailers, the
// client's own User-Agent or none, and Via added after the client's.
func TestRequestHeadAsForwarded(t *testing.T) {
	heads := make(chan *http.Request, 1)
	upAddr := loopbacktest.Start(t, func(c net.Conn) {
		r, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		heads <- r
		io.WriteString(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
	}).Addr().String()
	_, port, _ := net.SplitHostPort(upAddr)
	tp := startProxy(t, loopbackPolicy, fakeResolver{"xn--bcher-kva.example": {"127.0.0.1"}, "a.test": {"127.0.0.1"}}, []string{upAddr})
	for _, tc := range []struct{ in, host, uri, ua string }{
		{"GET http://b\u00fccher.example:" + port + "/p?q=1 HTTP/1.1\r\nHost: other\r\nConnection: X-Drop\r\nX-Drop: 1\r\n" +
			"Proxy-Authorization: Basic eA==\r\nTe: trailers, deflate\r\nUser-Agent: ua\r\n" +
			"X-Forwarded-For: 192.0.2.1\r\nVia: 1.0 other\r\nAccept: a\r\nAccept: b\r\n\r\n",
			"xn--bcher-kva.example:" + port, "/p?q=1", "ua"},
		{"HEAD http://a.test:" + port + " HTTP/1.1\r\nHost: a.test:" + port + "\r\n\r\n", "a.test:" + port, "/", ""},
	} {
		c, br := dialProxy(t, tp.addr)
		if resp, _ := roundTrip(t, c, br, tc.in); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%q: status %d", tc.in, resp.StatusCode)
		}
		got := <-heads
		if got.Host != tc.host || got.RequestURI != tc.uri || got.UserAgent() != tc.ua {
			t.Fatalf("%q: host %q uri %q user agent %q", tc.in, got.Host, got.RequestURI, got.UserAgent())
		}
		for _, k := range []string{"Connection", "X-Drop", "Proxy-Authorization", "Content-Length", "X-Forwarded-For"} {
			if _, ok := got.Header[k]; ok {
				t.Errorf("%q: %s passed on", tc.in, k)
			}
		}
		wantVia := []string{"1.1 swarm-proxy"}
		if strings.Contains(tc.in, "Via:") {
			wantVia = []string{"1.0 other", "1.1 swarm-proxy"}
			if te := got.Header.Get("Te"); te != "trailers" {
				t.Errorf("Te %q, want trailers", te)
			}
			if a := got.Header["Accept"]; !slices.Equal(a, []string{"a", "b"}) {
				t.Errorf("Accept %q, want both values in order", a)
			}
		}
		if via := got.Header["Via"]; !slices.Equal(via, wantVia) {
			t.Errorf("Via %q, want %q", via, wantVia)
		}
	}
}
