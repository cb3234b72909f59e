package proxy

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// TestEndRevoked opens two tunnels with two credentials of one session and revokes one: its tunnel
// is cut at once and logged as ticket_revoked, the other keeps echoing; a second call ends nothing.
func TestEndRevoked(t *testing.T) {
	ln := loopbacktest.Start(t, func(c net.Conn) { io.Copy(c, c) })
	target := ln.Addr().String()
	pol := fmt.Sprintf("mode: enforce\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\n", ln.Addr().(*net.TCPAddr).Port)
	tp := startProxy(t, pol, nil, []string{target}, func(s *Server) { s.Auth = staticAuth{} })
	open := func(token string) net.Conn {
		c, br := dialProxy(t, tp.addr)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		auth := base64.StdEncoding.EncodeToString([]byte("s1:" + token))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, auth)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT with %s: %v %v", token, resp, err)
		}
		return bufferedConn{c, br}
	}
	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != "ping" {
			return fmt.Errorf("echo %q", b)
		}
		return nil
	}
	revokedTunnel, kept := open("good"), open("other")
	for _, c := range []net.Conn{revokedTunnel, kept} {
		if err := echo(c); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
	}
	revoke := func(session, credential string) bool { return credential == "id-good" }
	if n := tp.srv.EndRevoked(revoke); n != 1 {
		t.Fatalf("EndRevoked ended %d tunnels, want 1", n)
	}
	revokedTunnel.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := revokedTunnel.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the revoked tunnel is still open: read %d, %v", n, err)
	}
	if err := echo(kept); err != nil {
		t.Fatalf("the other credential's tunnel was cut too: %v", err)
	}
	loopbacktest.Eventually(t, "the revoked tunnel's record", func() bool { return strings.Contains(strings.Join(tp.records(t), "\n"), accesslog.ErrorTicketRevoked) })
	for _, line := range tp.records(t) {
		var rec accesslog.Record
		json.Unmarshal([]byte(line), &rec)
		if rec.Error == accesslog.ErrorTicketRevoked && (rec.Session != "s1" || rec.Method != "CONNECT" || !strings.Contains(rec.Reason, "revoked")) {
			t.Errorf("record %+v", rec)
		}
		if strings.Contains(line, "good") {
			t.Errorf("a record holds the credential: %s", line)
		}
	}
	if n := tp.srv.EndRevoked(revoke); n != 0 {
		t.Errorf("a second EndRevoked ended %d, want 0: the ended tunnel is still registered", n)
	}
	kept.Close()
}

// bufferedConn reads a tunnel through the reader that read its CONNECT response.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestEndRevokedInspected: an inspected tunnel opened with a credential that is then revoked is
// ended too, and its tunnel record says so.
func TestEndRevokedInspected(t *testing.T) {
	fx := newInspectFixture(t, func(s *Server) { s.Auth = staticAuth{} })
	fx.proxyURL.User = url.UserPassword("s1", "good")
	c := fx.client(false)
	if resp, body := do(t, c, "GET", fx.url("api.example.com", "/repos/myorg/x"), ""); resp.StatusCode != 200 {
		t.Fatalf("inspected GET before revocation: %d %s", resp.StatusCode, body)
	}
	if n := fx.tp.srv.EndRevoked(func(_, credential string) bool { return credential == "id-good" }); n != 1 {
		t.Fatalf("EndRevoked ended %d connections, want the one inspected tunnel", n)
	}
	rec := waitRecord(t, fx.tp, func(r accesslog.Record) bool { return r.Method == "CONNECT" && r.Inspected })
	if rec.Error != accesslog.ErrorTicketRevoked || rec.Session != "s1" {
		t.Fatalf("inspected tunnel record %+v: want error %s", rec, accesslog.ErrorTicketRevoked)
	}
}
