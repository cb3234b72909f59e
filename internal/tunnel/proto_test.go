package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

func TestFrames(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string
		err  error
	}{
		{"ok", []byte("\x00\x02hiREST"), "hi", nil},
		{"zero length", []byte("\x00\x00"), "", ErrProtocol},
		{"too long", []byte("\xff\xff"), "", ErrProtocol},
		{"truncated", []byte("\x00\x05hi"), "", io.ErrUnexpectedEOF},
		{"empty", nil, "", io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bytes.NewReader(tt.in)
			got, err := readFrame(r)
			if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("readFrame = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
			if tt.name == "ok" && r.Len() != 4 {
				t.Fatalf("readFrame consumed bytes after the frame")
			}
		})
	}
}

func TestOpenAndReply(t *testing.T) {
	for _, o := range []openMsg{
		{ID: "abc", Target: policy.Target{Host: "example.com", Port: 443}},
		{ID: "", Target: policy.Target{Host: "2001:db8::1", Port: 80}},
	} {
		got, err := parseOpen(o.String())
		if err != nil || got != o {
			t.Fatalf("parseOpen(%q) = %+v, %v", o.String(), got, err)
		}
	}
	for _, bad := range []string{"OPEN", "OPEN a b", "OPEN id Example.COM 80", "OPEN id host 0", "OPEN i:d host 80", "OPEN id [::1] 80", "GET / HTTP/1.1"} {
		if _, err := parseOpen(bad); !errors.Is(err, ErrProtocol) {
			t.Errorf("parseOpen(%q) = %v, want ErrProtocol", bad, err)
		}
	}
	r := reply{Status: 502, Kind: "refused", Reason: "connection refused\r\nby target"}
	got, err := parseReply(r.String())
	if err != nil || got.Status != 502 || got.Kind != "refused" || strings.ContainsAny(got.Reason, "\r\n") {
		t.Fatalf("parseReply(%q) = %+v, %v", r.String(), got, err)
	}
	if k := kindOf(got); k != dial.KindRefused {
		t.Fatalf("kindOf = %v", k)
	}
	if k := kindOf(reply{Status: 504, Kind: "future_kind"}); k != dial.KindTimeout {
		t.Fatalf("unknown kind with 504 maps to %v", k)
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		hello{Version: 2, TLS: true, Nonce: bytes.Repeat([]byte{7}, 32)}.String(),
		"SWARM-TUNNEL 1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		preface(true), preface(false), "SWARM-TUNNEL 2 tls\n",
		authMsg{Version: 2, Session: "s1", Public: "v2.p.1800000000.AAAAAAAA", Proof: make([]byte, 32)}.String(),
		openMsg{ID: "r1", Target: policy.Target{Host: "example.com", Port: 443}}.String(),
		reply{Status: 200, Kind: "ok", Reason: "connected"}.String(),
		"", " ", "OPEN - 127.0.0.1 65535", "OPEN r2 example.com 443 check=-203.0.113.0/24,+10.0.0.0/8,*", "OPEN r3 example.com 80 check=", "OPEN r4 example.com 443 check=~2a01:4f8:64::/96,-8.8.8.0/24,*", "200 ok", "SWARM-TUNNEL 01 AAAA",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if h, err := parseHello(s); err == nil && h.Version == Version {
			if h2, err := parseHello(h.String()); err != nil || h2.Version != h.Version || h2.TLS != h.TLS || !bytes.Equal(h2.Nonce, h.Nonce) {
				t.Fatalf("hello %q does not round-trip", s)
			}
		}
		if v, useTLS, err := readPreface(strings.NewReader(s)); err == nil {
			if v2, tls2, err := readPreface(strings.NewReader(fmt.Sprintf("SWARM-TUNNEL %d %s\r\n", v, transportName(useTLS)))); err != nil || v2 != v || tls2 != useTLS {
				t.Fatalf("preface %q does not round-trip", s)
			}
		}
		if a, err := parseAuth(s); err == nil {
			if a.String() != s {
				t.Fatalf("auth %q re-encodes as %q", s, a.String())
			}
		}
		if o, err := parseOpen(s); err == nil {
			if o2, err := parseOpen(o.String()); err != nil || o2.String() != o.String() {
				t.Fatalf("open %q does not round-trip", s)
			}
		}
		if r, err := parseReply(s); err == nil {
			if r2, err := parseReply(r.String()); err != nil || r2.Status != r.Status || r2.Kind != r.Kind {
				t.Fatalf("reply %q does not round-trip", s)
			}
		}
		var buf bytes.Buffer
		if writeFrame(&buf, s) == nil {
			if got, err := readFrame(&buf); err != nil || got != s {
				t.Fatalf("frame %q does not round-trip", s)
			}
		}
	})
}
