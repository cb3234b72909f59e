package transparent

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// loopbackPair returns both ends of a TCP connection on loopback.
func loopbackPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func testCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestPeekTLS: the SNI of a real crypto/tls client is found, and the peeked bytes replayed to a real
// TLS server let the handshake and the data through unchanged.
func TestPeekTLS(t *testing.T) {
	for _, tc := range []struct{ sni, want string }{
		{"Allowed.Test", "allowed.test"},
		{"", ""},          // no SNI: only the destination address counts
		{"192.0.2.7", ""}, // crypto/tls sends no SNI for an IP address
		{"bücher.test", "xn--bcher-kva.test"},
	} {
		t.Run(tc.sni, func(t *testing.T) {
			client, server := loopbackPair(t)
			cert := testCert(t, "allowed.test")
			pool := x509.NewCertPool()
			leaf, _ := x509.ParseCertificate(cert.Certificate[0])
			pool.AddCert(leaf)
			result := make(chan error, 1)
			payload := bytes.Repeat([]byte("data through the replayed TLS connection "), 1000)
			go func() {
				tc := tls.Client(client, &tls.Config{ServerName: tc.sni, RootCAs: pool, InsecureSkipVerify: tc.sni != "Allowed.Test"})
				if _, err := tc.Write(payload); err != nil {
					result <- err
					return
				}
				result <- tc.CloseWrite()
			}()
			h, peeked, err := Peek(server, 5*time.Second, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if h.Proto != ProtoTLS || h.Name != tc.want || h.Problem != "" {
				t.Fatalf("Peek = %+v, want TLS name %q", h, tc.want)
			}
			if len(peeked) == 0 || peeked[0] != 0x16 {
				t.Fatalf("peeked % x", peeked[:min(len(peeked), 8)])
			}
			ts := tls.Server(Replay(server, peeked), &tls.Config{Certificates: []tls.Certificate{cert}})
			got, err := io.ReadAll(ts)
			if err != nil {
				t.Fatalf("TLS server over the replayed conn: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("got %d bytes, want the %d sent", len(got), len(payload))
			}
			if err := <-result; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPeekHTTP(t *testing.T) {
	tests := []struct {
		name, head, want string
	}{
		{"host with port", "GET /x HTTP/1.1\r\nHost: Allowed.Test:8080\r\nUser-Agent: t\r\n\r\n", "allowed.test"},
		{"host without port", "POST /x HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\n\r\nbody", "allowed.test"},
		{"absolute form", "GET http://abs.test/x HTTP/1.1\r\nHost: abs.test\r\n\r\n", "abs.test"},
		{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", ""},
		{"IP literal Host", "GET / HTTP/1.1\r\nHost: 192.0.2.7\r\n\r\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := loopbackPair(t)
			go client.Write([]byte(tt.head))
			h, peeked, err := Peek(server, 5*time.Second, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if h.Proto != ProtoHTTP || h.Name != tt.want || h.Problem != "" {
				t.Fatalf("Peek = %+v, want HTTP name %q", h, tt.want)
			}
			// net/http reads the same request again from the replayed conn.
			req, err := http.ReadRequest(bufio.NewReader(Replay(server, peeked)))
			if err != nil {
				t.Fatal(err)
			}
			if req.Method == "POST" {
				body, _ := io.ReadAll(req.Body)
				if string(body) != "body" {
					t.Errorf("body %q", body)
				}
			}
		})
	}
}

func TestPeekOther(t *testing.T) {
	tests := []struct {
		name    string
		send    []byte // nil: send nothing
		problem string // substring of Hello.Problem
	}{
		{"server-first protocol sends nothing", nil, ""},
		{"SSH banner", []byte("SSH-2.0-OpenSSH_9.6\r\n"), "neither a TLS ClientHello nor an HTTP/1 request"},
		{"not a ClientHello", []byte{0x16, 3, 1, 0, 4, 2, 0, 0, 0}, "not a valid TLS ClientHello"},
		// Binary client-first protocols that then wait are told apart at once, not at the timeout.
		{"PostgreSQL SSLRequest", []byte{0, 0, 0, 8, 4, 210, 22, 47}, "neither a TLS ClientHello nor an HTTP/1 request"},
		{"one byte, then waiting", []byte("x"), "neither"},
		{"capitals, then binary", []byte("D\x00\x00\x00\x00\x00\x10\x00\x00"), "neither"},
		{"a request line that is not HTTP", []byte("GET /\r\n\r\n"), "not a valid HTTP/1 request"},
		{"SNI that is not a host name", clientHelloWithSNI(t, "bad name.test"), "invalid host"},
		{"endless header", []byte("GET / HTTP/1.1\r\nX: " + strings.Repeat("a", MaxPeek+10)), "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := loopbackPair(t)
			if tt.send != nil {
				go client.Write(tt.send)
			}
			start := time.Now()
			h, peeked, err := Peek(server, 200*time.Millisecond, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if h.Name != "" || !strings.Contains(h.Problem, tt.problem) || (tt.problem == "") != (h.Problem == "") {
				t.Fatalf("Peek = %+v, want no name and a problem with %q", h, tt.problem)
			}
			if len(peeked) > MaxPeek || !bytes.HasPrefix(tt.send, peeked) {
				t.Fatalf("peeked %d bytes that are not a prefix of what was sent", len(peeked))
			}
			if time.Since(start) > time.Second {
				t.Errorf("took %s: a client that waits for an answer was held until a timeout", time.Since(start))
			}
		})
	}
	t.Run("client left", func(t *testing.T) {
		client, server := loopbackPair(t)
		client.Close()
		if _, _, err := Peek(server, time.Second, time.Second); err == nil {
			t.Fatal("no error for a client that left without a byte")
		}
	})
}

// clientHelloWithSNI records the ClientHello that crypto/tls sends for sni.
func clientHelloWithSNI(t *testing.T, sni string) []byte {
	t.Helper()
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		client.Close()
	}()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(buf[3])<<8|int(buf[4]))
	if _, err := io.ReadFull(server, body); err != nil {
		t.Fatal(err)
	}
	return append(buf, body...)
}

// FuzzPeek: whatever a client sends, Peek returns a prefix of it, at most MaxPeek bytes, and a name
// only in normalised form.
func FuzzPeek(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add([]byte("SSH-2.0-x\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a..b\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		client, server := net.Pipe()
		defer server.Close()
		go func() {
			client.Write(data)
			client.Close()
		}()
		h, peeked, err := Peek(server, time.Second, time.Second)
		if err != nil {
			return
		}
		if len(peeked) > MaxPeek || !bytes.HasPrefix(data, peeked) {
			t.Fatalf("peeked %q is not a prefix of %q", peeked, data)
		}
		if h.Name != "" {
			if n, err := policy.NormalizeHost(h.Name); err != nil || n != h.Name {
				t.Fatalf("name %q is not normalised (%q, %v)", h.Name, n, err)
			}
		}
	})
}
