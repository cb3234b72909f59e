package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// socksPolicy allows loopback and denies one name by rule.
func socksPolicy(t *testing.T) string {
	return WriteFile(t, "policy.yaml", LoopbackPolicy("enforce", "deny:\n  - host: blocked.example\n    name: test-deny\n"))
}

func startSOCKSProxy(t *testing.T) *Proc {
	t.Helper()
	px := StartProxy(t, "--policy", socksPolicy(t), "--socks-listen", "127.0.0.1:0")
	if px.Field("socks") == "" {
		t.Fatalf("proxy listening line has no socks address:\n%s", px.Stderr())
	}
	return px
}

// halfCloseServer reads until the client's EOF, then answers "got:" and what it read.
func halfCloseServer(t *testing.T) (addr string) {
	t.Helper()
	return loopbacktest.Start(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(waitTimeout))
		b, err := io.ReadAll(c)
		if err != nil {
			return
		}
		c.Write(append([]byte("got:"), b...))
	}).Addr().String()
}

func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	return h, port
}

func TestSOCKS5Curl(t *testing.T) {
	needTools(t, "curl")
	px := startSOCKSProxy(t)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain ok") }))
	t.Cleanup(plain.Close)
	tlsSrv, ca := TLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tls ok") }))
	_, plainPort := hostPort(t, strings.TrimPrefix(plain.URL, "http://"))
	_, tlsPort := hostPort(t, strings.TrimPrefix(tlsSrv.URL, "https://"))

	cases := []struct {
		name     string
		args     []string
		body     string
		code     int // curl exit code
		host     string
		port     int
		status   int
		decision string
	}{
		{name: "http", args: []string{plain.URL + "/x"}, body: "plain ok", host: "127.0.0.1", port: plainPort, status: 200, decision: accesslog.DecisionAllow},
		{name: "https", args: []string{"--cacert", ca, tlsSrv.URL + "/"}, body: "tls ok", host: "127.0.0.1", port: tlsPort, status: 200, decision: accesslog.DecisionAllow},
		// curl's exit code 97 is "proxy handshake error": the SOCKS5 reply refused the connection.
		{name: "blocked by rule", args: []string{"http://blocked.example:8080/"}, code: 97, host: "blocked.example", port: 8080, status: 403, decision: accesslog.DecisionDeny},
		{name: "private address", args: []string{"http://10.11.12.13:9/"}, code: 97, host: "10.11.12.13", port: 9, status: 403, decision: accesslog.DecisionDeny},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Curl(t, append([]string{"--socks5-hostname", px.Field("socks")}, c.args...)...)
			if r.Code != c.code || (c.code == 0 && r.Stdout != c.body) {
				t.Fatalf("curl: exit %d (want %d), stdout %q (want %q), stderr %s", r.Code, c.code, r.Stdout, c.body, r.Stderr)
			}
			rec := px.WaitRecord(func(r accesslog.Record) bool { return r.Host == c.host && r.Port == c.port })
			if rec.Method != "SOCKS5" || rec.Status != c.status || rec.Decision != c.decision || rec.Client != "127.0.0.1" || rec.Mode != "enforce" {
				t.Fatalf("record %+v: want method SOCKS5, status %d, decision %s", rec, c.status, c.decision)
			}
			if c.status == 200 && (rec.BytesIn == 0 || rec.BytesOut == 0 || rec.Rule != "test-loopback") {
				t.Fatalf("record %+v: want bytes both ways and rule test-loopback", rec)
			}
			if c.status == 403 && rec.Reason == "" {
				t.Fatalf("record %+v: a refusal must say why", rec)
			}
		})
	}
}

func TestSOCKS5GoClient(t *testing.T) {
	px := startSOCKSProxy(t)
	target := halfCloseServer(t)
	_, port := hostPort(t, target)
	d, err := xproxy.SOCKS5("tcp", px.Field("socks"), nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("half-close", func(t *testing.T) {
		c, err := d.Dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := io.WriteString(c, "request"); err != nil {
			t.Fatal(err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "got:request" {
			t.Fatalf("after half-close read %q, %v; want got:request", got, err)
		}
		rec := px.WaitRecord(func(r accesslog.Record) bool { return r.Method == "SOCKS5" && r.Port == port })
		if rec.Status != 200 || rec.BytesOut != 7 || rec.BytesIn != 11 || rec.Decision != accesslog.DecisionAllow {
			t.Fatalf("record %+v: want status 200, 7 bytes out, 11 in", rec)
		}
	})

	t.Run("blocked", func(t *testing.T) {
		_, err := d.Dial("tcp", "blocked.example:443")
		if err == nil || !strings.Contains(err.Error(), "not allowed by ruleset") {
			t.Fatalf("dial blocked target: %v; want the SOCKS5 reply 'not allowed by ruleset'", err)
		}
		rec := px.WaitRecord(func(r accesslog.Record) bool { return r.Host == "blocked.example" && r.Port == 443 })
		if rec.Method != "SOCKS5" || rec.Status != 403 || rec.Decision != accesslog.DecisionDeny || rec.Rule != "test-deny" || rec.Error != "denied_by_rule" {
			t.Fatalf("record %+v: want a SOCKS5 denial by test-deny", rec)
		}
	})

	t.Run("refused", func(t *testing.T) {
		closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		_, err := d.Dial("tcp", closed)
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("dial closed port: %v; want the SOCKS5 reply 'connection refused'", err)
		}
	})
}

func TestSOCKS5Broker(t *testing.T) {
	b := startBroker(t, "--socks-listen", "127.0.0.1:0")
	ticketFile, tk := b.ticket("socks-session", "1h")
	b.provider(ticketFile, tk["session_id"], 1)
	target := halfCloseServer(t)
	_, port := hostPort(t, target)
	cases := []struct {
		name, user, pass string
		ok               bool
	}{
		{"ticket", tk["session_id"], tk["token"], true},
		{"wrong token", tk["session_id"], tk["token"] + "x", false},
		{"no login", "", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var auth *xproxy.Auth
			if c.user != "" {
				auth = &xproxy.Auth{User: c.user, Password: c.pass}
			}
			d, err := xproxy.SOCKS5("tcp", b.Field("socks"), auth, xproxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := d.Dial("tcp", target)
			if !c.ok {
				if err == nil {
					conn.Close()
					t.Fatal("tunnel opened without a valid ticket")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(waitTimeout))
			io.WriteString(conn, "via provider")
			conn.(*net.TCPConn).CloseWrite()
			if got, err := io.ReadAll(conn); err != nil || string(got) != "got:via provider" {
				t.Fatalf("read %q, %v", got, err)
			}
			rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Method == "SOCKS5" && r.Port == port && r.Status == 200 })
			if rec.Session != "socks-session" || rec.Provider == "" {
				t.Fatalf("record %+v: want session socks-session and a provider", rec)
			}
		})
	}
	Eventually(t, "2 SOCKS5 login refusals (407) in the log", func() bool {
		n := 0
		for _, r := range b.Records() {
			if r.Method == "SOCKS5" && r.Status == 407 && r.Decision == accesslog.DecisionDeny && r.Error == "auth" {
				n++
			}
		}
		return n == 2
	})
}

// TestSOCKS5Shutdown: on SIGTERM the SOCKS5 listener stops with the proxy; a tunnel still open at
// --shutdown-timeout is cut and logged, and the process exits 0.
func TestSOCKS5Shutdown(t *testing.T) {
	px := StartProxy(t, "--policy", socksPolicy(t), "--socks-listen", "127.0.0.1:0", "--shutdown-timeout", "300ms")
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		c, err := silent.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	d, err := xproxy.SOCKS5("tcp", px.Field("socks"), nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp", silent.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	px.Signal(syscall.SIGTERM)
	if code := px.Wait(); code != 0 {
		t.Fatalf("proxy exited %d:\n%s", code, px.Stderr())
	}
	c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("tunnel still open after the proxy stopped")
	}
	_, port := hostPort(t, silent.Addr().String())
	rec := px.WaitRecord(func(r accesslog.Record) bool { return r.Method == "SOCKS5" && r.Port == port })
	if rec.Status != 200 || rec.Error == "" {
		t.Fatalf("record %+v: want the cut tunnel logged with an error", rec)
	}
	if _, err := net.Dial("tcp", px.Field("socks")); err == nil {
		t.Fatal("SOCKS5 listener still accepting after shutdown")
	}
}
