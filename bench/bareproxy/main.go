// Command bareproxy is the floor the benchmark measures swarm-proxy against: the least an HTTP
// proxy written in Go can do. It does not use net/http's server or client. For CONNECT it reads the
// request head, dials, replies 200 and copies both ways with io.Copy (splice between the two
// sockets). For plain HTTP it reads each request with http.ReadRequest and writes it to one
// upstream connection per client connection, then passes the response back with
// http.ReadResponse. It has no policy, no access log, no metrics, no timeouts, no header
// hygiene and no protection of any kind: never run it anywhere but in the benchmark, on loopback.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
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
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bareproxy:", err)
			os.Exit(1)
		}
		go serve(c.(*net.TCPConn))
	}
}

func serve(c *net.TCPConn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4<<10)
	if b, _ := br.Peek(8); string(b) == "CONNECT " {
		tunnel(c, br)
	} else {
		forward(c, br)
	}
}

// tunnel answers one CONNECT and relays until both sides are done.
func tunnel(c *net.TCPConn, br *bufio.Reader) {
	line, err := br.ReadSlice('\n')
	fields := bytes.Fields(line)
	if err != nil || len(fields) != 3 {
		return
	}
	target := string(fields[1])
	for {
		l, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		if len(bytes.TrimSpace(l)) == 0 {
			break
		}
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		up.Write(early)
	}
	done := make(chan struct{})
	go func() { relayHalf(up.(*net.TCPConn), c); close(done) }()
	relayHalf(c, up.(*net.TCPConn))
	<-done
}

// relayHalf copies src to dst, then half-closes dst so its peer sees the end too.
func relayHalf(dst, src *net.TCPConn) {
	io.Copy(dst, src)
	dst.CloseWrite()
	src.CloseRead()
}

// forward passes plain-HTTP requests on over one upstream connection, in order.
func forward(c *net.TCPConn, br *bufio.Reader) {
	bw := bufio.NewWriterSize(c, 4<<10)
	var (
		up       net.Conn
		upHost   string
		upr      *bufio.Reader
		upw      *bufio.Writer
		closeAll = func() {
			if up != nil {
				up.Close()
			}
		}
	)
	defer closeAll()
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if up == nil || upHost != req.URL.Host {
			closeAll()
			if up, err = net.Dial("tcp", req.URL.Host); err != nil {
				io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
				return
			}
			upHost, upr, upw = req.URL.Host, bufio.NewReaderSize(up, 4<<10), bufio.NewWriterSize(up, 4<<10)
		}
		req.Header.Del("Proxy-Connection")
		if err := req.Write(upw); err != nil || upw.Flush() != nil {
			return
		}
		resp, err := http.ReadResponse(upr, req)
		if err != nil {
			return
		}
		err = resp.Write(bw)
		resp.Body.Close()
		if err != nil || bw.Flush() != nil || resp.Close || req.Close {
			return
		}
	}
}
