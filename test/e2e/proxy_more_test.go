package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// seenRequest is what headerEchoServer's handler received, sent back to the client as JSON.
type seenRequest struct {
	RequestURI string
	Host       string
	Header     http.Header
}

// headerEchoServer answers every request with the request line target, Host and headers it received,
// as JSON, and adds the response headers in resp. It remembers every request it saw.
func headerEchoServer(t *testing.T, resp http.Header) (srv *httptest.Server, seen func() []seenRequest) {
	t.Helper()
	var mu sync.Mutex
	var all []seenRequest
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		s := seenRequest{RequestURI: r.RequestURI, Host: r.Host, Header: r.Header.Clone()}
		mu.Lock()
		all = append(all, s)
		mu.Unlock()
		for k, vs := range resp {
			w.Header()[k] = vs
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []seenRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]seenRequest(nil), all...)
	}
}

// curlResponse parses the output of curl -i (one HTTP/1.x response, headers then body).
func curlResponse(t *testing.T, r Result) (*http.Response, string) {
	t.Helper()
	if r.Code != 0 {
		t.Fatalf("curl exit %d: %s", r.Code, r.Stderr)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(r.Stdout)), nil)
	if err != nil {
		t.Fatalf("curl output is not an HTTP response: %v\n%s", err, r.Stdout)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v\n%s", err, r.Stdout)
	}
	return resp, string(body)
}

// TestHopByHopHeadersRemoved checks RFC 9110 section 7.6.1 in both directions: the hop-by-hop
// fields and every field a Connection header names stay on their own hop, end-to-end fields pass,
// and the forwarded request carries Via.
func TestHopByHopHeadersRemoved(t *testing.T) {
	respHeaders := http.Header{
		"Connection": {"X-Resp"},
		"X-Resp":     {"hop-only"},
		"Keep-Alive": {"timeout=7"},
		"X-End":      {"end-to-end"},
	}
	srv, seen := headerEchoServer(t, respHeaders)
	// The upstream really sends the hop-by-hop fields: without the proxy, curl sees them all.
	direct, _ := curlResponse(t, Curl(t, "-i", srv.URL+"/direct"))
	for k, v := range respHeaders {
		if got := direct.Header.Get(k); got != v[0] {
			t.Fatalf("the test server does not send %s: %q (headers %v)", k, got, direct.Header)
		}
	}

	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv))))
	resp, body := curlResponse(t, Curl(t, "-i", "-x", "http://"+p.Addr,
		"-H", "Connection: X-Foo, close",
		"-H", "X-Foo: named-in-connection",
		"-H", "X-Keep: end-to-end",
		"-H", "Keep-Alive: timeout=5",
		"-H", "Proxy-Connection: keep-alive",
		"-H", "Proxy-Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte("u:p")),
		"-H", "TE: trailers, deflate",
		srv.URL+"/hop"))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got seenRequest
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("echo body: %v\n%s", err, body)
	}
	if all := seen(); len(all) != 2 || all[1].RequestURI != "/hop" {
		t.Fatalf("the upstream saw %+v", all)
	}

	// Request direction.
	for _, h := range []string{"Connection", "X-Foo", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization"} {
		if v, ok := got.Header[h]; ok {
			t.Errorf("hop-by-hop request header %s reached the upstream: %q", h, v)
		}
	}
	want := map[string]string{"X-Keep": "end-to-end", "Te": "trailers", "Via": "1.1 swarm-proxy"}
	for h, v := range want {
		if vs := got.Header[h]; len(vs) != 1 || vs[0] != v {
			t.Errorf("upstream got %s %q, want [%q]", h, vs, v)
		}
	}

	// Response direction.
	for _, h := range []string{"X-Resp", "Keep-Alive"} {
		if v, ok := resp.Header[h]; ok {
			t.Errorf("hop-by-hop response header %s reached curl: %q", h, v)
		}
	}
	// The proxy may answer Connection: close on its own hop (curl asked for close), never X-Resp.
	if c := resp.Header.Values("Connection"); len(c) > 0 && (len(c) != 1 || !strings.EqualFold(c[0], "close")) {
		t.Errorf("Connection to curl is %q, want absent or close", c)
	}
	if v := resp.Header.Get("X-End"); v != "end-to-end" {
		t.Errorf("end-to-end response header X-End is %q", v)
	}
}

// TestCredentialsNeverLogged sends proxy credentials and URL userinfo through allowed, refused and
// failing requests with debug logging on; neither secret may appear in the access log or on stderr,
// and the userinfo must not reach the target.
func TestCredentialsNeverLogged(t *testing.T) {
	srv, seen := headerEchoServer(t, nil)
	tlsSrv, ca := TLSServer(t, srv.Config.Handler)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close() // nothing listens there: the forward fails with a dial error
	pol := WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv), port(t, tlsSrv), closedPort))
	p := StartProxy(t, "--policy", pol, "--log-level", "debug")
	proxy := "http://" + p.Addr
	hostPort := strings.TrimPrefix(srv.URL, "http://")

	const proxySecret, urlSecret = "secretpw", "secretpw2"
	secrets := []string{
		proxySecret, urlSecret,
		base64.StdEncoding.EncodeToString([]byte("user:" + proxySecret)),
		base64.StdEncoding.EncodeToString([]byte("user:" + urlSecret)),
	}
	userinfoTarget := func(hostport, path string) string { return "http://user:" + urlSecret + "@" + hostport + path }

	// Proxy-Authorization on a plain request and on a CONNECT.
	if r := Curl(t, "-f", "-x", proxy, "-U", "user:"+proxySecret, srv.URL+"/proxy-auth"); r.Code != 0 {
		t.Fatalf("plain with -U: %+v", r)
	}
	if r := Curl(t, "-f", "-x", proxy, "-U", "user:"+proxySecret, "--cacert", ca, tlsSrv.URL+"/proxy-auth-tls"); r.Code != 0 {
		t.Fatalf("CONNECT with -U: %+v", r)
	}
	// Userinfo in the absolute-form request target, as the proxy receives it.
	if r := Curl(t, "-f", "-x", proxy, "-U", "user:"+proxySecret,
		"--request-target", userinfoTarget(hostPort, "/userinfo"), srv.URL+"/userinfo"); r.Code != 0 {
		t.Fatalf("userinfo target: %+v", r)
	}
	// Refused by policy (logged at debug) and failed dial, both carrying both secrets.
	r := Curl(t, "-x", proxy, "-U", "user:"+proxySecret, "-o", "/dev/null", "-w", "%{http_code}",
		"--request-target", userinfoTarget("blocked.example", "/denied"), "http://blocked.example/denied")
	if r.Stdout != "403" {
		t.Fatalf("blocked target: %+v", r)
	}
	closedHostPort := fmt.Sprintf("127.0.0.1:%d", closedPort)
	r = Curl(t, "-x", proxy, "-U", "user:"+proxySecret, "-o", "/dev/null", "-w", "%{http_code}",
		"--request-target", userinfoTarget(closedHostPort, "/refused"), "http://"+closedHostPort+"/refused")
	if r.Stdout != "502" {
		t.Fatalf("closed port: %+v", r)
	}

	Eventually(t, "five access-log records", func() bool { return len(p.Records()) == 5 })
	// Debug logging is really on: the policy refusal is logged at debug level.
	p.WaitStderr("level=DEBUG")
	for _, s := range secrets {
		if strings.Contains(p.Stdout(), s) {
			t.Errorf("the access log contains %q:\n%s", s, p.Stdout())
		}
		if strings.Contains(p.Stderr(), s) {
			t.Errorf("stderr contains %q:\n%s", s, p.Stderr())
		}
	}

	all := seen()
	if len(all) != 3 {
		t.Fatalf("the upstream saw %d requests, want 3: %+v", len(all), all)
	}
	for _, s := range all {
		raw, _ := json.Marshal(s)
		for _, sec := range secrets {
			if strings.Contains(string(raw), sec) {
				t.Errorf("the upstream received %q: %s", sec, raw)
			}
		}
		if v, ok := s.Header["Authorization"]; ok {
			t.Errorf("the upstream received Authorization %q for %s", v, s.RequestURI)
		}
		if v, ok := s.Header["Proxy-Authorization"]; ok {
			t.Errorf("the upstream received Proxy-Authorization %q for %s", v, s.RequestURI)
		}
	}
	if u := all[2]; u.RequestURI != "/userinfo" || u.Host != hostPort {
		t.Errorf("userinfo request reached the upstream as %q host %q, want /userinfo host %s", u.RequestURI, u.Host, hostPort)
	}
}

// TestAllowClientsRefusesOthers runs the proxy with --allow-clients excluding loopback: a loopback
// client is refused for plain HTTP and CONNECT before any dial, with the reason shown and logged.
func TestAllowClientsRefusesOthers(t *testing.T) {
	var hits atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
	plain := httptest.NewServer(h)
	t.Cleanup(plain.Close)
	tlsSrv, ca := TLSServer(t, h)
	pol := WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, plain), port(t, tlsSrv)))
	p := StartProxy(t, "--policy", pol, "--allow-clients", "10.0.0.0/8")
	const reason = "client 127.0.0.1 is not in --allow-clients"

	r := Curl(t, "-D", "-", "-x", "http://"+p.Addr, plain.URL+"/plain")
	if !strings.HasPrefix(r.Stdout, "HTTP/1.1 403 Forbidden") || !strings.Contains(r.Stdout, "reason: "+reason) {
		t.Errorf("plain HTTP from a refused client:\n%s", r.Stdout)
	}
	r = Curl(t, "-v", "-x", "http://"+p.Addr, "--cacert", ca, tlsSrv.URL+"/tls")
	if r.Code != 56 || !strings.Contains(r.Stderr, "< HTTP/1.1 403 Forbidden") || !strings.Contains(r.Stderr, "code=client_not_allowed") ||
		!strings.Contains(r.Stderr, fmt.Sprintf("reason=%q", reason)) {
		t.Errorf("CONNECT from a refused client: exit %d\n%s", r.Code, r.Stderr)
	}

	Eventually(t, "two records", func() bool { return len(p.Records()) == 2 })
	for i, c := range []struct {
		method string
		port   int
		path   string
	}{{"GET", port(t, plain), "/plain"}, {"CONNECT", port(t, tlsSrv), ""}} {
		rec := p.Records()[i]
		if rec.Method != c.method || rec.Client != "127.0.0.1" || rec.Host != "127.0.0.1" || rec.Port != c.port || rec.Path != c.path ||
			rec.Status != 403 || rec.Decision != accesslog.DecisionDeny || rec.Error != "client_not_allowed" || rec.Reason != reason || rec.Upstream != "" {
			t.Errorf("record %d: %+v", i, rec)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the targets were reached %d times from a refused client", n)
	}
}

// TestShutdownTimeoutAbortsIdleTunnel: on SIGTERM an idle tunnel holds the proxy only until
// --shutdown-timeout; then the tunnel is ended, its record written, and the process exits 0.
func TestShutdownTimeoutAbortsIdleTunnel(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	upstreamDone := make(chan error, 1)
	go func() {
		c, err := echo.Accept()
		if err != nil {
			upstreamDone <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * waitTimeout))
		_, err = io.Copy(c, c) // echoes, then waits idle until the proxy ends the tunnel
		upstreamDone <- err
	}()
	echoPort := echo.Addr().(*net.TCPAddr).Port
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", echoPort)), "--shutdown-timeout", "1s")

	c, br := OpenTunnel(t, p.Addr, fmt.Sprintf("127.0.0.1:%d", echoPort))
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through the tunnel: %q %v", got, err)
	}

	start := time.Now()
	p.Signal(syscall.SIGTERM)
	p.WaitStderr("shutting down")
	// The client sends nothing more; the proxy must end the tunnel itself.
	c.SetReadDeadline(start.Add(10 * time.Second))
	rest, err := io.ReadAll(br)
	ended := time.Since(start)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the tunnel was not ended within 10s of SIGTERM")
	}
	if len(rest) != 0 {
		t.Fatalf("unexpected bytes on the tunnel: %q", rest)
	}
	var code int
	select {
	case <-p.Exited():
		code = p.Wait()
	case <-time.After(10*time.Second - time.Since(start)):
		t.Fatalf("the proxy did not exit within 10s of SIGTERM (tunnel ended after %v)", ended)
	}
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit code %d after the shutdown timeout", code)
	}
	if took < 900*time.Millisecond || ended < 900*time.Millisecond {
		t.Errorf("the tunnel ended after %v and the process after %v, before --shutdown-timeout 1s", ended, took)
	}
	if !strings.Contains(p.Stderr(), "shutdown timeout reached") {
		t.Errorf("stderr does not report the timeout:\n%s", p.Stderr())
	}
	select {
	case <-upstreamDone: // the upstream side of the tunnel was closed too
	case <-time.After(waitTimeout):
		t.Error("the upstream side of the tunnel stayed open after the proxy exited")
	}
	recs := ParseRecords(t, p.Stdout())
	if len(recs) != 1 || recs[0].Method != "CONNECT" || recs[0].Status != 200 || recs[0].Port != echoPort ||
		recs[0].BytesOut != 4 || recs[0].BytesIn != 4 {
		t.Fatalf("tunnel record: %+v", recs)
	}
	// An aborted tunnel must not be logged as a clean end, and says why it ended.
	if recs[0].Error != "shutting_down" || !strings.Contains(recs[0].Reason, "--shutdown-timeout") {
		t.Errorf("the record of the aborted tunnel: error %q reason %q, want shutting_down and the flag", recs[0].Error, recs[0].Reason)
	}
}
