package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

func TestParseForward(t *testing.T) {
	cases := []struct {
		in, local, target string
		bad               bool
	}{
		{in: "127.0.0.1:2222=10.0.0.5:22", local: "127.0.0.1:2222", target: "10.0.0.5:22"},
		{in: "5433=DB.Internal.:5432", local: "127.0.0.1:5433", target: "db.internal:5432"},
		{in: "[::1]:0=[2001:db8::1]:443", local: "[::1]:0", target: "[2001:db8::1]:443"},
		{in: "0.0.0.0:80=example.com:80", local: "0.0.0.0:80", target: "example.com:80"},
		{in: "127.0.0.1:22", bad: true},
		{in: "2222=host", bad: true},
		{in: "host=example.com:22", bad: true},
		{in: "99999=example.com:22", bad: true},
		{in: "1=exa mple.com:22", bad: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			s, err := parseForward(c.in)
			if c.bad {
				if err == nil {
					t.Fatalf("accepted %q as %+v", c.in, s)
				}
				return
			}
			if err != nil || s.local != c.local || s.target != c.target {
				t.Fatalf("parseForward = %+v, %v; want %s=%s", s, err, c.local, c.target)
			}
		})
	}
}

func TestTunnelFlags(t *testing.T) {
	cases := []struct {
		name string
		f    tunnelFlags
		want string // error substring, "" for success
	}{
		{"proxy", tunnelFlags{proxy: "http://127.0.0.1:8080", timeout: time.Second}, ""},
		{"none", tunnelFlags{timeout: time.Second}, "--ticket FILE (broker) or --proxy"},
		{"both", tunnelFlags{proxy: "http://127.0.0.1:8080", ticket: "t.json", timeout: time.Second}, "not both"},
		{"broker without ticket", tunnelFlags{proxy: "http://127.0.0.1:8080", broker: "127.0.0.1:1", timeout: time.Second}, "--broker goes with --ticket"},
		{"zero timeout", tunnelFlags{proxy: "http://127.0.0.1:8080"}, "--connect-timeout"},
		{"missing ticket", tunnelFlags{ticket: "/nonexistent/t.json", timeout: time.Second}, "load ticket"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.f.dialer()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("dialer() error = %v; want %q", err, c.want)
			}
		})
	}
}

// TestBridgeHalfClose: the end of stdin half-closes the tunnel, and the answer that follows still
// reaches stdout.
func TestBridgeHalfClose(t *testing.T) {
	ln := loopbacktest.Start(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("got:"), b...))
	})
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bridge(ctx, conn, strings.NewReader("stdin data"), &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "got:stdin data" {
		t.Fatalf("stdout %q", out.String())
	}
}
