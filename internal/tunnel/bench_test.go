package tunnel

import (
	"context"
	"io"
	"net"
	"sync"
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

// BenchmarkPingPong16 measures small request/response exchanges on 16 streams at once over one TLS
// provider connection, like 16 kept-alive HTTP clients: each op is one 200-byte message echoed back.
func BenchmarkPingPong16(b *testing.B) {
	e := newEnv(b, true, Config{})
	e.provider("s1", "loopback", nil).waitConnected(b)
	target := echoServer(b)
	const clients = 16
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := e.broker.Dial(context.Background(), req("s1", target))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	msg := make([]byte, 200)
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/clients + 1
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(msg))
			for range per {
				if _, err := c.Write(msg); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
