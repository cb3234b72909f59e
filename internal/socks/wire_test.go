package socks

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
)

func TestReadRequest(t *testing.T) {
	cases := []struct {
		name    string
		in      []byte
		want    request
		wantErr error
	}{
		{"ipv4", requestBytes(cmdConnect, atypIPv4, ip4("192.0.2.1"), 443), request{cmd: cmdConnect, host: "192.0.2.1", port: 443}, nil},
		{"ipv6", requestBytes(cmdConnect, atypIPv6, netip.MustParseAddr("2001:db8::1").AsSlice(), 22), request{cmd: cmdConnect, host: "2001:db8::1", port: 22}, nil},
		{"domain", requestBytes(cmdBind, atypDomain, []byte("example.com"), 80), request{cmd: cmdBind, host: "example.com", port: 80}, nil},
		{"empty domain", requestBytes(cmdConnect, atypDomain, nil, 80), request{cmd: cmdConnect}, ErrMalformed},
		{"version", []byte{0x04, 1, 0, 1, 1, 2, 3, 4, 0, 80}, request{cmd: cmdConnect}, ErrVersion},
		{"reserved", []byte{5, 1, 7, 1, 1, 2, 3, 4, 0, 80}, request{cmd: cmdConnect}, ErrMalformed},
		{"address type", []byte{5, 1, 0, 9}, request{cmd: cmdConnect}, ErrAddrType},
		{"truncated", []byte{5, 1, 0, 1, 1, 2}, request{cmd: cmdConnect}, io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := readRequest(bytes.NewReader(c.in))
			if !errors.Is(err, c.wantErr) || err == nil && c.wantErr != nil {
				t.Fatalf("err = %v; want %v", err, c.wantErr)
			}
			if got != c.want {
				t.Fatalf("request = %+v; want %+v", got, c.want)
			}
		})
	}
}

func TestAppendReply(t *testing.T) {
	cases := []struct {
		name  string
		bound netip.AddrPort
		want  []byte
	}{
		{"ipv4", netip.MustParseAddrPort("127.0.0.1:8080"), []byte{5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90}},
		{"mapped", netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"), []byte{5, 0, 0, 1, 10, 0, 0, 1, 0, 1}},
		{"ipv6", netip.MustParseAddrPort("[::1]:2"), append(append([]byte{5, 0, 0, 4}, netip.IPv6Loopback().AsSlice()...), 0, 2)},
		{"none", netip.AddrPort{}, []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := appendReply(nil, ReplySucceeded, c.bound); !bytes.Equal(got, c.want) {
				t.Fatalf("reply = %x; want %x", got, c.want)
			}
		})
	}
}

// FuzzHandshake feeds arbitrary bytes through the parsers in handshake order. They must never panic
// or over-read, and a request that parses must encode back to the bytes it was read from.
func FuzzHandshake(f *testing.F) {
	seeds := [][]byte{
		append(greeting(methodNoAuth), requestBytes(cmdConnect, atypIPv4, ip4("127.0.0.1"), 80)...),
		append(append(greeting(methodUserPass), userPass("sess", "tok")...), requestBytes(cmdConnect, atypDomain, []byte("example.com"), 443)...),
		append(greeting(methodNoAuth, methodUserPass), requestBytes(cmdUDPAssociate, atypIPv6, make([]byte, 16), 0)...),
		{5, 0},
		{5, 1, 0, 5, 1, 0, 3, 0},
		{4, 1, 0, 80},
		{5, 255},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		methods, err := readGreeting(r)
		if err != nil {
			return
		}
		if len(methods) == 0 || len(methods) > 255 {
			t.Fatalf("greeting with %d methods accepted", len(methods))
		}
		if chooseMethod(methods, true) == methodUserPass {
			if _, _, err := readUserPass(r); err != nil {
				return
			}
		}
		before := r.Len()
		req, err := readRequest(r)
		if err != nil {
			return
		}
		used := data[len(data)-before : len(data)-r.Len()]
		atyp := used[3]
		var addr []byte
		if atyp == atypDomain {
			addr = []byte(req.host)
		} else {
			addr = netip.MustParseAddr(req.host).AsSlice()
		}
		if again := requestBytes(req.cmd, atyp, addr, req.port); !bytes.Equal(again, used) {
			t.Fatalf("request %+v re-encodes to %x; read from %x", req, again, used)
		}
		if tgt, err := req.target(); err == nil && (tgt.Port != req.port || tgt.Host == "") {
			t.Fatalf("target %+v from %+v", tgt, req)
		}
	})
}
