package doctor

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// TestCaptureCheck: the capture check tells a transparent swarm-proxy (its refusal carries its
// headers) from a firewall that refuses, a network that drops, and something else that answers.
// Every probe goes to loopback.
func TestCaptureCheck(t *testing.T) {
	answer := func(head string) string {
		ln := loopbacktest.Start(t, func(c net.Conn) {
			defer c.Close()
			http.ReadRequest(bufio.NewReader(c))
			c.Write([]byte(head))
		})
		return ln.Addr().String()
	}
	transparent := answer("HTTP/1.1 403 Forbidden\r\nX-Swarm-Proxy-Decision: deny; code=no_rule_matched\r\nContent-Length: 0\r\n\r\n")
	other := answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	garbage := answer("SSH-2.0-OpenSSH\r\n")
	tests := []struct {
		name   string
		probe  string
		dial   func(ctx context.Context, network, addr string) (net.Conn, error)
		status Status
		want   string
	}{
		{"captured", transparent, nil, OK, "captured: a tool that ignores the proxy variables is redirected"},
		{"refused by a firewall", "", refuseDirect, Warn, "not captured: a direct connection (to 192.0.2.1:80, ignoring the variables) is refused at once"},
		{"dropped", "", func(ctx context.Context, _, _ string) (net.Conn, error) { <-ctx.Done(); return nil, ctx.Err() }, Warn, "got no answer"},
		{"another HTTP server", other, nil, Fail, "without swarm-proxy's headers"},
		{"not HTTP", garbage, nil, Fail, "not swarm-proxy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []Result
			checkCapture(context.Background(), Config{CaptureProbe: tt.probe, DialDirect: tt.dial, Timeout: 200 * time.Millisecond}, func(r Result) { got = append(got, r) })
			if len(got) != 1 || got[0].Status != tt.status || !strings.Contains(got[0].Message, tt.want) {
				t.Fatalf("got %v, want %s with %q", got, tt.status, tt.want)
			}
			if tt.status != OK && !strings.Contains(got[0].Fix, "firewall --transparent") {
				t.Errorf("no fix: %v", got[0])
			}
		})
	}
}
