package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"golang.org/x/net/proxy"
)

// path is one way from the benchmark's clients to the upstream servers.
type path struct {
	name string
	// dial opens a connection to addr through the path, ready to carry bytes.
	dial func(ctx context.Context, addr string) (net.Conn, error)
	// proxyURL is what an HTTP client sets as its proxy; nil means no proxy.
	proxyURL *url.URL
	// pids are the processes (with their descendants) whose memory counts for this path.
	pids []int
	// providerPid and brokerPort, when set, name the connection that carries every tunnel: the
	// storm counts providerPid's TCP connections to brokerPort.
	providerPid, brokerPort int
	procs                   []*proc
	// up, when set, is the path's own set of upstream servers (in another network namespace).
	up *upstream
	// release, when set, runs after the path's processes stopped.
	release func()
}

func (p *path) stop() {
	for i := len(p.procs) - 1; i >= 0; i-- {
		p.procs[i].stop()
	}
	if p.release != nil {
		p.release()
	}
}

// alive reports the first of the path's processes that has exited, if any.
func (p *path) alive() error {
	for _, pr := range p.procs {
		if !pr.alive() {
			return fmt.Errorf("%s exited:\n%s", pr.name, pr.log())
		}
	}
	return nil
}

// env is what path constructors share: a scratch directory and the binaries.
type env struct {
	dir        string
	binary     string
	bareBinary string
}

func directPath() *path {
	var d net.Dialer
	return &path{name: "direct", dial: func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}}
}

// connectDialer returns a dial function that opens tunnels with HTTP CONNECT through proxyAddr,
// sending auth ("user:password") as proxy credentials when it is not empty.
func connectDialer(proxyAddr, auth string) func(ctx context.Context, addr string) (net.Conn, error) {
	return connectDialerVia((&net.Dialer{}).DialContext, proxyAddr, auth)
}

// connectDialerVia is connectDialer reaching the proxy with dial.
func connectDialerVia(dial func(ctx context.Context, network, addr string) (net.Conn, error), proxyAddr, auth string) func(ctx context.Context, addr string) (net.Conn, error) {
	authHeader := ""
	if auth != "" {
		authHeader = "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(auth)) + "\r\n"
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := dial(ctx, "tcp", proxyAddr)
		if err != nil {
			return nil, fmt.Errorf("connect to proxy: %w", err)
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", addr, addr, authHeader); err != nil {
			c.Close()
			return nil, fmt.Errorf("send CONNECT: %w", err)
		}
		br := bufio.NewReaderSize(c, 1024)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("read CONNECT response: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			c.Close()
			return nil, fmt.Errorf("CONNECT %s: %s", addr, resp.Status)
		}
		c.SetDeadline(time.Time{})
		if br.Buffered() > 0 {
			return &bufferedConn{Conn: c, r: br}, nil
		}
		return c, nil
	}
}

// bufferedConn is a connection whose first bytes were read ahead into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// socksDialer returns a dial function that opens tunnels through the SOCKS5 proxy at addr, logging
// in with auth when it is not nil.
func socksDialer(addr string, auth *proxy.Auth) (func(ctx context.Context, addr string) (net.Conn, error), error) {
	d, err := proxy.SOCKS5("tcp", addr, auth, &net.Dialer{})
	if err != nil {
		return nil, fmt.Errorf("socks dialer: %w", err)
	}
	cd, ok := d.(proxy.ContextDialer)
	if !ok {
		return nil, errors.New("socks dialer: no DialContext")
	}
	return func(ctx context.Context, addr string) (net.Conn, error) { return cd.DialContext(ctx, "tcp", addr) }, nil
}

// loopbackPolicy lets the proxies reach the benchmark's loopback servers, and nothing else.
const loopbackPolicy = "mode: enforce\nallow:\n  - name: loopback\n    cidr: 127.0.0.0/8\n"

var listeningRE = regexp.MustCompile(`msg="proxy listening" addr=(\S+)`)

// swarmProxyPath runs `swarm-proxy proxy` with a policy that allows loopback targets.
func swarmProxyPath(e env) (*path, error) {
	pol := filepath.Join(e.dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(loopbackPolicy), 0o644); err != nil {
		return nil, fmt.Errorf("write policy: %w", err)
	}
	pr, addr, err := startProc(e.binary, listeningRE, "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "",
		"--policy", pol, "--policy-poll", "0", "--log-file", filepath.Join(e.dir, "proxy-access.log"))
	if err != nil {
		return nil, err
	}
	return &path{name: "proxy", dial: connectDialer(addr, ""), proxyURL: &url.URL{Scheme: "http", Host: addr},
		pids: []int{pr.pid()}, procs: []*proc{pr}}, nil
}

var bareListeningRE = regexp.MustCompile(`bareproxy listening on (\S+)`)

// barePath runs bench/bareproxy: an HTTP proxy with nothing but CONNECT and forwarding, written
// without net/http's server or client, the floor for a proxy written in Go. The table then
// separates what swarm-proxy's own work (policy, logging, metrics, limits, HTTP hygiene) costs from
// what the extra hop costs on this machine.
func barePath(e env) (*path, error) {
	pr, addr, err := startProc(e.bareBinary, bareListeningRE, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &path{name: "bare-go", dial: connectDialer(addr, ""), proxyURL: &url.URL{Scheme: "http", Host: addr},
		pids: []int{pr.pid()}, procs: []*proc{pr}}, nil
}

var (
	providerListenRE = regexp.MustCompile(`provider_listen=(\S+)`)
	socksListenRE    = regexp.MustCompile(`socks=(\S+)`)
	connectedRE      = regexp.MustCompile(`connected to broker`)
)

// tunnelPath runs `swarm-proxy broker` and one `swarm-proxy provider` for a fresh ticket: workers'
// tunnels go client → broker → one multiplexed connection → provider → target. With socks, the
// clients use the broker's SOCKS5 listener (the path named tunnel-socks), as they do OpenSSH's:
// every phase, plain HTTP included, is then a raw relay that the broker does not parse.
func tunnelPath(e env, socks bool) (*path, error) {
	name, args := "tunnel", []string{}
	if socks {
		name, args = "tunnel-socks", []string{"--socks-listen", "127.0.0.1:0"}
	}
	dir := filepath.Join(e.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tunnel dir: %w", err)
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("bench-secret-0123456789-0123456789-0123456789\n"), 0o600); err != nil {
		return nil, fmt.Errorf("tunnel secret: %w", err)
	}
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(loopbackPolicy), 0o644); err != nil {
		return nil, fmt.Errorf("write policy: %w", err)
	}
	cert, key, err := writeSelfSigned(dir)
	if err != nil {
		return nil, err
	}
	brokerArgs := append([]string{"broker", "--listen", "127.0.0.1:0", "--provider-listen", "127.0.0.1:0",
		"--admin-listen", "", "--secret-file", secret, "--policy", pol, "--policy-poll", "0",
		"--tls-cert", cert, "--tls-key", key, "--log-file", filepath.Join(dir, "broker-access.log")}, args...)
	b, addr, err := startProc(e.binary, listeningRE, brokerArgs...)
	if err != nil {
		return nil, err
	}
	m := providerListenRE.FindStringSubmatch(b.log())
	if m == nil {
		b.stop()
		return nil, fmt.Errorf("broker did not log its provider address:\n%s", b.log())
	}
	providerAddr := m[1]
	out, err := exec.Command(e.binary, "ticket", "--session", "bench", "--ttl", "2h", "--broker", addr,
		"--secret-file", secret, "--json").Output()
	if err != nil {
		b.stop()
		return nil, fmt.Errorf("ticket: %w", err)
	}
	var tk struct {
		Session string `json:"session_id"`
		Token   string `json:"token"`
	}
	if err := json.Unmarshal(out, &tk); err != nil || tk.Session == "" || tk.Token == "" {
		b.stop()
		return nil, fmt.Errorf("ticket --json printed %q: %v", out, err)
	}
	// The provider's ticket pins the broker's certificate: the tunnel runs over TLS.
	tf := filepath.Join(dir, "provider.json")
	if out, err := exec.Command(e.binary, "ticket", "--session", "bench", "--ttl", "2h", "--role", "provider",
		"--secret-file", secret, "--tls-cert", cert, "--out", tf).CombinedOutput(); err != nil {
		b.stop()
		return nil, fmt.Errorf("provider ticket: %v: %s", err, out)
	}
	pv, _, err := startProc(e.binary, connectedRE, "provider", "--ticket", tf, "--broker", providerAddr, "--allow-targets", "loopback")
	if err != nil {
		b.stop()
		return nil, err
	}
	_, port, _ := net.SplitHostPort(providerAddr)
	brokerPort, _ := strconv.Atoi(port)
	p := &path{name: name, dial: connectDialer(addr, tk.Session+":"+tk.Token),
		proxyURL: &url.URL{Scheme: "http", Host: addr, User: url.UserPassword(tk.Session, tk.Token)},
		pids:     []int{b.pid(), pv.pid()}, providerPid: pv.pid(), brokerPort: brokerPort, procs: []*proc{b, pv}}
	if socks {
		m := socksListenRE.FindStringSubmatch(b.log())
		if m == nil {
			p.stop()
			return nil, fmt.Errorf("broker did not log its SOCKS5 address:\n%s", b.log())
		}
		if p.dial, err = socksDialer(m[1], &proxy.Auth{User: tk.Session, Password: tk.Token}); err != nil {
			p.stop()
			return nil, err
		}
		p.proxyURL = &url.URL{Scheme: "socks5", Host: m[1], User: url.UserPassword(tk.Session, tk.Token)}
	}
	return p, nil
}

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 and its key into dir.
func writeSelfSigned(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// squidPath runs Squid on a loopback port with a generated configuration: no cache, access log on.
func squidPath(ctx context.Context, e env) (*path, error) {
	bin, err := exec.LookPath("squid")
	if err != nil {
		return nil, errNotInstalled
	}
	dir := filepath.Join(e.dir, "squid")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("squid dir: %w", err)
	}
	os.Chmod(dir, 0o777) // Squid started as root works as the proxy user
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`http_port 127.0.0.1:%d
acl bench src 127.0.0.1/32
http_access allow bench
http_access deny all
cache deny all
cache_mem 8 MB
access_log stdio:%[2]s/access.log
cache_log %[2]s/cache.log
cache_store_log none
pid_filename %[2]s/squid.pid
coredump_dir %[2]s
max_filedescriptors 16384
pinger_enable off
netdb_filename none
shutdown_lifetime 1 seconds
`, port, dir)
	cf := filepath.Join(dir, "squid.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("squid config: %w", err)
	}
	pr, addr, err := startListening(ctx, port, bin, "-N", "-f", cf)
	if err != nil {
		return nil, err
	}
	return &path{name: "squid", dial: connectDialer(addr, ""), proxyURL: &url.URL{Scheme: "http", Host: addr},
		pids: []int{pr.pid()}, procs: []*proc{pr}}, nil
}

// tinyproxyPath runs tinyproxy on a loopback port with a generated configuration.
func tinyproxyPath(ctx context.Context, e env) (*path, error) {
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		return nil, errNotInstalled
	}
	dir := filepath.Join(e.dir, "tinyproxy")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("tinyproxy dir: %w", err)
	}
	os.Chmod(dir, 0o777) // tinyproxy started as root works as nobody
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	runAs := ""
	if os.Getuid() == 0 {
		runAs = "User nobody\nGroup nogroup\n"
	}
	conf := fmt.Sprintf(`%sPort %d
Listen 127.0.0.1
Timeout 600
MaxClients 4096
LogFile "%[3]s/tinyproxy.log"
LogLevel Info
PidFile "%[3]s/tinyproxy.pid"
Allow 127.0.0.1
`, runAs, port, dir)
	cf := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("tinyproxy config: %w", err)
	}
	pr, addr, err := startListening(ctx, port, bin, "-d", "-c", cf)
	if err != nil {
		return nil, err
	}
	return &path{name: "tinyproxy", dial: connectDialer(addr, ""), proxyURL: &url.URL{Scheme: "http", Host: addr},
		pids: []int{pr.pid()}, procs: []*proc{pr}}, nil
}

var allocatedRE = regexp.MustCompile(`Allocated port (\d+) for remote forward`)

// sshPath runs a loopback sshd with generated keys and `ssh -R 0` against it: OpenSSH's reverse
// dynamic forwarding, where sshd listens as a SOCKS proxy and the ssh client dials the targets.
func sshPath(ctx context.Context, e env) (*path, error) {
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		return nil, errNotInstalled
	}
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		return nil, errNotInstalled
	}
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		return nil, errNotInstalled
	}
	dir := filepath.Join(e.dir, "ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ssh dir: %w", err)
	}
	for _, k := range []string{"host_key", "user_key"} {
		out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "user_key.pub"))
	if err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	if os.Getuid() == 0 {
		// sshd refuses to start without its privilege separation directory.
		os.MkdirAll("/run/sshd", 0o755)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %[2]s/host_key
AuthorizedKeysFile %[2]s/authorized_keys
PidFile %[2]s/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowTcpForwarding yes
GatewayPorts no
MaxSessions 10
LogLevel ERROR
`, port, dir)
	cf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("sshd config: %w", err)
	}
	d, _, err := startProc(sshd, nil, "-D", "-e", "-f", cf)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitListening(ctx, addr, d); err != nil {
		d.stop()
		return nil, err
	}
	me, err := user.Current()
	if err != nil {
		d.stop()
		return nil, fmt.Errorf("ssh login: %w", err)
	}
	// -tt: a session with a terminal, as a user who cares about latency runs it; ssh then sets
	// TCP_NODELAY on its connection (with -N it does not, and every SOCKS exchange waits for a
	// delayed ACK: about 36 ms per tunnel).
	c, socksPort, err := startProc(sshBin, allocatedRE, "-tt", "-F", "/dev/null", "-i", filepath.Join(dir, "user_key"),
		"-p", strconv.Itoa(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=INFO",
		"-R", "127.0.0.1:0", me.Username+"@127.0.0.1", "sleep", "86400")
	if err != nil {
		d.stop()
		return nil, err
	}
	socksAddr := net.JoinHostPort("127.0.0.1", socksPort)
	dialFn, err := socksDialer(socksAddr, nil)
	if err != nil {
		c.stop()
		d.stop()
		return nil, err
	}
	return &path{name: "ssh -tt -R", dial: dialFn, proxyURL: &url.URL{Scheme: "socks5", Host: socksAddr},
		pids: []int{d.pid(), c.pid()}, providerPid: c.pid(), brokerPort: port, procs: []*proc{d, c}}, nil
}

// errNotInstalled skips a comparison path whose program is missing.
var errNotInstalled = errors.New("not installed")
