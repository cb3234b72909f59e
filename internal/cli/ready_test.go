package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/admin"
	"github.com/swarm-proxy/swarm-proxy/internal/serve"
)

// TestReadyzFailsWhenAListenerIsGone: /readyz says ready while every listener serves, and names
// the listener once one has stopped accepting for good.
func TestReadyzFailsWhenAListenerIsGone(t *testing.T) {
	rt := &runtime{registry: admin.NewRegistry(), health: &serve.Health{}}
	srv, addr, err := startAdmin(context.Background(), "127.0.0.1:0", rt)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("before: %d %q", code, body)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	raw.Close() // closed under the wrapper: gone for good, not closed by its server
	if _, err := serve.Listen(raw, "socks", rt.health, nil).Accept(); err == nil {
		t.Fatal("Accept on a closed listener succeeded")
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "the socks listener stopped accepting") {
		t.Fatalf("after: %d %q, want 503 naming the socks listener", code, body)
	}
}
