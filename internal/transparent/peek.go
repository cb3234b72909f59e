// Package transparent is the part of transparent capture that is not the pipeline: the original
// destination of a connection the firewall redirected (SO_ORIGINAL_DST), a look at the client's
// first bytes for the name it wants (the TLS ClientHello's SNI through crypto/tls, or the HTTP/1
// Host header through net/http), and the check that the destination is an address that name
// resolves to, so that a client cannot borrow an allowed name to reach another address.
package transparent

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// MaxPeek bounds the bytes read to find a name: a ClientHello with post-quantum key shares is
// under 2 KiB, one split over records or an HTTP request head stays well under this.
const MaxPeek = 64 << 10

// Proto is what the first bytes were recognised as.
type Proto string

// Protocols.
const (
	ProtoTLS     Proto = "tls"
	ProtoHTTP    Proto = "http"
	ProtoUnknown Proto = "" // nothing recognised, or nothing sent in time
)

// Hello is what a client's first bytes say about where it wants to go.
type Hello struct {
	Proto Proto
	// Name is the normalised SNI or Host name; "" when the client named none, or named an IP
	// address (then only the destination address counts).
	Name string
	// Problem says why a TLS or HTTP client's name could not be used (a malformed ClientHello, a
	// name that is not a host name); "" when there is none.
	Problem string
}

// errPeeked ends crypto/tls's handshake once it has parsed the ClientHello.
var errPeeked = errors.New("transparent: ClientHello read")

// ErrTooLong is returned (wrapped in Hello.Problem's error) when the first bytes exceed MaxPeek.
var ErrTooLong = fmt.Errorf("first bytes longer than %d without a complete ClientHello or request head", MaxPeek)

// Peek reads the client's first bytes to find the name it wants. It waits up to firstByte for the
// client to speak at all (server-first protocols send nothing: they get ProtoUnknown), then up to
// timeout for a complete ClientHello or request head, and returns the bytes it read, which belong
// to the stream: send them on first (or read c through Replay). err is set only when the client
// left or failed before sending anything. c's read deadline is cleared on return.
func Peek(c net.Conn, firstByte, timeout time.Duration) (Hello, []byte, error) {
	rec := &recorder{r: c}
	defer c.SetReadDeadline(time.Time{})
	c.SetReadDeadline(time.Now().Add(firstByte))
	var first [1]byte
	if _, err := io.ReadFull(rec, first[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return Hello{}, nil, nil
		}
		return Hello{}, nil, fmt.Errorf("transparent: read the first bytes: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	var h Hello
	if first[0] == 0x16 { // a TLS handshake record
		h = peekTLS(io.MultiReader(bytes.NewReader(first[:]), rec))
	} else {
		h = peekHTTP(io.MultiReader(bytes.NewReader(first[:]), rec))
	}
	if h.Problem != "" && rec.tooLong {
		h.Problem = ErrTooLong.Error()
	}
	return h, rec.buf, nil
}

// Replay returns a conn that reads peeked again before the rest of c.
func Replay(c net.Conn, peeked []byte) net.Conn {
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(peeked), c)}
}

// peekTLS parses a ClientHello with crypto/tls on a conn that cannot write.
func peekTLS(r io.Reader) Hello {
	var name string
	var seen bool
	cfg := &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		name, seen = hi.ServerName, true
		return nil, errPeeked
	}}
	err := tls.Server(readOnlyConn{r: r}, cfg).Handshake()
	if !seen {
		return Hello{Proto: ProtoTLS, Problem: "not a valid TLS ClientHello: " + err.Error()}
	}
	return named(ProtoTLS, name)
}

// maxMethodLen bounds the request method looked for before the first space.
const maxMethodLen = 20

// peekHTTP reads an HTTP/1 request head with net/http, once the first bytes look like a request
// line: a method in capitals, then a space. Anything else is told apart by the first byte that does
// not fit, so that a binary protocol whose client speaks first and then waits (PostgreSQL's
// SSLRequest) is not held until the timeout waiting for a line.
func peekHTTP(r io.Reader) Hello {
	br := bufio.NewReader(r)
	for i := 1; ; i++ {
		b, err := br.Peek(i)
		if err != nil || i > maxMethodLen+1 {
			return Hello{Problem: "neither a TLS ClientHello nor an HTTP/1 request"}
		}
		if c := b[i-1]; c == ' ' && i > 1 {
			break
		} else if c < 'A' || c > 'Z' {
			return Hello{Problem: "neither a TLS ClientHello nor an HTTP/1 request"}
		}
	}
	req, err := http.ReadRequest(br)
	if err != nil {
		return Hello{Problem: "not a valid HTTP/1 request: " + err.Error()}
	}
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return named(ProtoHTTP, host)
}

// named normalises a client's name; IP literals name no host.
func named(p Proto, name string) Hello {
	if name == "" {
		return Hello{Proto: p}
	}
	h, err := policy.NormalizeHost(name)
	if err != nil {
		return Hello{Proto: p, Problem: err.Error()}
	}
	if _, isIP := (policy.Target{Host: h}).Addr(); isIP {
		return Hello{Proto: p}
	}
	return Hello{Proto: p, Name: h}
}

// recorder reads from r and keeps every byte read, up to MaxPeek.
type recorder struct {
	r       io.Reader
	buf     []byte
	tooLong bool
}

func (r *recorder) Read(p []byte) (int, error) {
	if len(r.buf) >= MaxPeek {
		r.tooLong = true
		return 0, ErrTooLong
	}
	if room := MaxPeek - len(r.buf); len(p) > room {
		p = p[:room]
	}
	n, err := r.r.Read(p)
	r.buf = append(r.buf, p[:n]...)
	return n, err
}

// readOnlyConn is what crypto/tls parses the ClientHello from: its writes (the alert sent when
// the handshake is cut short) go nowhere.
type readOnlyConn struct{ r io.Reader }

func (c readOnlyConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c readOnlyConn) Write(p []byte) (int, error)      { return 0, errors.New("read-only") }
func (c readOnlyConn) Close() error                     { return nil }
func (c readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (c readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

var _ net.Conn = readOnlyConn{}

// replayConn reads the peeked bytes again, then the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection when it can, for relays that pass on a FIN.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
