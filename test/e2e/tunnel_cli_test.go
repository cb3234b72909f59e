package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTunnelHelp: provider --help names the ticket flag's argument FILE, and broker, provider and
// ticket --help end with examples.
func TestTunnelHelp(t *testing.T) {
	for _, cmd := range []string{"broker", "provider", "ticket"} {
		r := Run(t, nil, binary, cmd, "--help")
		if r.Code != 0 {
			t.Fatalf("%s --help: exit %d %s", cmd, r.Code, r.Stderr)
		}
		i := strings.Index(r.Stdout, "Examples:")
		if i < 0 || strings.Count(r.Stdout[i:], "swarm-proxy "+cmd) < 2 {
			t.Errorf("%s --help has no examples of %s:\n%s", cmd, cmd, r.Stdout)
		}
	}
	r := Run(t, nil, binary, "provider", "--help")
	if !strings.Contains(r.Stdout, "--ticket FILE") || strings.Contains(r.Stdout, "--ticket swarm-proxy") {
		t.Fatalf("provider --help does not show --ticket FILE:\n%s", r.Stdout)
	}
}

// TestProviderSaysWhatItReached: a provider pointed at the broker's worker port, or a plaintext
// provider at a TLS broker, or a TLS provider at a plaintext broker, says so within 2 s.
func TestProviderSaysWhatItReached(t *testing.T) {
	tlsBroker := startBroker(t)
	plainBroker := startBroker(t, "--insecure-plaintext")
	tlsTicket := tlsBroker.providerTicket("s", "1h")
	plainTicket := plainBroker.providerTicket("s", "1h")
	tests := []struct {
		name, addr, ticket string
		extra              []string
		want               string
	}{
		{"worker port", tlsBroker.Addr, tlsTicket, nil, tlsBroker.Addr + " answered HTTP: that is the broker's worker port; use its --provider-listen address"},
		{"plaintext provider, TLS broker", tlsBroker.ProviderAddr, plainTicket, []string{"--insecure-plaintext"}, "requires TLS: drop --insecure-plaintext from the provider"},
		{"TLS provider, plaintext broker", plainBroker.ProviderAddr, plainTicket, nil, "is plaintext (broker --insecure-plaintext): give the provider --insecure-plaintext too"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			p := Start(t, "provider starting", append([]string{"provider", "--ticket", tt.ticket, "--broker", tt.addr}, tt.extra...)...)
			Eventually(t, "the provider to say what it reached", func() bool { return strings.Contains(p.Stderr(), tt.want) })
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v, want at most 2s:\n%s", d, p.Stderr())
			}
		})
	}
}

// TestProviderStopsWithinASecond: a provider that is not connected (retrying a closed port, or in
// its handshake with a peer that never answers) exits within 1 s of SIGTERM.
func TestProviderStopsWithinASecond(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := silent.Accept(); err == nil {
			accepted <- c
		}
	}()
	b := startBroker(t)
	tf := b.providerTicket("s", "1h")
	for _, tt := range []struct{ name, addr, waitFor string }{
		{"retrying", closedAddr, "broker connection failed"},
		{"in its handshake", silent.Addr().String(), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := Start(t, "provider starting", "provider", "--ticket", tf, "--broker", tt.addr)
			if tt.waitFor != "" {
				p.WaitStderr(tt.waitFor)
			} else {
				defer (<-accepted).Close()
			}
			start := time.Now()
			p.Signal(syscall.SIGTERM)
			select {
			case <-p.Exited():
			case <-time.After(time.Second):
				t.Fatalf("provider still running 1s after SIGTERM:\n%s", p.Stderr())
			}
			t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestTicketFilesAndSecrets: ticket --out writes mode 0600; a secret file others can read is
// refused with the chmod fix; a worker ticket given to a provider is refused before it dials.
func TestTicketFilesAndSecrets(t *testing.T) {
	secret := writeSecret(t, "secret", "e2e-secret-0123456789-0123456789-0123456789\n")
	out := filepath.Join(t.TempDir(), "t.json")
	if r := Run(t, nil, binary, "ticket", "--session", "s", "--role", "provider", "--secret-file", secret, "--out", out); r.Code != 0 || r.Stdout != "" {
		t.Fatalf("ticket --out: exit %d %q %s", r.Code, r.Stdout, r.Stderr)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ticket --out wrote mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	var tk map[string]string
	data, _ := os.ReadFile(out)
	if err := json.Unmarshal(data, &tk); err != nil || tk["role"] != "provider" || !strings.HasPrefix(tk["token"], "v3.p.") || tk["token_id"] == "" {
		t.Fatalf("ticket file %s: %v", data, err)
	}
	open := WriteFile(t, "open-secret", "e2e-secret-0123456789-0123456789-0123456789\n")
	os.Chmod(open, 0o644)
	for _, cmd := range [][]string{
		{"ticket", "--session", "s", "--secret-file", open},
		{"broker", "--listen", "127.0.0.1:0", "--provider-listen", "127.0.0.1:0", "--secret-file", open, "--insecure-plaintext"},
	} {
		r := Run(t, nil, binary, cmd...)
		if r.Code == 0 || !strings.Contains(r.Stderr, "readable by group or others; fix: chmod 600 "+open) {
			t.Fatalf("%s with a 0644 secret: exit %d %s", cmd[0], r.Code, r.Stderr)
		}
	}
	worker := filepath.Join(t.TempDir(), "w.json")
	Run(t, nil, binary, "ticket", "--session", "s", "--secret-file", secret, "--out", worker)
	r := Run(t, nil, binary, "provider", "--ticket", worker, "--broker", "127.0.0.1:1")
	if r.Code == 0 || !strings.Contains(r.Stderr, "this is a worker ticket; a provider needs one issued with swarm-proxy ticket --role provider") {
		t.Fatalf("provider with a worker ticket: exit %d %s", r.Code, r.Stderr)
	}
}

// TestTunnelRevocation: adding a session to the broker's --revoked file ends its provider's
// connection and refuses its workers within a second; a token id revokes only that token.
func TestTunnelRevocation(t *testing.T) {
	target := pingServer(t)
	revoked := WriteFile(t, "revoked", "# nothing revoked yet\n")
	b := startBroker(t, "--revoked", revoked)
	_, tk := b.ticket("rev", "1h")
	_, other := b.ticket("rev", "2h") // another expiry: another token (same second, same expiry: the same token)
	prov := b.provider(b.providerTicket("rev", "1h"), "rev", 1)
	get := func(user string) int {
		return Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", user, target.URL+"/ping.txt").Code
	}
	if get(proxyUser(tk)) != 0 {
		t.Fatal("request before revocation failed")
	}
	// A tunnel of each token, open before the revocation: a kept-alive HTTP exchange inside.
	host := strings.TrimPrefix(target.URL, "http://")
	tunnel := func(tk map[string]string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", host, host,
			base64.StdEncoding.EncodeToString([]byte(proxyUser(tk))))
		if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		return c, br
	}
	ping := func(c net.Conn, br *bufio.Reader) error {
		fmt.Fprintf(c, "GET /ping.txt HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	revokedC, revokedBR := tunnel(tk)
	keptC, keptBR := tunnel(other)
	for _, c := range []struct {
		c  net.Conn
		br *bufio.Reader
	}{{revokedC, revokedBR}, {keptC, keptBR}} {
		if err := ping(c.c, c.br); err != nil {
			t.Fatalf("a tunnel before revocation: %v", err)
		}
	}
	// Revoke one worker token by its id: that token is refused, the session's others are not, and
	// the tunnel it opened is cut.
	if err := os.WriteFile(revoked, []byte(tk["token_id"]+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	Eventually(t, "the token to be refused", func() bool { return get(proxyUser(tk)) != 0 })
	if d := time.Since(start); d > time.Second {
		t.Fatalf("token refused %v after the list changed, want within 1s", d)
	}
	if get(proxyUser(other)) != 0 {
		t.Fatal("another token of the session was refused")
	}
	revokedC.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := revokedBR.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the revoked token's open tunnel was not cut: %v", err)
	}
	if err := ping(keptC, keptBR); err != nil {
		t.Fatalf("another token's open tunnel was cut: %v", err)
	}
	b.WaitStderr("worker_tunnels_ended=1")
	// Revoke the session: its provider is cut and its workers refused.
	if err := os.WriteFile(revoked, []byte("rev\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	Eventually(t, "the provider to be cut", func() bool {
		v, ok := b.metric(`swarm_proxy_tunnel_providers{session="rev"}`)
		return !ok || v == 0
	})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("provider cut %v after the list changed, want within 1s", d)
	}
	if get(proxyUser(other)) == 0 {
		t.Fatal("a worker of the revoked session was served")
	}
	prov.WaitStderr("code=revoked")
}
