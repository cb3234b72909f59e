package tunnel

import (
	"context"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// BenchmarkBulkDownload measures one stream's throughput from a loopback target through provider
// and broker, over plain TCP and over TLS between them.
func BenchmarkBulkDownload(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		name := "tcp"
		if useTLS {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) { benchmarkBulkDownload(b, useTLS) })
	}
}

func benchmarkBulkDownload(b *testing.B, useTLS bool) {
	e := newEnv(b, useTLS, Config{})
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

// BenchmarkPingPongUnderBulk measures a small exchange's round trip while another stream of the same
// provider connection downloads as fast as it can: each op is one 200-byte message echoed back.
func BenchmarkPingPongUnderBulk(b *testing.B) {
	e := newEnv(b, true, Config{})
	e.provider("s1", "loopback", nil).waitConnected(b)
	bulk, err := e.broker.Dial(context.Background(), req("s1", streamTarget(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer bulk.(*Conn).Reset()
	go io.Copy(io.Discard, bulk)
	c, err := e.broker.Dial(context.Background(), req("s1", echoServer(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, buf := make([]byte, 200), make([]byte, 200)
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		c.Write(msg)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
