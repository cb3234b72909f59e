package tunnel

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// BenchmarkBulkDownload measures one stream's throughput from a loopback target through provider
// and broker (plain TCP between them).
func BenchmarkBulkDownload(b *testing.B) {
	e := newEnv(b, false, Config{})
	e.provider("s1", "loopback", nil).waitConnected(b)
	const size = 64 << 20
	buf := make([]byte, 256<<10)
	ln := loopbacktest.Start(b, func(c net.Conn) {
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	target := targetOf(b, ln.Addr())
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		c, err := e.broker.Dial(context.Background(), req("s1", target))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, c)
		c.Close()
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
}
