package e2e

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestCLITraps runs the built binary the way a newcomer mistypes it: an unknown command exits 2
// with the command it is close to on stderr and nothing on stdout; `version` works; `--listen PORT`
// listens on loopback at PORT.
func TestCLITraps(t *testing.T) {
	r := Run(t, nil, binary, "prxy")
	if r.Code != 2 || r.Stdout != "" || !strings.Contains(r.Stderr, `unknown command "prxy"`) || !strings.Contains(r.Stderr, `did you mean "proxy"?`) {
		t.Errorf("swarm-proxy prxy: exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	r = Run(t, nil, binary, "proxy", "--listen", "8080x")
	if r.Code == 0 || !strings.Contains(r.Stderr, `--listen "8080x": no port; want HOST:PORT, e.g. 127.0.0.1:8080`) {
		t.Errorf("proxy --listen 8080x: exit %d, stderr %q", r.Code, r.Stderr)
	}
	r = Run(t, nil, binary, "version")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "swarm-proxy ") {
		t.Errorf("swarm-proxy version: exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}

	// A port alone: the kernel picks a free one, released just before the proxy binds it again.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	px := Start(t, "proxy listening", "proxy", "--listen", port, "--admin-listen", "")
	if got := px.Field("addr"); got != "127.0.0.1:"+port {
		t.Errorf("--listen %s listens on %s, want 127.0.0.1:%s", port, got, port)
	}
}
