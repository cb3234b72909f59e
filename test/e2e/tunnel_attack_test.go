package e2e

// Attacks on the reverse path, run against the built broker on loopback: a provider ticket used to
// flood the broker with streams, idle connections that hold the handshake slots, a token sent where
// the session id belongs. Each is bounded in count and time.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	be "encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-yamux/v5"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// vmRSS is a process's resident set size in bytes, from /proc.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

func writeCtl(w io.Writer, s string) error {
	b := be.BigEndian.AppendUint16(nil, uint16(len(s)))
	_, err := w.Write(append(b, s...))
	return err
}

func readCtl(r io.Reader) (string, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, be.BigEndian.Uint16(n[:]))
	_, err := io.ReadFull(r, b)
	return string(b), err
}

// loginByHand logs in to a TLS broker as a provider, following docs/tunnel-protocol.md section 3 with
// nothing from the tunnel package, and returns the connection, ready for the multiplexer.
func loginByHand(t *testing.T, addr, ticketFile string) (net.Conn, error) {
	var tk struct{ SessionID, Token string }
	data, err := os.ReadFile(ticketFile)
	if err != nil {
		return nil, err
	}
	var raw map[string]string
	json.Unmarshal(data, &raw)
	tk.SessionID, tk.Token = raw["session_id"], raw["token"]
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "SWARM-TUNNEL 2 tls\r\n")
	hello, err := readCtl(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	f := strings.Fields(hello)
	if len(f) != 4 {
		c.Close()
		return nil, fmt.Errorf("hello %q", hello)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	cs := tc.ConnectionState()
	bind, _ := cs.ExportKeyingMaterial("EXPORTER-swarm-tunnel", nil, 32)
	enc := base64.RawURLEncoding
	m := hmac.New(sha256.New, []byte(tk.Token))
	fmt.Fprintf(m, "swarm-tunnel 2|%s|%s|%s", f[3], tk.SessionID, enc.EncodeToString(bind))
	public := tk.Token[:strings.LastIndexByte(tk.Token, '.')]
	writeCtl(tc, fmt.Sprintf("AUTH 2 %s %s %s", tk.SessionID, public, enc.EncodeToString(m.Sum(nil))))
	ans, err := readCtl(tc)
	if err != nil || !strings.HasPrefix(ans, "OK ") {
		tc.Close()
		return nil, fmt.Errorf("login answer %q, %v", ans, err)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// TestTunnelAttackStreamFlood: one provider ticket, 6 connections, each opening 1,024 streams
// towards the broker and writing 256 KiB into every one (the review's attack, which took a broker
// from 33 MB to 1.6 GB). A provider may open no stream: the broker resets each unread, disconnects a
// provider that keeps at it, and its RSS stays within 64 MB of its idle size.
func TestTunnelAttackStreamFlood(t *testing.T) {
	b := startBroker(t)
	tf := b.providerTicket("flood", "1h")
	idle := vmRSS(t, b.Pid())
	var peak int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			if r := vmRSS(t, b.Pid()); r > peak {
				peak = r
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	opened, disconnected := 0, 0
	payload := bytes.Repeat([]byte("x"), 256<<10)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := loginByHand(t, b.ProviderAddr, tf)
			if err != nil {
				t.Errorf("login: %v", err)
				return
			}
			defer c.Close()
			cfg := yamux.DefaultConfig()
			cfg.LogOutput = io.Discard
			mux, err := yamux.Server(c, cfg, nil)
			if err != nil {
				t.Error(err)
				return
			}
			defer mux.Close()
			var streams sync.WaitGroup
			for range 1024 {
				st, err := mux.OpenStream(ctx)
				if err != nil {
					break
				}
				mu.Lock()
				opened++
				mu.Unlock()
				streams.Add(1)
				go func() {
					defer streams.Done()
					st.SetWriteDeadline(time.Now().Add(5 * time.Second))
					st.Write(payload)
					st.Reset()
				}()
			}
			streams.Wait()
			select {
			case <-mux.CloseChan():
				mu.Lock()
				disconnected++
				mu.Unlock()
			case <-ctx.Done():
			}
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	t.Logf("broker RSS idle %d MiB, peak %d MiB during the attack; %d streams opened, %d of 6 connections cut by the broker, in %v",
		idle>>20, peak>>20, opened, disconnected, time.Since(start).Round(time.Millisecond))
	if peak-idle > 64<<20 {
		t.Fatalf("broker RSS grew from %d MiB to %d MiB under the stream flood, want at most 64 MiB more", idle>>20, peak>>20)
	}
	if disconnected != 6 {
		t.Fatalf("the broker cut %d of 6 flooding providers", disconnected)
	}
	if !strings.Contains(b.Stderr(), "provider keeps opening streams") {
		t.Fatalf("broker log does not say why it cut the providers:\n%s", b.Stderr())
	}
	if n, _ := b.metric("swarm_proxy_tunnel_provider_streams_refused_total"); n < 6*16 {
		t.Fatalf("the broker counted %v refused streams, want at least %d", n, 6*16)
	}
	// The broker still serves a real provider and its workers.
	target := pingServer(t)
	_, tk := b.ticket("flood", "1h")
	b.provider(tf, "flood", 1)
	r := Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), target.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("after the flood: exit %d, %q %s", r.Code, r.Stdout, r.Stderr)
	}
}

// TestTunnelAttackHandshakeSlots: 1,100 idle TCP connections from one address (127.0.0.2) to the
// provider port, refilled as the broker drops them, must not keep a provider from another address
// out: it connects within 5 s.
func TestTunnelAttackHandshakeSlots(t *testing.T) {
	b := startBroker(t, "--handshake-timeout", "5s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	attacker := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	held := 0
	for range 1100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := attacker.DialContext(ctx, "tcp", b.ProviderAddr)
				if err != nil {
					return
				}
				mu.Lock()
				held++
				mu.Unlock()
				// Hold it, silent, until the broker drops it; then refill.
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				io.Copy(io.Discard, c)
				c.Close()
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	Eventually(t, "the flood to reach 1,100 connections", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return held >= 1100
	})
	start := time.Now()
	b.provider(b.providerTicket("slots", "1h"), "slots", 1)
	took := time.Since(start)
	t.Logf("provider connected %v after the flood of 1,100 idle connections began holding slots", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("provider took %v to connect under the flood, want at most 5s", took)
	}
}

// TestTunnelTokensNeverEchoed: credentials in the wrong places (--proxy-user "$TOKEN_A:$TOKEN_B", a
// token as the session id, a provider token as proxy credentials, a provider logging in with a
// worker ticket) are refused, and no token or MAC appears in any response, header, log line, access
// record or metric.
func TestTunnelTokensNeverEchoed(t *testing.T) {
	target := pingServer(t)
	b := startBroker(t, "--log-level", "debug")
	_, a := b.ticket("sess-a", "1h")
	_, bt := b.ticket("sess-b", "1h")
	provFile := b.providerTicket("sess-a", "1h")
	var prov struct{ Token string }
	data, _ := os.ReadFile(provFile)
	json.Unmarshal(data, &prov)
	host := strings.TrimPrefix(target.URL, "http://")
	var seen strings.Builder
	for _, user := range []string{a["token"] + ":" + bt["token"], bt["token"] + ":", "sess-a:" + bt["token"], "sess-a:" + prov.Token, "sess-a:" + a["token"] + "x"} {
		for _, method := range []string{"GET", "CONNECT"} {
			resp, body := proxyRequest(t, b.Addr, method, host, user)
			if resp.StatusCode != 407 {
				t.Fatalf("%s with %q: %s, want 407", method, user, resp.Status)
			}
			fmt.Fprintf(&seen, "%v\n%s\n", resp.Header, body)
			id := resp.Header.Get("X-Swarm-Proxy-Request-Id")
			b.WaitRecord(func(r accesslog.Record) bool { return r.RequestID == id })
		}
	}
	// A provider that logs in with a worker ticket is told which role it needs.
	workerFile := WriteFile(t, "worker.json", fmt.Sprintf(`{"session_id":"sess-a","token":%q}`, a["token"]))
	p := Start(t, "provider starting", "provider", "--ticket", workerFile, "--broker", b.ProviderAddr, "--broker-fingerprint", fingerprintOf(t, b.cert))
	Eventually(t, "the broker to refuse the worker ticket", func() bool {
		return strings.Contains(b.Stderr(), "code=wrong_role")
	})
	p.Signal(syscall.SIGTERM)
	p.Wait()
	resp, err := http.Get("http://" + b.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	everything := seen.String() + b.Stdout() + b.Stderr() + p.Stderr() + p.Stdout() + string(metrics)
	for _, tok := range []string{a["token"], bt["token"], prov.Token} {
		mac := tok[strings.LastIndexByte(tok, '.')+1:]
		if strings.Contains(everything, mac[:12]) {
			t.Fatalf("a token's MAC appears in what the run wrote:\n%s", everything)
		}
	}
	if !strings.Contains(seen.String(), "the proxy user name is a token") || !strings.Contains(seen.String(), "this is a provider ticket and a worker ticket is needed here") {
		t.Fatalf("the refusals do not say what was wrong:\n%s", seen.String())
	}
}

// fingerprintOf is the sha256 fingerprint of a PEM certificate file.
func fingerprintOf(t *testing.T, certFile string) string {
	t.Helper()
	r := Run(t, nil, binary, "ticket", "--session", "fp", "--role", "provider", "--secret-file", writeSecret(t, "fp-secret", strings.Repeat("s", 40)), "--tls-cert", certFile, "--json")
	var tk struct {
		FP string `json:"broker_fingerprint"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &tk); err != nil || !strings.HasPrefix(tk.FP, "sha256:") {
		t.Fatalf("ticket --tls-cert: %q %v", r.Stdout, err)
	}
	return tk.FP
}
