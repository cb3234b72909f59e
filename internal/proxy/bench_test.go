package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// BenchmarkForwardSmallGET forwards small GETs from one kept-alive client to a loopback target, for
// the CPU and allocations of the forward path (`-benchmem`, `-cpuprofile`, `-memprofile`).
func BenchmarkForwardSmallGET(b *testing.B) {
	body := strings.Repeat("x", 100)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) }))
	b.Cleanup(up.Close)
	upAddr := up.Listener.Addr().String()
	tp := startProxy(b, loopbackPolicy, nil, []string{upAddr}, func(s *Server) { s.Log = accesslog.NewWriter(io.Discard) })
	c, err := net.Dial("tcp", tp.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	raw := []byte(fmt.Sprintf("GET http://%s/small HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n\r\n", upAddr, upAddr))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(raw); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n != int64(len(body)) {
			b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
		}
	}
}
