package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/loopbacktest"
	"github.com/swarm-proxy/swarm-proxy/internal/ticket"
)

// mitmRelay is a man in the middle between a provider and the real broker: it passes the preface and
// the hello through, then, with TLS, terminates the provider's TLS with a certificate of its own
// (which the provider is made to trust) and opens its own TLS connection to the broker, and copies
// the login and everything after it between the two.
func mitmRelay(t *testing.T, brokerAddr string, own *tls.Config, toBroker *tls.Config) string {
	t.Helper()
	ln := loopbacktest.Start(t, func(p net.Conn) {
		b, err := net.Dial("tcp", brokerAddr)
		if err != nil {
			return
		}
		defer b.Close()
		line := make([]byte, 0, 32)
		var one [1]byte
		for len(line) == 0 || line[len(line)-1] != '\n' {
			if _, err := p.Read(one[:]); err != nil {
				return
			}
			line = append(line, one[0])
		}
		b.Write(line)
		hello, err := readFrame(b)
		if err != nil {
			return
		}
		writeFrame(p, hello)
		var pc, bc net.Conn = p, b
		if own != nil {
			ps := tls.Server(p, own)
			cfg := toBroker.Clone()
			cfg.ServerName = "127.0.0.1"
			bs := tls.Client(b, cfg)
			if ps.Handshake() != nil || bs.Handshake() != nil {
				return
			}
			pc, bc = ps, bs
		}
		go io.Copy(bc, pc)
		io.Copy(pc, bc)
	})
	return ln.Addr().String()
}

// TestRelayedLoginFails: a relay that the provider trusts (it holds a certificate the provider
// accepts) cannot pass a provider's login through to the broker, because the proof covers the TLS
// channel it was made on. Without TLS the same relay gets through: that is what
// --insecure-plaintext gives up, and why both sides warn.
func TestRelayedLoginFails(t *testing.T) {
	for _, useTLS := range []bool{true, false} {
		e := newEnv(t, useTLS, Config{})
		tk, _ := e.auth.Issue("s1", ticket.RoleProvider, time.Hour)
		var own, providerTLS *tls.Config
		if useTLS {
			own, providerTLS = testTLS(t) // the relay's certificate, and a provider that trusts it
		}
		p := &Provider{Broker: mitmRelay(t, e.addr, own, e.clientTLS), TLS: providerTLS,
			Credentials: func() (string, string, error) { return "s1", tk.Token, nil }}
		// A login that gets through serves streams until the context ends.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		connected, err := p.connect(ctx, Config{HandshakeTimeout: 2 * time.Second}.withDefaults(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		cancel()
		var ae *AuthError
		switch {
		case useTLS && (connected || !errors.As(err, &ae) || ae.Code != RefuseInvalid):
			t.Fatalf("relayed TLS login: connected %v, %v; want refused as invalid", connected, err)
		case !useTLS && !connected:
			t.Fatalf("relayed plaintext login: %v; the relay was expected to get through", err)
		}
	}
}

// TestPinnedBroker: a provider that pins the broker's certificate by fingerprint connects to that
// broker and refuses any other certificate, saying which it got.
func TestPinnedBroker(t *testing.T) {
	e := newEnv(t, true, Config{})
	right := Fingerprint(e.broker.TLS.Certificates[0].Certificate[0])
	other, _ := testTLS(t)
	wrong := Fingerprint(other.Certificates[0].Certificate[0])
	for _, pin := range []string{right, wrong} {
		cfg, err := PinnedTLS(pin)
		if err != nil {
			t.Fatal(err)
		}
		tp := e.provider("s1", "loopback", func(p *Provider) { p.TLS = cfg })
		if pin == right {
			tp.waitConnected(t)
			tp.stop()
			continue
		}
		waitFor(t, "the pin to fail", func() bool { return strings.Contains(tp.logs.String(), "not the pinned "+wrong) })
	}
}
