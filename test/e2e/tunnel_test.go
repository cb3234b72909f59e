package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// brokerEnv is a running broker with its secret, for issuing tickets and starting providers.
type brokerEnv struct {
	t            *testing.T
	secret       string
	cert         string // the provider port's certificate; "" with --insecure-plaintext
	args         []string
	*Proc        // the broker
	ProviderAddr string
}

// writeSecret writes a broker secret readable by its owner only, as the broker requires.
func writeSecret(t *testing.T, name, content string) string {
	t.Helper()
	p := WriteFile(t, name, content)
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var providerListenRE = regexp.MustCompile(`provider_listen=(\S+)`)

// startBroker runs `swarm-proxy broker` on kernel-chosen loopback ports with a policy that lets
// loopback targets through (the tests' servers listen there). Providers connect over TLS with a
// self-signed certificate that their tickets pin, unless extra has --insecure-plaintext.
func startBroker(t *testing.T, extra ...string) *brokerEnv {
	t.Helper()
	b := &brokerEnv{t: t}
	b.secret = writeSecret(t, "secret", "e2e-secret-0123456789-0123456789-0123456789\n")
	pol := WriteFile(t, "policy.yaml", LoopbackPolicy("discovery", ""))
	b.args = []string{"--secret-file", b.secret, "--policy", pol, "--admin-listen", "127.0.0.1:0"}
	if joined := strings.Join(extra, " "); !strings.Contains(joined, "--insecure-plaintext") && !strings.Contains(joined, "--tls-cert") {
		cert, key := brokerCert(t)
		b.cert = cert
		b.args = append(b.args, "--tls-cert", cert, "--tls-key", key)
	}
	for i, a := range extra {
		if a == "--tls-cert" && i+1 < len(extra) {
			b.cert = extra[i+1]
		}
	}
	b.args = append(b.args, extra...)
	b.start("127.0.0.1:0")
	return b
}

func (b *brokerEnv) start(providerListen string) {
	b.t.Helper()
	args := append([]string{"broker", "--listen", "127.0.0.1:0", "--provider-listen", providerListen}, b.args...)
	b.Proc = Start(b.t, "proxy listening", args...)
	m := providerListenRE.FindStringSubmatch(b.Stderr())
	if m == nil {
		b.t.Fatalf("broker did not log its provider address:\n%s", b.Stderr())
	}
	b.ProviderAddr = m[1]
}

// ticket runs `swarm-proxy ticket --json` and returns the ticket file and the parsed ticket.
func (b *brokerEnv) ticket(session, ttl string) (string, map[string]string) {
	b.t.Helper()
	r := Run(b.t, nil, binary, "ticket", "--session", session, "--ttl", ttl, "--broker", b.Addr, "--secret-file", b.secret, "--json")
	if r.Code != 0 {
		b.t.Fatalf("ticket: exit %d: %s", r.Code, r.Stderr)
	}
	var tk map[string]string
	if err := json.Unmarshal([]byte(r.Stdout), &tk); err != nil {
		b.t.Fatalf("ticket --json printed %q: %v", r.Stdout, err)
	}
	for _, k := range []string{"session_id", "role", "token", "token_id", "broker_addr", "expires_at"} {
		if tk[k] == "" {
			b.t.Fatalf("ticket %s lacks %s", r.Stdout, k)
		}
	}
	return WriteFile(b.t, "ticket.json", r.Stdout), tk
}

// TestTicketWithoutBroker: without --broker the JSON still has broker_addr (empty) and the text
// says how to set it.
func TestTicketWithoutBroker(t *testing.T) {
	secret := writeSecret(t, "secret", "e2e-secret-0123456789-0123456789-0123456789\n")
	r := Run(t, nil, binary, "ticket", "--session", "s1", "--secret-file", secret, "--json")
	var tk map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &tk); r.Code != 0 || err != nil {
		t.Fatalf("ticket --json: exit %d, %q: %v", r.Code, r.Stdout, err)
	}
	if v, ok := tk["broker_addr"]; !ok || v != "" {
		t.Fatalf("ticket --json without --broker printed %s: want \"broker_addr\":\"\"", r.Stdout)
	}
	r = Run(t, nil, binary, "ticket", "--session", "s1", "--secret-file", secret)
	if r.Code != 0 || !strings.Contains(r.Stdout, "broker_addr: (none: give --broker HOST:PORT") || strings.Contains(r.Stdout, "HTTPS_PROXY") {
		t.Fatalf("ticket without --broker: exit %d\n%s", r.Code, r.Stdout)
	}
}

// providerTicket runs `swarm-proxy ticket --role provider --out FILE` (pinning the broker's
// certificate when it has one) and returns the file.
func (b *brokerEnv) providerTicket(session, ttl string) string {
	b.t.Helper()
	out := filepath.Join(b.t.TempDir(), "provider.json")
	args := []string{"ticket", "--role", "provider", "--session", session, "--ttl", ttl, "--secret-file", b.secret, "--out", out}
	if b.cert != "" {
		args = append(args, "--tls-cert", b.cert)
	}
	if r := Run(b.t, nil, binary, args...); r.Code != 0 || r.Stdout != "" {
		b.t.Fatalf("ticket --role provider: exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	return out
}

// provider starts `swarm-proxy provider` for a session and waits until the broker counts want
// providers for it. ticketFile is used when it is a provider ticket; for a worker ticket, a
// provider ticket of the same session is issued.
func (b *brokerEnv) provider(ticketFile, session string, want int, extra ...string) *Proc {
	b.t.Helper()
	if data, err := os.ReadFile(ticketFile); err != nil || !strings.Contains(string(data), `"role":"provider"`) {
		ticketFile = b.providerTicket(session, "1h")
	}
	args := append([]string{"provider", "--ticket", ticketFile, "--broker", b.ProviderAddr}, extra...)
	if b.cert == "" {
		args = append(args, "--insecure-plaintext")
	}
	if joined := strings.Join(extra, " "); !strings.Contains(joined, "--allow-targets") && !strings.Contains(joined, "--policy") {
		args = append(args, "--allow-targets", "loopback")
	}
	p := Start(b.t, "connected to broker", args...)
	b.waitProviders(session, want)
	return p
}

func (b *brokerEnv) metric(series string) (float64, bool) {
	b.t.Helper()
	resp, err := http.Get("http://" + b.Admin + "/metrics")
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v, true
}

func (b *brokerEnv) waitProviders(session string, want int) {
	b.t.Helper()
	Eventually(b.t, fmt.Sprintf("%d providers for %s", want, session), func() bool {
		v, ok := b.metric(`swarm_proxy_tunnel_providers{session="` + session + `"}`)
		return (ok && int(v) == want) || (!ok && want == 0)
	})
}

// waitStreamsClosed waits until no stream of session is open.
func (b *brokerEnv) waitStreamsClosed(session string) {
	b.t.Helper()
	Eventually(b.t, "streams of "+session+" closed", func() bool {
		v, ok := b.metric(`swarm_proxy_tunnel_streams{session="` + session + `"}`)
		return !ok || v == 0
	})
}

func proxyUser(tk map[string]string) string { return tk["session_id"] + ":" + tk["token"] }

// providerID is the id the broker gave a provider, from the provider's "connected to broker" line.
func providerID(t *testing.T, p *Proc) string {
	t.Helper()
	m := regexp.MustCompile(`connected to broker.*provider=(\S+)`).FindStringSubmatch(p.Stderr())
	if m == nil {
		t.Fatalf("provider did not log its id:\n%s", p.Stderr())
	}
	return m[1]
}

// brokerCert writes a self-signed certificate for 127.0.0.1 and its key as PEM files.
func brokerCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "swarm-proxy broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certFile = WriteFile(t, "broker.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = WriteFile(t, "broker.key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
	return certFile, keyFile
}

func TestTunnelCurlHTTPAndCONNECT(t *testing.T) {
	for _, mode := range []string{"tcp", "tls"} {
		t.Run(mode, func(t *testing.T) { testTunnelCurl(t, mode == "tls") })
	}
}

func testTunnelCurl(t *testing.T, useTLS bool) {
	plain := pingServer(t)
	tlsSrv, ca := TLSServer(t, plain.Config.Handler)
	var brokerArgs, providerArgs []string
	if useTLS {
		// The certificate verified by a CA file rather than pinned by the ticket.
		cert, key := brokerCert(t)
		brokerArgs = []string{"--tls-cert", cert, "--tls-key", key}
		providerArgs = []string{"--ca", cert}
	} else {
		brokerArgs = []string{"--insecure-plaintext"}
	}
	b := startBroker(t, brokerArgs...)
	_, tk := b.ticket("smoke", "1h")
	tf := b.providerTicket("smoke", "1h")
	prov := b.provider(tf, "smoke", 1, providerArgs...)
	if want := fmt.Sprintf("tls=%v", useTLS); !strings.Contains(prov.Stderr(), want) || !strings.Contains(b.Stderr(), want) {
		t.Fatalf("provider or broker does not report %s", want)
	}

	r := Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), plain.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("plain HTTP through broker: exit %d stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	r = Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "--cacert", ca, tlsSrv.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("CONNECT through broker: exit %d stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	provID := providerID(t, prov)
	for _, method := range []string{"GET", "CONNECT"} {
		rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Method == method })
		if rec.Status != 200 || rec.Session != "smoke" || rec.Provider != provID || rec.Host != "127.0.0.1" {
			t.Errorf("%s record: %+v, want status 200, session smoke, provider %s", method, rec, provID)
		}
	}
}

// fullBacklogListener returns a loopback address whose accept queue is full: connecting to it
// hangs (the kernel drops the SYN), so a dial through it times out.
func fullBacklogListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		if i == 8 {
			t.Fatal("could not fill the accept queue")
		}
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
}

func TestTunnelFailuresReachTheWorker(t *testing.T) {
	srv := pingServer(t)
	pol := WriteFile(t, "deny.yaml", LoopbackPolicy("discovery", "deny:\n  - host: blocked.example\n    name: no-blocked\n"))
	b := startBroker(t, "--open-timeout", "1s", "--policy", pol)
	tfLoop, tkLoop := b.ticket("loop", "1h")
	loopProv := b.provider(tfLoop, "loop", 1, "--allow-targets", "loopback", "--dial-timeout", "10s")
	tfPub, tkPub := b.ticket("pub", "1h")
	pubProv := b.provider(tfPub, "pub", 1, "--allow-targets", "public")
	loopID, pubID := providerID(t, loopProv), providerID(t, pubProv)
	_, tkNone := b.ticket("lonely", "1h")
	_, tkShort := b.ticket("loop", "1s")
	expires, _ := time.Parse(time.RFC3339, tkShort["expires_at"])
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedURL := "http://" + closed.Addr().String() + "/"
	closed.Close()
	hang := "http://" + fullBacklogListener(t) + "/"

	tests := []struct {
		name      string
		user      string
		url       string
		status    int
		body      string // in what the worker sees
		logReason string // in the access log record's reason
		provider  string // the access log record's provider: the one that refused or failed
	}{
		{"wrong token", "loop:v1.123.AAAAAAAA.bad", srv.URL + "/ping.txt", 407, "malformed token", "malformed token", ""},
		{"token of another session", "pub:" + tkLoop["token"], srv.URL + "/ping.txt", 407, "issued for another session", "issued for another session", ""},
		{"expired token", proxyUser(tkShort), srv.URL + "/ping.txt", 407, "token has expired", "token has expired", ""},
		{"no provider", proxyUser(tkNone), srv.URL + "/ping.txt", 502, "no provider is connected for session lonely", "no provider is connected for session lonely", ""},
		{"provider does not answer in time", proxyUser(tkLoop), hang, 504, "did not answer the open within 1s", "did not answer the open within 1s", loopID},
		{"provider refuses the target", proxyUser(tkPub), srv.URL + "/ping.txt", 403, "loopback address", "does not dial private, loopback or metadata addresses (--allow-targets public)", pubID},
		{"loopback provider refuses a public target", proxyUser(tkLoop), "http://8.8.8.8:22/", 403,
			"no allow rule matches 8.8.8.8:22 (mode: enforce); this provider only dials loopback targets (--allow-targets loopback)",
			"this provider only dials loopback targets (--allow-targets loopback)", loopID},
		{"target refuses the provider", proxyUser(tkLoop), closedURL, 502, "connection refused", "connection refused", loopID},
		{"broker policy refuses first", proxyUser(tkLoop), "http://blocked.example/", 403, "denied by rule no-blocked", "denied by rule no-blocked", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "expired token" {
				Eventually(t, "the short ticket to expire", func() bool { return time.Now().After(expires) })
			}
			r := Curl(t, "-i", "--proxy", "http://"+b.Addr, "--proxy-user", tt.user, tt.url)
			if !strings.HasPrefix(r.Stdout, fmt.Sprintf("HTTP/1.1 %d ", tt.status)) || !strings.Contains(r.Stdout, tt.body) {
				t.Fatalf("worker saw (exit %d):\n%s\nwant status %d and %q", r.Code, r.Stdout, tt.status, tt.body)
			}
			if tt.status == 407 && !strings.Contains(r.Stdout, "Proxy-Authenticate: Basic") {
				t.Fatalf("407 without Proxy-Authenticate:\n%s", r.Stdout)
			}
			id := regexp.MustCompile(`X-Swarm-Proxy-Request-Id: (\S+)`).FindStringSubmatch(r.Stdout)
			if id == nil {
				t.Fatalf("no request id in:\n%s", r.Stdout)
			}
			rec := b.WaitRecord(func(r accesslog.Record) bool { return r.RequestID == id[1] })
			if rec.Status != tt.status || !strings.Contains(rec.Reason, tt.logReason) || rec.Provider != tt.provider {
				t.Fatalf("log record %+v, want status %d, reason containing %q and provider %q", rec, tt.status, tt.logReason, tt.provider)
			}
		})
	}
	// The broker's refusal never reached the provider.
	if strings.Contains(loopProv.Stderr(), "blocked.example") {
		t.Fatalf("the provider was asked for a target the broker's policy denies:\n%s", loopProv.Stderr())
	}
}

// blockingDownload serves a close-delimited 100 MiB response (no Content-Length, so only a reset
// can tell the client the download was cut short). It writes the first MiB, reports, and waits
// for release before writing the rest.
func blockingDownload(t *testing.T) (addr string, started <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st, rel := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n")
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		c.Write(chunk)
		close(st)
		select {
		case <-rel:
		case <-time.After(waitTimeout):
		}
		for range 99 {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	return ln.Addr().String(), st, rel
}

// TestTunnelProviderKilledMidDownload kills the provider in the middle of a download through a
// CONNECT tunnel and through plain-HTTP forwarding: either way the worker must see a failure, never
// a complete-looking download, and the access log must say the provider disconnected.
func TestTunnelProviderKilledMidDownload(t *testing.T) {
	for _, method := range []string{"CONNECT", "GET"} {
		t.Run(method, func(t *testing.T) { testProviderKilledMidDownload(t, method) })
	}
}

func testProviderKilledMidDownload(t *testing.T, method string) {
	b := startBroker(t)
	tf, tk := b.ticket("dl", "1h")
	prov := b.provider(tf, "dl", 1)
	otherTicket, otherTk := b.ticket("other", "1h")
	b.provider(otherTicket, "other", 1)
	gor, _ := b.metric("go_goroutines")

	addr, started, release := blockingDownload(t)
	out := filepath.Join(t.TempDir(), "download")
	args := []string{"-sS", "--max-time", "30", "--proxy", "http://" + b.Addr, "--proxy-user", proxyUser(tk), "-o", out, "http://" + addr + "/big"}
	if method == "CONNECT" {
		args = append(args, "-p") // tunnel the plain-HTTP request through CONNECT
	}
	curl := exec.Command("curl", args...)
	curl.Env = cleanEnv()
	var stderr bytes.Buffer
	curl.Stderr = &stderr
	if err := curl.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(waitTimeout):
		curl.Process.Kill()
		t.Fatal("download did not start")
	}
	// curl's stdio buffer may hold the tail of the first MiB back: half of it is proof enough.
	Eventually(t, "the download to reach the worker", func() bool {
		fi, err := os.Stat(out)
		return err == nil && fi.Size() >= 512<<10
	})
	prov.Signal(syscall.SIGKILL)
	close(release)
	err := curl.Wait()
	fi, _ := os.Stat(out)
	if err == nil {
		t.Fatalf("curl exited 0 after the provider was killed (%d bytes): a truncated download looked complete", fi.Size())
	}
	if fi.Size() >= 100<<20 {
		t.Fatalf("curl received everything (%d bytes) although the provider was killed", fi.Size())
	}
	// Through CONNECT the worker's connection is reset; forwarding aborts a chunked response before
	// its last chunk, which curl reports as a transfer closed early (or a reset).
	if e := stderr.String(); !strings.Contains(e, "reset") && (method == "CONNECT" || !strings.Contains(e, "transfer closed with outstanding read data remaining")) {
		t.Errorf("curl stderr %q: want a connection reset or, forwarded, an unfinished transfer", e)
	}
	rec := b.WaitRecord(func(r accesslog.Record) bool { return r.Method == method })
	if rec.Session != "dl" || rec.Provider == "" {
		t.Fatalf("log record %+v: want session dl and the provider", rec)
	}
	disconnected := "provider " + rec.Provider + " disconnected"
	switch method {
	case "CONNECT":
		if rec.Error != "tunnel_broken" || !strings.Contains(rec.Reason, disconnected) {
			t.Fatalf("log record %+v: want error tunnel_broken and a reason saying %s", rec, disconnected)
		}
	case "GET":
		if rec.Path != "/big" || rec.Error != "upstream" || !strings.HasPrefix(rec.Reason, "the response body from the target broke off: ") ||
			!strings.Contains(rec.Reason, disconnected) {
			t.Fatalf("log record %+v: want error upstream and a reason saying the body broke off because %s", rec, disconnected)
		}
	}
	b.waitProviders("dl", 0)
	b.waitStreamsClosed("dl")

	// Other sessions carry on.
	srv := pingServer(t)
	r := Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(otherTk), srv.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("other session after the kill: exit %d %q %q", r.Code, r.Stdout, r.Stderr)
	}

	// A new provider connects; the next download succeeds, and the broker leaked nothing.
	b.provider(tf, "dl", 1)
	r = Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), srv.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("after reconnect: exit %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
	Eventually(t, "broker goroutines back to baseline", func() bool {
		v, _ := b.metric("go_goroutines")
		return v <= gor+5
	})
}

// tcpConnsTo counts pid's established TCP connections to remote port, from /proc/<pid>/fd socket
// inodes matched against /proc/<pid>/net/tcp and tcp6. It counts distinct inodes: a table that
// changes while it is read can list one socket twice.
func tcpConnsTo(t *testing.T, pid int, remotePort int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	seen := map[string]bool{}
	for _, file := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			_, portHex, _ := strings.Cut(f[2], ":")
			if p, _ := strconv.ParseInt(portHex, 16, 32); int(p) == remotePort {
				seen[f[9]] = true
			}
		}
	}
	return len(seen)
}

func TestTunnelStormOverOneConnection(t *testing.T) {
	const n = 200
	var arrived sync.WaitGroup
	arrived.Add(n)
	all, counted := make(chan struct{}), make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	tlsSrv, _ := TLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		// Hold every tunnel open until all of them are and the test has counted connections, so
		// that the 200 are truly concurrent.
		select {
		case <-counted:
		case <-time.After(waitTimeout):
		}
		io.WriteString(w, "storm ok\n")
	}))
	b := startBroker(t)
	tf, tk := b.ticket("storm", "1h")
	prov := b.provider(tf, "storm", 1)
	gor, _ := b.metric("go_goroutines")
	_, brokerPort, _ := net.SplitHostPort(b.ProviderAddr)
	bp, _ := strconv.Atoi(brokerPort)
	_, srvPort, _ := net.SplitHostPort(tlsSrv.Listener.Addr().String())
	sp, _ := strconv.Atoi(srvPort)

	proxyURL := &url.URL{Scheme: "http", Host: b.Addr, User: url.UserPassword(tk["session_id"], tk["token"])}
	tr := tlsSrv.Client().Transport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyURL(proxyURL)
	tr.DisableKeepAlives = true
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * waitTimeout}

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(tlsSrv.URL + "/")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(body) != "storm ok\n" {
				errs <- fmt.Errorf("status %d body %q", resp.StatusCode, body)
			}
		}()
	}
	select {
	case <-all:
	case <-time.After(waitTimeout):
		t.Fatal("the 200 tunnels were never open at once")
	}
	// While all 200 tunnels are open: 200 upstream connections, one connection to the broker.
	upstream, toBroker := tcpConnsTo(t, prov.Pid(), sp), tcpConnsTo(t, prov.Pid(), bp)
	close(counted)
	wg.Wait()
	close(errs)
	failures := 0
	for err := range errs {
		failures++
		t.Error(err)
	}
	if failures > 0 {
		t.Fatalf("%d of %d tunnels failed", failures, n)
	}
	if toBroker != 1 || upstream != n {
		t.Fatalf("provider held %d connections to the broker (want exactly 1) and %d to the target (want %d)", toBroker, upstream, n)
	}
	if v, _ := b.metric(`swarm_proxy_tunnel_opens_total{result="ok"}`); v != n {
		t.Fatalf("opens ok = %v, want %d", v, n)
	}
	b.waitStreamsClosed("storm")
	Eventually(t, "broker goroutines back to baseline", func() bool {
		v, _ := b.metric("go_goroutines")
		return v <= gor+5
	})
	if got := tcpConnsTo(t, prov.Pid(), bp); got != 1 {
		t.Fatalf("provider holds %d connections to the broker after the storm", got)
	}
}

func TestTunnelTwoProvidersOneLeaves(t *testing.T) {
	// CONNECT, so that every request is a new stream (plain HTTP reuses kept-alive streams).
	tlsSrv, ca := TLSServer(t, pingServer(t).Config.Handler)
	b := startBroker(t)
	tf, tk := b.ticket("pair", "1h")
	first := b.provider(tf, "pair", 1)
	b.provider(tf, "pair", 2)
	get := func() {
		t.Helper()
		r := Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "--cacert", ca, tlsSrv.URL+"/ping.txt")
		if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
			t.Fatalf("exit %d %q %q", r.Code, r.Stdout, r.Stderr)
		}
	}
	records := func(n int) []accesslog.Record {
		t.Helper()
		Eventually(t, fmt.Sprintf("%d access log records", n), func() bool { return len(b.Records()) >= n })
		return b.Records()
	}
	for range 6 {
		get()
	}
	used := map[string]bool{}
	for _, r := range records(6) {
		used[r.Provider] = true
	}
	if len(used) != 2 {
		t.Fatalf("requests went through %v, want both providers", used)
	}
	first.Signal(syscall.SIGKILL)
	b.waitProviders("pair", 1)
	for range 6 {
		get()
	}
	after := records(12)[6:]
	for _, r := range after {
		if r.Status != 200 || r.Provider == "" || r.Provider != after[0].Provider {
			t.Fatalf("after one provider left: %+v", after)
		}
	}
}

func TestTunnelBrokerRestart(t *testing.T) {
	srv := pingServer(t)
	b := startBroker(t)
	tf, tk := b.ticket("restart", "1h")
	prov := b.provider(tf, "restart", 1)
	b.Signal(syscall.SIGTERM)
	if code := b.Wait(); code != 0 {
		t.Fatalf("broker exited %d", code)
	}
	prov.WaitStderr("reconnecting")
	b.start(b.ProviderAddr) // same provider address: the provider finds it by itself
	b.waitProviders("restart", 1)
	r := Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), srv.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("after broker restart: exit %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
}

func TestTunnelProviderDrainsOnSIGTERM(t *testing.T) {
	b := startBroker(t)
	tf, tk := b.ticket("drain", "1h")
	first := b.provider(tf, "drain", 1)

	addr, started, release := blockingDownload(t)
	out := filepath.Join(t.TempDir(), "download")
	curl := exec.Command("curl", "-sS", "--max-time", "60", "-p", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "-o", out, "http://"+addr+"/big")
	curl.Env = cleanEnv()
	var stderr bytes.Buffer
	curl.Stderr = &stderr
	if err := curl.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(waitTimeout):
		curl.Process.Kill()
		t.Fatal("download did not start")
	}
	b.provider(tf, "drain", 2)
	first.Signal(syscall.SIGTERM)
	b.WaitStderr("provider draining")
	first.WaitStderr("draining: waiting for open streams")

	// New requests go to the other provider while the first finishes its download.
	srv := pingServer(t)
	r := Curl(t, "-f", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), srv.URL+"/ping.txt")
	if r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("request during the drain: exit %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
	close(release)
	if err := curl.Wait(); err != nil {
		t.Fatalf("download through the draining provider failed: %v: %s", err, stderr.String())
	}
	if fi, _ := os.Stat(out); fi.Size() != 100<<20 {
		t.Fatalf("downloaded %d bytes, want %d", fi.Size(), 100<<20)
	}
	if code := first.Wait(); code != 0 {
		t.Fatalf("drained provider exited %d", code)
	}
	b.waitProviders("drain", 1)
}

func TestTunnelProviderPolicyFileReloads(t *testing.T) {
	// CONNECT, so every request opens a new stream: a policy change applies to new connections
	// (a kept-alive plain-HTTP upstream connection is not re-checked).
	srv, ca := TLSServer(t, pingServer(t).Config.Handler)
	b := startBroker(t)
	tf, tk := b.ticket("pol", "1h")
	polFile := WriteFile(t, "provider-policy.yaml", LoopbackPolicy("enforce", ""))
	prov := b.provider(tf, "pol", 1, "--policy", polFile, "--policy-poll", "100ms")
	get := func() Result {
		return Curl(t, "-v", "--proxy", "http://"+b.Addr, "--proxy-user", proxyUser(tk), "--cacert", ca, srv.URL+"/ping.txt")
	}
	if r := get(); r.Code != 0 || r.Stdout != "pong from swarm-proxy test\n" {
		t.Fatalf("allowed by the provider's policy file: exit %d\n%s", r.Code, r.Stderr)
	}
	if err := os.WriteFile(polFile, []byte("mode: enforce\nallow:\n  - host: example.com\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	prov.WaitStderr("policy reloaded")
	// curl hides a refused CONNECT's body; the status and the reason header show.
	if r := get(); !strings.Contains(r.Stderr, "< HTTP/1.1 403 ") || !strings.Contains(r.Stderr, "loopback address") {
		t.Fatalf("after the provider's policy changed: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
}
