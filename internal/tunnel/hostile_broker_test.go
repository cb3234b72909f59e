package tunnel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// TestProviderResetsUnparsableOpen: a broker (here a hostile one, written from the spec) that sends
// an OPEN the provider cannot parse gets the stream reset at once, with no answer, and the provider
// stays connected and serves the next, valid stream.
func TestProviderResetsUnparsableOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := &Provider{Broker: ln.Addr().String(),
		Credentials: func() (string, string, error) {
			return "s1", "v2.p.4102444800.AAAAAAAA." + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", nil
		},
		Dialer: dial.Deciding{Policy: loopbackOnly, Dialer: &dial.Direct{Policy: loopbackOnly}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := readPreface(c); err != nil {
		t.Fatal(err)
	}
	writeFrame(c, hello{Version: Version, Nonce: make([]byte, 32)}.String())
	if _, err := readFrame(c); err != nil { // AUTH: this broker takes anyone
		t.Fatal(err)
	}
	writeFrame(c, "OK hostile")
	c.SetDeadline(time.Time{})
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Client(c, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	ctl, _ := mux.OpenStream(context.Background())
	writeFrame(ctl, controlMsg)

	for _, bad := range []string{"OPEN x", "OPEN - EXAMPLE.com 80", "OPEN - example.com 80 check=+1.2.3.4/8", "HELLO"} {
		st, err := mux.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		writeFrame(st, bad)
		st.SetReadDeadline(time.Now().Add(time.Second)) // far less than the provider's 5 s open deadline
		n, err := st.Read(make([]byte, 64))
		if n != 0 || !errors.Is(err, yamux.ErrStreamReset) {
			t.Fatalf("open %q: read %d bytes, %v; want the stream reset at once", bad, n, err)
		}
	}
	target := echoServer(t)
	st, _ := mux.OpenStream(context.Background())
	writeFrame(st, openMsg{ID: "ok", Target: target}.String())
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if r, err := readFrame(st); err != nil || r[:3] != "200" {
		t.Fatalf("valid open after the bad ones: %q, %v", r, err)
	}
}

func loopbackOnly() *policy.Policy {
	p, _ := policy.ForTargets(policy.TargetsLoopback)
	return p
}
