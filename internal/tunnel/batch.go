package tunnel

import (
	"crypto/tls"
	"net"
	"sync"
)

// batchSize bounds the TLS records gathered into one write on the provider connection.
const batchSize = 256 << 10

// batchConn is the TCP connection under a provider connection's TLS. crypto/tls writes every record
// (at most 16 KiB of data) with a write of its own, so a 1 MiB multiplexer frame took 64 system
// calls, each waking the peer. While a batch is open (batchedTLS.Write), batchConn gathers the
// records and writes them in pieces of up to batchSize bytes; outside one (the handshake, alerts) it
// writes through.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching {
		return c.Conn.Write(p)
	}
	if len(c.buf)+len(p) > batchSize {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= batchSize {
			return c.Conn.Write(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *batchConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// batchedTLS is the TLS connection the multiplexer writes to: each Write is one batch, so one frame
// leaves in as few system calls as its size allows.
type batchedTLS struct {
	*tls.Conn
	raw *batchConn
}

func (t batchedTLS) Write(p []byte) (int, error) {
	t.raw.mu.Lock()
	t.raw.batching = true
	t.raw.mu.Unlock()
	n, err := t.Conn.Write(p)
	t.raw.mu.Lock()
	t.raw.batching = false
	ferr := t.raw.flushLocked()
	t.raw.mu.Unlock()
	if err == nil {
		err = ferr
	}
	return n, err
}

// forMux returns the connection the multiplexer should run on: c itself, or, for a TLS connection
// made over a batchConn, one whose writes are batched.
func forMux(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		if bc, ok := tc.NetConn().(*batchConn); ok {
			return batchedTLS{Conn: tc, raw: bc}
		}
	}
	return c
}
