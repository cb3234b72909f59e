package tunnel

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
)

// writeCounter counts the writes that reach the TCP connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tlsPair returns a TLS server connection over a counted batchConn and the client end, both
// handshaken, over real loopback TCP.
func tlsPair(t *testing.T) (server net.Conn, counted *writeCounter, client *tls.Conn) {
	t.Helper()
	srvCfg, cliCfg := testTLS(t)
	raw, sraw := loopbacktest.TCPPair(t)
	cliCfg = cliCfg.Clone()
	cliCfg.ServerName = "127.0.0.1"
	client = tls.Client(raw, cliCfg)
	t.Cleanup(func() { client.Close() })
	counted = &writeCounter{Conn: sraw}
	tc := tls.Server(&batchConn{Conn: counted}, srvCfg)
	t.Cleanup(func() { tc.Close() })
	done := make(chan error, 1)
	go func() {
		err := client.Handshake()
		if err != nil {
			client.Close()
		}
		done <- err
	}()
	serr := tc.Handshake()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return forMux(tc), counted, client
}

// TestBatchedTLSWrites checks that one multiplexer write of 1 MiB leaves in a few TCP writes instead
// of one per TLS record, and that the bytes arrive intact and in order, also when writes outside a
// batch (TLS's own, here a close_notify) follow.
func TestBatchedTLSWrites(t *testing.T) {
	server, counted, client := tlsPair(t)
	if _, ok := server.(batchedTLS); !ok {
		t.Fatalf("forMux returned %T, want batchedTLS", server)
	}
	msg := make([]byte, 1<<20+7)
	rand.Read(msg)
	small := []byte("after the big one")
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	before := counted.writes.Load()
	if n, err := server.Write(msg); err != nil || n != len(msg) {
		t.Fatalf("write = %d, %v", n, err)
	}
	bigWrites := counted.writes.Load() - before
	if _, err := server.Write(small); err != nil {
		t.Fatal(err)
	}
	server.Close()
	if b := <-got; !bytes.Equal(b, append(msg, small...)) {
		t.Fatalf("client read %d bytes, not the %d written (or out of order)", len(b), len(msg)+len(small))
	}
	// 1 MiB is 65 TLS records; batches of 256 KiB make 5 writes.
	if want := int64(len(msg)/batchSize + 1); bigWrites > want {
		t.Fatalf("1 MiB went out in %d TCP writes, want at most %d", bigWrites, want)
	}
}

// TestBatchedTLSSmallWrites checks that a small frame is written at once (not held for a later one)
// and that a connection without TLS is left alone.
func TestBatchedTLSSmallWrites(t *testing.T) {
	server, counted, client := tlsPair(t)
	before := counted.writes.Load()
	for i := range 3 {
		msg := []byte{byte(i), 'x', 'y'}
		if _, err := server.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(client, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("read %q, %v; want %q", buf, err, msg)
		}
	}
	if n := counted.writes.Load() - before; n != 3 {
		t.Fatalf("3 small frames took %d TCP writes, want 3", n)
	}
	plain := &net.TCPConn{}
	if forMux(plain) != net.Conn(plain) {
		t.Fatal("forMux changed a plaintext connection")
	}
}
