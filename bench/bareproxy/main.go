// Command bareproxy is the floor the benchmark measures swarm-proxy against: the least an HTTP
// proxy written in Go with net/http can do. It answers CONNECT by dialing, replying 200 and copying
// both ways with io.Copy (splice between the two sockets), and forwards plain-HTTP requests with
// httputil.ReverseProxy. It has no policy, no access log, no metrics, no timeouts and no
// protection of any kind: never run it anywhere but in the benchmark, on loopback.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: bareproxy 127.0.0.1:PORT")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bareproxy:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bareproxy listening on %s\n", ln.Addr())
	forward := &httputil.ReverseProxy{
		Rewrite:   func(*httputil.ProxyRequest) {},
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64},
	}
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			forward.ServeHTTP(w, r)
			return
		}
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		done := make(chan struct{})
		go func() { relayHalf(up.(*net.TCPConn), c.(*net.TCPConn)); close(done) }()
		relayHalf(c.(*net.TCPConn), up.(*net.TCPConn))
		<-done
		c.Close()
		up.Close()
	}))
	fmt.Fprintln(os.Stderr, "bareproxy:", err)
	os.Exit(1)
}

// relayHalf copies src to dst, then half-closes dst so its peer sees the end too.
func relayHalf(dst, src *net.TCPConn) {
	io.Copy(dst, src)
	dst.CloseWrite()
	src.CloseRead()
}
