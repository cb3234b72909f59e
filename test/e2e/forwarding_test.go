package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"

	"encoding/pem"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// The forwarding compatibility suite (issue 15): real clients (curl, Python requests, Go's own
// client, a WebSocket handshake) against loopback servers, through the proxy and through the broker
// and a provider, comparing the bytes that arrive and the access-log record of each exchange.

// way is a way through swarm-proxy for a client.
type way struct {
	name string
	proc *Proc
	url  string // the proxy URL for clients, with the session ticket as credentials for the broker
	auth string // the Proxy-Authorization header value, "" for the proxy
}

func forwardingWays(t *testing.T) []way {
	needTools(t, "curl", "python3")
	if err := exec.Command("python3", "-c", "import requests").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 has no requests module (scripts/test.sh installs python3-requests)")
		}
		t.Skip("python3 has no requests module; run scripts/test.sh, which installs python3-requests")
	}
	p := StartProxy(t, "--policy", WriteFile(t, "policy.yaml", LoopbackPolicy("discovery", "")))
	b := startBroker(t)
	tf, tk := b.ticket("compat", "1h")
	b.provider(tf, "compat", 1)
	user := proxyUser(tk)
	return []way{
		{"proxy", p, "http://" + p.Addr, ""},
		{"broker", b.Proc, "http://" + user + "@" + b.Addr, "Basic " + basic(user)},
	}
}

func basic(userPass string) string { return base64.StdEncoding.EncodeToString([]byte(userPass)) }

// compatServer is the loopback target of the suite; each handler is one behaviour real servers have.
func compatServer(t *testing.T, release <-chan struct{}) *httptest.Server {
	mux := http.NewServeMux()
	sum := func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d\n", h.Sum(nil), n)
	}
	mux.HandleFunc("/sum/", sum)
	// An early answer: the headers and a first line go out before the body is read (a streaming
	// handler), the body's checksum follows.
	mux.HandleFunc("/early/", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		io.WriteString(w, "early\n")
		rc.Flush()
		sum(w, r)
	})
	// A rejection before the body, as for a 413 or a 401 on an upload with Expect: 100-continue.
	mux.HandleFunc("/reject/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})
	// A response with a length whose body trickles: a byte every 300 ms.
	mux.HandleFunc("/trickle/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "8")
		for _, b := range []byte("abcdefgh") {
			w.Write([]byte{b})
			http.NewResponseController(w).Flush()
			time.Sleep(300 * time.Millisecond)
		}
	})
	// Headers at once, the body 1.5 s later.
	mux.HandleFunc("/late-body/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1")
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		time.Sleep(1500 * time.Millisecond)
		io.WriteString(w, "x")
	})
	// A slow response the client gives up on.
	mux.HandleFunc("/slow/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "0123456789")
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(waitTimeout):
		}
	})
	mux.HandleFunc("/events/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: two\n\n")
	})
	mux.Handle("/ws/", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.RequestURI, "/echo-target/") {
			io.WriteString(w, r.RequestURI) // before the mux, which would clean the path
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// uploadFile writes n random bytes to a file and returns its name and checksum line as /sum/ says it.
func uploadFile(t *testing.T, n int) (string, string) {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(n)}).Read(b)
	name := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return name, fmt.Sprintf("%x %d\n", sha256.Sum256(b), n)
}

// recordFor waits for the record of the request to path.
func recordFor(w way, path string) accesslog.Record {
	return w.proc.WaitRecord(func(r accesslog.Record) bool { return r.Path == path })
}

func TestForwardingCompat(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := compatServer(t, release)
	ways := forwardingWays(t)
	small, smallSum := uploadFile(t, 2_000_000)
	big, bigSum := uploadFile(t, 50<<20)

	for _, w := range ways {
		t.Run(w.name, func(t *testing.T) {
			curl := func(args ...string) Result {
				return Curl(t, append([]string{"-x", w.url}, args...)...)
			}
			// Item 1: an upstream that answers before it has read the body gets the whole body.
			t.Run("upload to an early answer", func(t *testing.T) {
				path := "/early/" + w.name
				r := curl("-T", small, srv.URL+path)
				if r.Code != 0 || r.Stdout != "early\n"+smallSum {
					t.Fatalf("exit %d: %q, want %q (stderr %s)", r.Code, r.Stdout, "early\n"+smallSum, r.Stderr)
				}
				if rec := recordFor(w, path); rec.Status != 200 || rec.Error != "" || rec.BytesOut != 2_000_000 {
					t.Fatalf("record %+v", rec)
				}
			})
			for _, expect := range []bool{true, false} {
				t.Run(fmt.Sprintf("50 MB upload, Expect %v", expect), func(t *testing.T) {
					path := fmt.Sprintf("/sum/%s-expect-%v", w.name, expect)
					args := []string{"-T", big, srv.URL + path}
					if !expect {
						args = append(args, "-H", "Expect:")
					}
					if r := curl(args...); r.Code != 0 || r.Stdout != bigSum {
						t.Fatalf("exit %d: %q, want %q (stderr %s)", r.Code, r.Stdout, bigSum, r.Stderr)
					}
					if rec := recordFor(w, path); rec.Status != 200 || rec.Error != "" || rec.BytesOut != 50<<20 || rec.BytesIn != int64(len(bigSum)) {
						t.Fatalf("record %+v", rec)
					}
				})
			}
			t.Run("chunked upload", func(t *testing.T) {
				path := "/sum/" + w.name + "-chunked"
				r := curl("-T", small, "-H", "Transfer-Encoding: chunked", srv.URL+path)
				if r.Code != 0 || r.Stdout != smallSum {
					t.Fatalf("exit %d: %q, want %q (stderr %s)", r.Code, r.Stdout, smallSum, r.Stderr)
				}
				if rec := recordFor(w, path); rec.Status != 200 || rec.Error != "" || rec.BytesOut != 2_000_000 {
					t.Fatalf("record %+v", rec)
				}
			})
			// Item 2: a rejection before the body reaches a client waiting for 100 Continue at once.
			t.Run("Expect answered early", func(t *testing.T) {
				path := "/reject/" + w.name
				start := time.Now()
				r := curl("-T", big, "--expect100-timeout", "15", "-o", "/dev/null", "-w", "%{http_code}", srv.URL+path)
				if r.Stdout != "413" || time.Since(start) > 8*time.Second {
					t.Fatalf("exit %d: %q after %v, want 413 long before curl's 15 s wait for 100 Continue (stderr %s)", r.Code, r.Stdout, time.Since(start), r.Stderr)
				}
				if rec := recordFor(w, path); rec.Status != 413 || rec.BytesOut >= 50<<20 {
					t.Fatalf("record %+v: want 413 and the upload cut short", rec)
				}
			})
			// Item 3: a trickling response reaches a client with a read timeout as it comes.
			t.Run("trickle to a read timeout", func(t *testing.T) {
				path := "/trickle/" + w.name
				r := Run(t, nil, "python3", "-c", `
import sys, requests
r = requests.get(sys.argv[1], proxies={"http": sys.argv[2]}, timeout=(5, 1))
print(r.status_code, r.text)`, srv.URL+path, w.url)
				if r.Code != 0 || r.Stdout != "200 abcdefgh\n" {
					t.Fatalf("exit %d: %q (stderr %s)", r.Code, r.Stdout, r.Stderr)
				}
				if rec := recordFor(w, path); rec.Status != 200 || rec.Error != "" || rec.BytesIn != 8 {
					t.Fatalf("record %+v", rec)
				}
			})
			t.Run("headers before a late body", func(t *testing.T) {
				path := "/late-body/" + w.name
				r := Run(t, nil, "python3", "-c", `
import sys, time, requests
t0 = time.monotonic()
r = requests.get(sys.argv[1], proxies={"http": sys.argv[2]}, timeout=5, stream=True)
head = time.monotonic() - t0
print(r.status_code, r.raw.read(), "head within 0.7 s:", head < 0.7)`, srv.URL+path, w.url)
				if r.Code != 0 || r.Stdout != "200 b'x' head within 0.7 s: True\n" {
					t.Fatalf("exit %d: %q (stderr %s)", r.Code, r.Stdout, r.Stderr)
				}
			})
			// Item 4: a client that leaves is logged as client_closed, not as the target's fault.
			t.Run("client leaves", func(t *testing.T) {
				path := "/slow/" + w.name
				r := Run(t, nil, "curl", "-sS", "-x", w.url, "--max-time", "1", srv.URL+path)
				if r.Code != 28 || r.Stdout != "0123456789" {
					t.Fatalf("exit %d: %q, want curl's timeout (28) after the first bytes", r.Code, r.Stdout)
				}
				if rec := recordFor(w, path); rec.Error != accesslog.ErrorClientClosed || rec.BytesIn != 10 {
					t.Fatalf("record %+v: want error client_closed and 10 bytes in", rec)
				}
			})
			// Item 7: the request target reaches the server as the client sent it, and is logged so.
			t.Run("path as sent", func(t *testing.T) {
				path := `/echo-target/` + w.name + `/a\b%2f..%2fc`
				r := curl("--path-as-is", srv.URL+path+"?q=%zz;x")
				if r.Code != 0 || r.Stdout != path+"?q=%zz;x" {
					t.Fatalf("exit %d: the server got %q, want %q", r.Code, r.Stdout, path+"?q=%zz;x")
				}
				if rec := recordFor(w, path); rec.Status != 200 {
					t.Fatalf("record %+v", rec)
				}
			})
			t.Run("server-sent events", func(t *testing.T) {
				path := "/events/" + w.name
				proxyURL, _ := url.Parse(w.url)
				client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: waitTimeout}
				resp, err := client.Get(srv.URL + path)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				br := bufio.NewReader(resp.Body)
				if line, err := br.ReadString('\n'); err != nil || line != "data: one\n" {
					t.Fatalf("first event: %q %v (held back?)", line, err)
				}
				release <- struct{}{}
				rest, err := io.ReadAll(br)
				if err != nil || string(rest) != "\ndata: two\n\n" {
					t.Fatalf("rest %q %v", rest, err)
				}
				if rec := recordFor(w, path); rec.Status != 200 || rec.Error != "" || rec.BytesIn != int64(len("data: one\n\ndata: two\n\n")) {
					t.Fatalf("record %+v", rec)
				}
			})
			t.Run("WebSocket", func(t *testing.T) {
				path := "/ws/" + w.name
				c, br := rawProxyConn(t, w)
				fmt.Fprintf(c, "GET %s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
					"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://localhost/\r\n%s\r\n",
					srv.URL, path, srv.Listener.Addr(), authHeader(w))
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
					t.Fatalf("handshake: %v %v", resp, err)
				}
				for _, msg := range []string{"hello", "second message"} {
					c.Write(wsFrame(msg))
					if got := readWSFrame(t, br); got != msg {
						t.Fatalf("echo %q, want %q", got, msg)
					}
				}
				c.Close()
				if rec := recordFor(w, path); rec.Status != 101 || rec.BytesOut < int64(len("hello")) || rec.BytesIn < int64(len("hello")) {
					t.Fatalf("record %+v", rec)
				}
			})
		})
	}
}

// TestTunnelCompat: HTTP/2 over CONNECT with curl, and a client that resets its tunnel: neither is
// logged as a broken tunnel (issue 15, item 5).
func TestTunnelCompat(t *testing.T) {
	h2 := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	}))
	h2.EnableHTTP2 = true
	h2.StartTLS()
	t.Cleanup(h2.Close)
	ca := writeCA(t, h2)
	// A target that sends without end, for a client that resets in the middle.
	flood := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(flood.Close)
	for _, w := range forwardingWays(t) {
		t.Run(w.name, func(t *testing.T) {
			for i := range 3 {
				r := Curl(t, "-x", w.url, "--http2", "--cacert", ca, h2.URL+"/h2")
				if r.Code != 0 || r.Stdout != "HTTP/2.0 /h2" {
					t.Fatalf("run %d: exit %d: %q (stderr %s)", i, r.Code, r.Stdout, r.Stderr)
				}
			}
			Eventually(t, "three CONNECT records", func() bool { return countRecords(w.proc, "CONNECT", h2.Listener.Addr()) == 3 })
			for _, rec := range w.proc.Records() {
				if rec.Method == "CONNECT" && rec.Error != "" && rec.Error != accesslog.ErrorClientClosed {
					t.Fatalf("a finished HTTP/2 download logged as %q: %+v", rec.Error, rec)
				}
			}

			c, br := rawProxyConn(t, w)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n%s\r\n", flood.Listener.Addr(), authHeader(w))
			if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			fmt.Fprintf(c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
			if _, err := io.ReadFull(br, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close() // a reset, with the target still sending
			rec := w.proc.WaitRecord(func(r accesslog.Record) bool {
				return r.Method == "CONNECT" && net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) == flood.Listener.Addr().String()
			})
			if rec.Error != accesslog.ErrorClientClosed || rec.BytesIn < 1<<20 {
				t.Fatalf("record %+v: want client_closed and at least 1 MiB in", rec)
			}
		})
	}
}

func countRecords(p *Proc, method string, addr net.Addr) int {
	n := 0
	for _, r := range p.Records() {
		if r.Method == method && net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) == addr.String() {
			n++
		}
	}
	return n
}

func writeCA(t *testing.T, srv *httptest.Server) string {
	return WriteFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
}

// rawProxyConn is a TCP connection to the way's listener, with a deadline.
func rawProxyConn(t *testing.T, w way) (net.Conn, *bufio.Reader) {
	u, _ := url.Parse(w.url)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitTimeout))
	return c, bufio.NewReader(c)
}

func authHeader(w way) string {
	if w.auth == "" {
		return ""
	}
	return "Proxy-Authorization: " + w.auth + "\r\n"
}

// wsFrame is a masked, final text frame (clients mask what they send) of a short message.
func wsFrame(msg string) []byte {
	mask := [4]byte{1, 2, 3, 4}
	b := []byte{0x81, 0x80 | byte(len(msg))}
	b = append(b, mask[:]...)
	for i := range len(msg) {
		b = append(b, msg[i]^mask[i%4])
	}
	return b
}

// readWSFrame reads one unmasked frame of up to 65535 bytes and returns its payload.
func readWSFrame(t *testing.T, br *bufio.Reader) string {
	var head [2]byte
	if _, err := io.ReadFull(br, head[:]); err != nil {
		t.Fatal(err)
	}
	n := int(head[1] & 0x7f)
	if n == 126 {
		var ext [2]byte
		io.ReadFull(br, ext[:])
		n = int(ext[0])<<8 | int(ext[1])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	return string(p)
}
