package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
)

// Commands of the data server: the client sends one command byte and a big-endian uint64 size.
const (
	cmdDown = 'D' // the server sends size bytes, then closes
	cmdUp   = 'U' // the client sends size bytes; the server answers one byte once it has them all
)

// smallBody is the size of the plain-HTTP "small" response.
const smallBody = 100

// upstream is the set of loopback servers every path reaches: an echo server, a bulk-data server
// and a plain-HTTP server.
type upstream struct {
	echo, data, http net.Listener
	httpSrv          *http.Server
	wg               sync.WaitGroup
	mu               sync.Mutex
	conns            map[net.Conn]struct{}
	closed           bool
}

func startUpstream() (*upstream, error) { return startUpstreamOn("127.0.0.1") }

// startUpstreamOn starts the servers on host (an address of the calling thread's network
// namespace).
func startUpstreamOn(host string) (*upstream, error) {
	u := &upstream{conns: map[net.Conn]struct{}{}}
	var err error
	listen := func() net.Listener {
		if err != nil {
			return nil
		}
		var ln net.Listener
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
		return ln
	}
	u.echo, u.data, u.http = listen(), listen(), listen()
	if err != nil {
		u.close()
		return nil, fmt.Errorf("upstream listen: %w", err)
	}
	u.serve(u.echo, echoConn)
	u.serve(u.data, dataConn)

	big := make([]byte, 1<<20)
	small := make([]byte, smallBody)
	mux := http.NewServeMux()
	body := func(b []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(b)
		}
	}
	mux.Handle("GET /small", body(small))
	mux.Handle("GET /1m", body(big))
	u.httpSrv = &http.Server{Handler: mux, MaxHeaderBytes: 64 << 10}
	u.wg.Add(1)
	go func() { defer u.wg.Done(); u.httpSrv.Serve(u.http) }()
	return u, nil
}

// serve accepts on ln until close, handling each connection in its own goroutine.
func (u *upstream) serve(ln net.Listener, handle func(net.Conn)) {
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !u.track(c, true) {
				c.Close()
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer u.track(c, false)
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

func (u *upstream) track(c net.Conn, add bool) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if add {
		if u.closed {
			return false
		}
		u.conns[c] = struct{}{}
	} else {
		delete(u.conns, c)
	}
	return true
}

func (u *upstream) close() {
	for _, ln := range []net.Listener{u.echo, u.data} {
		if ln != nil {
			ln.Close()
		}
	}
	if u.httpSrv != nil {
		u.httpSrv.Close()
	} else if u.http != nil {
		u.http.Close()
	}
	u.mu.Lock()
	u.closed = true
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// echoConn writes back everything it reads.
func echoConn(c net.Conn) {
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// dataBuf is what the data server sends; its content does not matter.
var dataBuf = make([]byte, 256<<10)

// dataConn serves one cmdDown or cmdUp request.
func dataConn(c net.Conn) {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	size := int64(binary.BigEndian.Uint64(hdr[1:]))
	switch hdr[0] {
	case cmdDown:
		for size > 0 {
			n := int64(len(dataBuf))
			if size < n {
				n = size
			}
			m, err := c.Write(dataBuf[:n])
			size -= int64(m)
			if err != nil {
				return
			}
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
			// Wait for the client's close so that the last bytes are not lost to a reset.
			io.Copy(io.Discard, c)
		}
	case cmdUp:
		if _, err := readN(c, size); err != nil {
			return
		}
		c.Write([]byte{1})
	}
}

// readN reads and discards exactly n bytes.
func readN(r io.Reader, n int64) (int64, error) {
	buf := make([]byte, 256<<10)
	var got int64
	for got < n {
		want := int64(len(buf))
		if n-got < want {
			want = n - got
		}
		m, err := r.Read(buf[:want])
		got += int64(m)
		if err != nil {
			if errors.Is(err, io.EOF) && got == n {
				break
			}
			return got, fmt.Errorf("read %d of %d bytes: %w", got, n, err)
		}
	}
	return got, nil
}
