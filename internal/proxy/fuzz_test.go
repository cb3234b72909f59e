package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func FuzzProxyCredentials(f *testing.F) {
	for _, s := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("s1:tok")), "Basic !!!", "Bearer x", "basic  " + base64.StdEncoding.EncodeToString([]byte("nocolon"))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		user, pass, err := proxyCredentials(h)
		if err != nil {
			if user != "" || pass != "" {
				t.Fatal("credentials returned with an error")
			}
			return
		}
		if strings.Contains(user, ":") {
			t.Fatalf("user %q contains the separator", user)
		}
	})
}

// FuzzServe sends arbitrary bytes to the proxy as a client and checks that it answers with
// well-formed responses, or none, and closes the connection once the client has finished sending.
// The dialer reaches nothing, so no input can make the proxy connect anywhere.
func FuzzServe(f *testing.F) {
	tp := startProxy(f, loopbackPolicy, nil, nil, func(s *Server) { s.ReadHeaderTimeout = 2 * time.Second })
	for _, s := range []string{
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
		"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\nCONNECT 127.0.0.1:2 HTTP/1.1\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
		"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\nGET http://a.test/ HTTP/1.1\r\n\r\n",
		"HEAD http://127.0.0.1:1/ HTTP/1.1\r\n\r\n",
		"OPTIONS http://[::1]/ HTTP/1.1\r\nConnection: close\r\n\r\n",
		"GET http://a.test/ HTTP/1.0\r\n\r\n",
		"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\nPOST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
		"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\nGET http",
		"GET http",
		"CONNECT a.test:443 HTTP/1.1\r\nX: \x00\r\n\r\n",
		"\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", tp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write(in)
			c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("the proxy did not close the connection after the client's end: %v", err)
		}
		if len(out) == 0 {
			return
		}
		method, _, _ := strings.Cut(string(in), " ")
		if _, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), &http.Request{Method: method}); err != nil {
			t.Fatalf("answer %.200q: %v", out, err)
		}
	})
}
