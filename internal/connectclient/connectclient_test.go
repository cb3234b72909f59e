package connectclient

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/proxy"
)

type fixedAuth struct{}

func (fixedAuth) Authenticate(user, pass string) (string, string, error) {
	if user == "s1" && pass == "tok" {
		return user, "id-tok", nil
	}
	return "", "", errors.New("token is not valid")
}

// startProxy runs swarm-proxy's own front end on loopback, so the errors parsed are the real ones.
func startProxy(t *testing.T, auth proxy.Authenticator) string {
	t.Helper()
	pol, err := policy.Parse("policy.yaml", []byte("mode: enforce\nallow:\n  - cidr: 127.0.0.0/8\n    name: loopback\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := policy.NewHolder(pol)
	srv := &proxy.Server{Policy: h, Dialer: &dial.Direct{Policy: h.Load}, Auth: auth,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestDial(t *testing.T) {
	// answers after the client's EOF: proves half-close crosses the tunnel.
	echo := loopbacktest.Start(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("echo:"), b...))
	}).Addr().String()
	// speaks first, like sshd: its banner may arrive together with the 200.
	banner := loopbacktest.Start(t, func(c net.Conn) {
		c.Write([]byte("SSH-2.0-test\r\n"))
		io.Copy(io.Discard, c)
	}).Addr().String()
	open := startProxy(t, nil)
	authed := startProxy(t, fixedAuth{})
	cases := []struct {
		name     string
		dialer   Dialer
		target   string
		send     string
		want     string
		kind     Kind
		status   int
		contains string
	}{
		{name: "half-close", dialer: Dialer{Proxy: open}, target: echo, send: "ping", want: "echo:ping"},
		{name: "server first", dialer: Dialer{Proxy: open}, target: banner, want: "SSH-2.0-test\r\n"},
		{name: "credentials", dialer: Dialer{Proxy: authed, User: "s1", Password: "tok"}, target: echo, send: "x", want: "echo:x"},
		{name: "blocked", dialer: Dialer{Proxy: open}, target: "10.9.9.9:22", kind: KindBlocked, status: 403, contains: "10.9.9.9 is a private address"},
		{name: "refused", dialer: Dialer{Proxy: open}, target: closedAddr(t), kind: KindUnreachable, status: 502, contains: "connection refused"},
		{name: "wrong token", dialer: Dialer{Proxy: authed, User: "s1", Password: "bad"}, target: echo, kind: KindAuth, status: 407, contains: "token is not valid"},
		{name: "no credentials", dialer: Dialer{Proxy: authed}, target: echo, kind: KindAuth, status: 407, contains: "proxy credentials required"},
		{name: "proxy down", dialer: Dialer{Proxy: closedAddr(t)}, target: echo, kind: KindProxy, contains: "cannot use the proxy"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := c.dialer.Dial(context.Background(), c.target)
			if c.want == "" {
				var e *Error
				if !errors.As(err, &e) || e.Kind != c.kind || e.Status != c.status {
					t.Fatalf("err = %#v; want kind %d status %d", err, c.kind, c.status)
				}
				msg := err.Error()
				if !strings.Contains(msg, c.contains) || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "connect "+c.target) {
					t.Fatalf("message %q: want one line about %s containing %q", msg, c.target, c.contains)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, len(c.want))
			if c.send != "" {
				conn.Write([]byte(c.send))
				if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				got, err = io.ReadAll(conn)
			} else {
				_, err = io.ReadFull(conn, got)
			}
			if err != nil || string(got) != c.want {
				t.Fatalf("read %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestDialTimeout(t *testing.T) {
	// A "proxy" that accepts and never answers.
	silent := loopbacktest.Start(t, func(c net.Conn) { io.Copy(io.Discard, c) }).Addr().String()
	d := Dialer{Proxy: silent, Timeout: 200 * time.Millisecond}
	start := time.Now()
	_, err := d.Dial(context.Background(), "127.0.0.1:1")
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindProxy || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v; want a proxy error with a deadline", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("timeout not applied")
	}
}

func TestOtherProxy(t *testing.T) {
	// Another proxy's refusal, without swarm-proxy headers or body.
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
	}))
	defer p.Close()
	_, err := (&Dialer{Proxy: strings.TrimPrefix(p.URL, "http://")}).Dial(context.Background(), "example.com:22")
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindBlocked || e.Reason != "Forbidden" {
		t.Fatalf("err = %v", err)
	}
}

func TestFromURL(t *testing.T) {
	cases := []struct {
		in, proxy, user, pass string
		bad                   bool
	}{
		{in: "http://127.0.0.1:8080", proxy: "127.0.0.1:8080"},
		{in: "http://s1:t%3Ak@[::1]:3128/", proxy: "[::1]:3128", user: "s1", pass: "t:k"},
		{in: "https://127.0.0.1:8080", bad: true},
		{in: "socks5://127.0.0.1:1080", bad: true},
		{in: "http://127.0.0.1", bad: true},
		{in: "http://127.0.0.1:8080/path", bad: true},
		{in: "127.0.0.1:8080", bad: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			d, err := FromURL(c.in)
			if c.bad {
				if err == nil {
					t.Fatalf("accepted %q", c.in)
				}
				return
			}
			if err != nil || d.Proxy != c.proxy || d.User != c.user || d.Password != c.pass {
				t.Fatalf("FromURL = %+v, %v", d, err)
			}
		})
	}
}

func TestFromTicket(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	cases := []struct {
		name, json, broker, proxy string
		bad                       bool
	}{
		{name: "broker from ticket", json: `{"session_id":"s1","token":"tok","broker_addr":"127.0.0.1:8080","expires_at":"` + future + `"}`, proxy: "127.0.0.1:8080"},
		{name: "broker flag wins", json: `{"session_id":"s1","token":"tok","broker_addr":"127.0.0.1:7000","expires_at":"` + future + `"}`, broker: "127.0.0.1:8081", proxy: "127.0.0.1:8081"},
		{name: "no broker", json: `{"session_id":"s1","token":"tok","expires_at":"` + future + `"}`, bad: true},
		{name: "expired", json: `{"session_id":"s1","token":"tok","broker_addr":"127.0.0.1:8080","expires_at":"` + past + `"}`, bad: true},
		{name: "no token", json: `{"session_id":"s1","broker_addr":"127.0.0.1:8080"}`, bad: true},
		{name: "not json", json: `session=s1`, bad: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "t.json")
			os.WriteFile(f, []byte(c.json), 0o600)
			d, err := FromTicket(f, c.broker)
			if c.bad {
				if err == nil {
					t.Fatalf("accepted %s", c.json)
				}
				return
			}
			if err != nil || d.Proxy != c.proxy || d.User != "s1" || d.Password != "tok" {
				t.Fatalf("FromTicket = %+v, %v", d, err)
			}
		})
	}
}

// FuzzRefusal: whatever a proxy answers, the error is one line and never panics.
func FuzzRefusal(f *testing.F) {
	f.Add(403, `deny; code=no_rule_matched; rule=r; reason="no allow rule matches x:22"`, "swarm-proxy blocked x:22\nreason: r\nfix: add\nrequest id: 1\n")
	f.Add(502, `unreachable; reason="a\nb"`, "")
	f.Add(407, `reason=`, "reason: \n")
	f.Fuzz(func(t *testing.T, status int, header, body string) {
		resp := &http.Response{StatusCode: status, Header: http.Header{}}
		resp.Header.Set(proxy.HeaderDecision, header)
		e := refusal("127.0.0.1:1", "h:"+strconv.Itoa(status&0xffff), resp, body)
		if msg := e.Error(); strings.ContainsAny(msg, "\n\r") {
			t.Fatalf("multi-line error %q", msg)
		}
	})
}
