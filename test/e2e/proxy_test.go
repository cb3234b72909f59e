package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// pingServer serves ping.txt over plain HTTP on loopback.
func pingServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path != "/ping.txt" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "pong from swarm-proxy test\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func port(t *testing.T, srv *httptest.Server) int { return srv.Listener.Addr().(*net.TCPAddr).Port }

// portsPolicy allows loopback targets on the given ports only, so that names of blocked hosts are
// refused before any DNS lookup.
func portsPolicy(mode string, ports ...int) string {
	list := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(ports)), ", "), "[]")
	return fmt.Sprintf("mode: %s\nallow:\n  - cidr: 127.0.0.0/8\n    name: test-loopback\n    ports: [%s]\n", mode, list)
}

func TestCurlHTTPAndHTTPSThroughProxy(t *testing.T) {
	plain := pingServer(t)
	tlsSrv, ca := TLSServer(t, plain.Config.Handler)
	polFile := WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, plain), port(t, tlsSrv)))
	p := StartProxy(t, "--policy", polFile)

	r := Curl(t, "-f", "-x", "http://"+p.Addr, plain.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("plain HTTP: exit %d stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	r = Curl(t, "-f", "-x", "http://"+p.Addr, "--cacert", ca, tlsSrv.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("HTTPS via CONNECT: exit %d stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
	}

	get := p.WaitRecord(func(r accesslog.Record) bool { return r.Method == "GET" })
	conn := p.WaitRecord(func(r accesslog.Record) bool { return r.Method == "CONNECT" })
	for _, c := range []struct {
		rec    accesslog.Record
		port   int
		path   string
		minIn  int64
		minOut int64
	}{
		{get, port(t, plain), "/ping.txt", 27, 0},
		{conn, port(t, tlsSrv), "", 1000, 200}, // a TLS handshake each way at least
	} {
		rec := c.rec
		if rec.Timestamp.IsZero() || rec.Timestamp.Location() != time.UTC || time.Since(rec.Timestamp) > time.Minute {
			t.Errorf("timestamp %v is not a recent UTC time", rec.Timestamp)
		}
		if rec.Client != "127.0.0.1" || rec.Host != "127.0.0.1" || rec.Port != c.port || rec.Path != c.path ||
			rec.Status != 200 || rec.Decision != "allow" || rec.Mode != "enforce" || rec.Rule != "test-loopback" ||
			rec.RequestID == "" || rec.Upstream != fmt.Sprintf("127.0.0.1:%d", c.port) || !cleanEnd(rec) {
			t.Errorf("record fields wrong: %+v", rec)
		}
		if rec.BytesIn < c.minIn || rec.BytesOut < c.minOut || rec.DurationMS <= 0 {
			t.Errorf("record counts wrong: in %d out %d duration %v", rec.BytesIn, rec.BytesOut, rec.DurationMS)
		}
	}
	// The JSON keys users rely on are spelled exactly so.
	for _, key := range []string{`"timestamp":`, `"client":`, `"method":`, `"host":`, `"port":`, `"path":`, `"status":`, `"decision":`, `"mode":`, `"rule":`, `"reason":`, `"bytes_in":`, `"bytes_out":`, `"duration_ms":`} {
		if !strings.Contains(p.Stdout(), key) {
			t.Errorf("access log has no key %s", key)
		}
	}
}

// cleanEnd accepts the record of a completed exchange: no error, or the client's reset: curl may
// close a finished TLS tunnel with unread bytes (the server's close_notify) and so send an RST.
func cleanEnd(rec accesslog.Record) bool {
	return rec.Error == "" || rec.Error == "client_closed" && strings.Contains(rec.Reason, "connection reset by peer")
}

func TestEnforceBlockShowsClearError(t *testing.T) {
	plain := pingServer(t)
	polFile := WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, plain))+"deny:\n  - host: \"*.pastebin.com\"\n")
	p := StartProxy(t, "--policy", polFile)

	r := Curl(t, "-x", "http://"+p.Addr, "-D", "-", "http://blocked.example/some/path")
	id := regexp.MustCompile(`X-Swarm-Proxy-Request-Id: (\w+)`).FindStringSubmatch(r.Stdout)
	if id == nil {
		t.Fatalf("no request id header in:\n%s", r.Stdout)
	}
	body := r.Stdout[strings.Index(r.Stdout, "\r\n\r\n")+4:]
	want := fmt.Sprintf(`swarm-proxy blocked blocked.example:80
reason: no allow rule matches blocked.example:80 (mode: enforce)
fix: to allow it, add to allow in %s: - {host: blocked.example, ports: [80]}
request id: %s
`, polFile, id[1])
	if !strings.HasPrefix(r.Stdout, "HTTP/1.1 403 Forbidden") || body != want {
		t.Fatalf("curl showed:\n%s\nwant body:\n%s", r.Stdout, want)
	}

	// curl hides the body of a refused CONNECT: the header carries the reason.
	r = Curl(t, "-v", "-x", "http://"+p.Addr, "https://paste.pastebin.com/")
	wantHeader := fmt.Sprintf(`X-Swarm-Proxy-Decision: deny; code=denied_by_rule; rule=deny#1; reason="denied by rule deny#1 (host *.pastebin.com, %s line 7)"`, polFile)
	if r.Code != 56 || !strings.Contains(r.Stderr, "< HTTP/1.1 403 Forbidden") || !strings.Contains(r.Stderr, wantHeader) {
		t.Fatalf("CONNECT refusal: exit %d, stderr:\n%s\nwant header %s", r.Code, r.Stderr, wantHeader)
	}
	rec := p.WaitRecord(func(r accesslog.Record) bool { return r.Method == "CONNECT" })
	if rec.Host != "paste.pastebin.com" || rec.Port != 443 || rec.Status != 403 || rec.Decision != "deny" || rec.Rule != "deny#1" || rec.Error != "denied_by_rule" || !strings.Contains(rec.Reason, "denied by rule deny#1") {
		t.Fatalf("CONNECT refusal record: %+v", rec)
	}
}

func TestDiscoveryLogsEverything(t *testing.T) {
	a := pingServer(t)
	b := httptest.NewUnstartedServer(a.Config.Handler)
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	b.Listener.Close()
	b.Listener = ln
	b.Start()
	defer b.Close()
	polFile := WriteFile(t, "policy.yaml", LoopbackPolicy("discovery", "deny:\n  - host: denied.example\n"))
	p := StartProxy(t, "--policy", polFile)
	targets := []string{
		a.URL + "/ping.txt",
		strings.Replace(a.URL, "127.0.0.1", "localhost", 1) + "/ping.txt",
		b.URL + "/ping.txt",
		a.URL + "/missing",
	}
	for _, u := range targets {
		if r := Curl(t, "-x", "http://"+p.Addr, u); r.Code != 0 {
			t.Fatalf("%s: %+v", u, r)
		}
	}
	r := Curl(t, "-x", "http://"+p.Addr, "http://denied.example/")
	if !strings.Contains(r.Stdout, "denied by rule deny#1") {
		t.Fatalf("deny rule in discovery mode: %+v", r)
	}
	Eventually(t, "five records", func() bool { return len(p.Records()) == 5 })
	recs := p.Records()
	wantHosts := []string{"127.0.0.1", "localhost", "127.0.0.2", "127.0.0.1", "denied.example"}
	wantStatus := []int{200, 200, 200, 404, 403}
	for i, rec := range recs {
		if rec.Host != wantHosts[i] || rec.Status != wantStatus[i] || rec.Mode != "discovery" {
			t.Errorf("record %d: host %q status %d mode %q; want %q %d discovery", i, rec.Host, rec.Status, rec.Mode, wantHosts[i], wantStatus[i])
		}
	}
}

func TestSSRFRefusedInDiscovery(t *testing.T) {
	srv := pingServer(t)
	p := StartProxy(t) // built-in default: discovery, no rules
	for _, target := range []string{
		srv.URL + "/ping.txt", // IP literal
		strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/ping.txt", // a name resolving to loopback
		strings.Replace(srv.URL, "127.0.0.1", "[::1]", 1) + "/ping.txt",
	} {
		r := Curl(t, "-x", "http://"+p.Addr, "-D", "-", target)
		if !strings.HasPrefix(r.Stdout, "HTTP/1.1 403") || !strings.Contains(r.Stdout, "code=private_address") || !strings.Contains(r.Stdout, "a loopback address") {
			t.Errorf("%s was not refused as loopback:\n%s", target, r.Stdout)
		}
	}
	r := Curl(t, "-v", "-x", "http://"+p.Addr, "https://localhost:"+fmt.Sprint(port(t, srv))+"/")
	if r.Code != 56 || !strings.Contains(r.Stderr, "code=private_address") {
		t.Errorf("CONNECT to localhost not refused: %+v", r)
	}
}

func TestKeepAliveBlockedAndAllowedOnOneConnection(t *testing.T) {
	srv := pingServer(t)
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv))))
	r := Curl(t, "-v", "-x", "http://"+p.Addr, srv.URL+"/ping.txt", "http://blocked.example/", srv.URL+"/ping.txt")
	if strings.Count(r.Stdout, "pong from swarm-proxy test") != 2 || !strings.Contains(r.Stdout, "swarm-proxy blocked blocked.example:80") {
		t.Fatalf("responses:\n%s", r.Stdout)
	}
	if !strings.Contains(r.Stderr, "Re-using existing connection") || strings.Count(r.Stderr, "Connected to 127.0.0.1") != 1 {
		t.Fatalf("curl did not keep one connection:\n%s", r.Stderr)
	}
	Eventually(t, "three records", func() bool { return len(p.Records()) == 3 })
	recs := p.Records()
	if recs[0].Decision != "allow" || recs[1].Decision != "deny" || recs[2].Decision != "allow" || recs[1].Host != "blocked.example" {
		t.Fatalf("records: %+v", recs)
	}
}

func TestPolicyReload(t *testing.T) {
	a, b := pingServer(t), pingServer(t)
	polFile := WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, a)))
	p := StartProxy(t, "--policy", polFile)
	status := func(srv *httptest.Server) string {
		return Curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-x", "http://"+p.Addr, srv.URL+"/ping.txt").Stdout
	}
	if status(a) != "200" || status(b) != "403" {
		t.Fatalf("before reload: a %s b %s", status(a), status(b))
	}
	// A changed file is picked up without a signal.
	if err := os.WriteFile(polFile, []byte(portsPolicy("enforce", port(t, a), port(t, b))), 0o644); err != nil {
		t.Fatal(err)
	}
	p.WaitStderr("policy reloaded")
	if status(b) != "200" {
		t.Fatal("b still refused after reload")
	}
	// A broken file is rejected with file and line, and the policy in force stays.
	if err := os.WriteFile(polFile, []byte("mode: enforce\nallow:\n  - host: ok.example\n  - cidr: 10.0.0.1/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The poller may catch the file half written (empty) first; the rejection of the whole file
	// names the file and line.
	p.WaitStderr(polFile + ":4: allow#2: cidr")
	if status(a) != "200" || status(b) != "200" {
		t.Fatal("the old policy is no longer in force after a broken reload")
	}
	p.Signal(syscall.SIGHUP)
	Eventually(t, "a second rejection after SIGHUP", func() bool {
		for _, l := range strings.Split(p.Stderr(), "\n") {
			if strings.Contains(l, "policy reload rejected") && strings.Contains(l, "trigger=SIGHUP") && strings.Contains(l, ":4: allow#2: cidr") {
				return true
			}
		}
		return false
	})
	// policy check reports the same problem and exits non-zero.
	r := Run(t, nil, binary, "policy", "check", polFile)
	if r.Code == 0 || !strings.Contains(r.Stderr, polFile+":4: allow#2: cidr \"10.0.0.1/8\" has host bits set") {
		t.Fatalf("policy check: %+v", r)
	}
	r = Run(t, nil, binary, "policy", "check", WriteFile(t, "good.yaml", portsPolicy("enforce", 80)))
	if r.Code != 0 || !strings.Contains(r.Stdout, "ok (mode enforce, 1 allow rules, 0 deny rules)") {
		t.Fatalf("policy check of a good file: %+v", r)
	}
}

// rawExchange writes raw bytes to the proxy and returns the status line it answers.
func rawExchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	io.WriteString(c, raw)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer to %.40q: %v", raw, err)
	}
	return strings.TrimSpace(line)
}

func TestMalformedAndOversizedRequests(t *testing.T) {
	srv := pingServer(t)
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", port(t, srv))))
	tests := []struct{ name, raw, want string }{
		{"garbage", "GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"bad version", "GET http://x/ HTTP/9.9\r\nHost: x\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"},
		{"connect without port", "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"origin form", "GET /ping.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"bad port", "GET http://example.com:99999/ HTTP/1.1\r\nHost: example.com\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"unsupported scheme", "GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"oversized headers", "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rawExchange(t, p.Addr, tt.raw); !strings.HasPrefix(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	rec := p.WaitRecord(func(r accesslog.Record) bool { return r.Status == 400 && r.Method == "CONNECT" })
	if !strings.Contains(rec.Reason, "CONNECT needs host:port") {
		t.Errorf("400 record reason %q", rec.Reason)
	}
	// The process is alive and serving.
	if r := Curl(t, "-f", "-x", "http://"+p.Addr, srv.URL+"/ping.txt"); r.Code != 0 {
		t.Fatalf("proxy stopped serving after malformed input: %+v", r)
	}
}

func TestSlowClientIsTimedOut(t *testing.T) {
	p := StartProxy(t, "--read-header-timeout", "300ms")
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n") // never finishes its headers
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	start := time.Now()
	_, err = io.ReadAll(c)
	if err != nil {
		t.Fatalf("connection was not closed by the proxy: %v", err)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("closed after %v, before the header timeout", waited)
	}
}

func TestGracefulShutdownWithTunnelInFlight(t *testing.T) {
	echo := loopbacktest.Start(t, func(c net.Conn) { io.Copy(c, c) })
	echoPort := echo.Addr().(*net.TCPAddr).Port
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", portsPolicy("enforce", echoPort)), "--shutdown-timeout", "20s")

	c, br := OpenTunnel(t, p.Addr, fmt.Sprintf("127.0.0.1:%d", echoPort))
	echoOnce := func(msg string) {
		t.Helper()
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q %v", msg, got, err)
		}
	}
	echoOnce("before")
	p.Signal(syscall.SIGTERM)
	p.WaitStderr("shutting down")
	echoOnce("during shutdown")
	if nc, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		nc.Close()
		t.Fatal("the proxy still accepts connections during shutdown")
	}
	select {
	case <-p.Exited():
		t.Fatal("the proxy exited with a tunnel in flight")
	default:
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("unexpected trailing bytes %q", rest)
	}
	if code := p.Wait(); code != 0 {
		t.Fatalf("exit code %d after graceful shutdown", code)
	}
	recs := ParseRecords(t, p.Stdout())
	if len(recs) != 1 || recs[0].Method != "CONNECT" || recs[0].BytesOut != 21 || recs[0].BytesIn != 21 {
		t.Fatalf("tunnel record: %+v", recs)
	}
}

// TestPolicyReloadSlowWriter: a policy file rewritten in place slowly, line by line, is never loaded
// half-written (its deny rules are at the end, so every prefix is a valid, weaker policy); the
// proxy takes it once it has stopped changing.
func TestPolicyReloadSlowWriter(t *testing.T) {
	policyWith := func(n int) string {
		var b strings.Builder
		b.WriteString("mode: discovery\ndeny:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - host: evil%d.example\n", i)
		}
		return b.String()
	}
	polFile := WriteFile(t, "policy.yaml", policyWith(20))
	p := StartProxy(t, "--policy", polFile) // polls every 100 ms
	f, err := os.OpenFile(polFile, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(policyWith(21)) {
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
		time.Sleep(40 * time.Millisecond) // the writer's pace: slower than the poll, faster than the settle time
	}
	f.Close()
	p.WaitStderr("policy reloaded")
	for _, line := range strings.Split(p.Stderr(), "\n") {
		if strings.Contains(line, "policy reload") && !strings.Contains(line, "deny=21") {
			t.Errorf("a reload took the file while it was being written: %s", line)
		}
	}
}
