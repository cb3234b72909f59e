package e2e

// The sidecar deployment of deploy/compose.yaml, rebuilt with Linux network namespaces:
//
//	agent ns  10.213.0.1 ──veth── 10.213.0.2 (:8080)  proxy ns  10.213.0.5 ──veth── 10.213.0.6   target ns
//	(curl, git, pip, npm;          swarm-proxy proxy, the command                   192.31.196.10 (HTTP :80,
//	 firewall applied)             of compose.yaml, admin on 127.0.0.1:9090                      HTTPS :443)
//
// The proxy namespace forwards packets, so without the firewall the agent could reach the target
// directly: the test shows that it can, applies `swarm-proxy firewall --apply`, and shows that it no
// longer can. The agent's tools get their proxy configuration only from `swarm-proxy env`. The policy
// allows the target's 10.213.0.4/30. 192.31.196.10 is outside it and must be blocked because no rule
// allows it: a public address (AS112, globally reachable in the IANA registry, so not one the proxy
// refuses as special; the documentation ranges are), so the refusal is the policy's
// no_rule_matched, not private_address. It exists only on the target's veth, so its traffic never
// leaves the test's namespaces.

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// Addresses of the namespaces' private subnets (only inside namespaces the test makes).
const (
	nsAgentIP     = "10.213.0.1"
	nsProxyIP     = "10.213.0.2"    // the proxy's address on the agent side
	nsProxyFarIP  = "10.213.0.5"    // the proxy's address on the target side
	nsTargetIP    = "10.213.0.6"    // allowed by the policy
	nsOutsideIP   = "192.31.196.10" // on the target too, public, outside the policy
	nsProxyPort   = "8080"
	nsAllowedCIDR = "10.213.0.4/30"
	// IPv6 (unique local addresses): not used by the proxy, only to show the firewall rejects it too.
	nsAgentIP6    = "fd00:213:1::1"
	nsProxyIP6    = "fd00:213:1::2"
	nsProxyFarIP6 = "fd00:213:2::1"
	nsTargetIP6   = "fd00:213:2::2"
)

// requireNetns skips unless the test can make network namespaces (root on Linux, iproute2), except
// under CI, where it must run.
func requireNetns(t *testing.T) {
	t.Helper()
	var why string
	switch {
	case runtime.GOOS != "linux":
		why = "network namespaces need Linux"
	case os.Geteuid() != 0:
		why = "making network namespaces needs root"
	default:
		for _, tool := range []string{"ip", "iptables", "nft", "curl", "git", "npm"} {
			if _, err := exec.LookPath(tool); err != nil {
				why = tool + " is not installed (scripts/test.sh installs it)"
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s, and CI is set: the namespace tests must run in CI, not skip", why)
	}
	t.Skip(why)
}

// nsCounter makes names unique within the process; the pid makes them unique on the machine.
var nsCounter atomic.Int32

// netnsTopology is the three namespaces and their links.
type netnsTopology struct {
	agent, proxy, target string
}

// ipCmd runs ip (or another setup command), bounded in time, and fails the test on error.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetnsTopology makes the namespaces and links; they are removed when the test ends, also on
// failure (removing a namespace removes its veth ends).
func newNetnsTopology(t *testing.T) *netnsTopology {
	t.Helper()
	id := fmt.Sprintf("%x%x", os.Getpid()&0xfffff, nsCounter.Add(1))
	n := &netnsTopology{agent: "spa-" + id, proxy: "spp-" + id, target: "spt-" + id}
	for _, ns := range []string{n.agent, n.proxy, n.target} {
		ipCmd(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v %s", ns, err, out)
			}
		})
	}
	// veth names are at most 15 bytes.
	va, vpa, vpt, vt := "va"+id, "vpa"+id, "vpt"+id, "vt"+id
	steps := [][]string{
		{"ip", "link", "add", va, "netns", n.agent, "type", "veth", "peer", "name", vpa, "netns", n.proxy},
		{"ip", "link", "add", vpt, "netns", n.proxy, "type", "veth", "peer", "name", vt, "netns", n.target},
		{"ip", "-n", n.agent, "addr", "add", nsAgentIP + "/30", "dev", va},
		{"ip", "-n", n.proxy, "addr", "add", nsProxyIP + "/30", "dev", vpa},
		{"ip", "-n", n.proxy, "addr", "add", nsProxyFarIP + "/30", "dev", vpt},
		{"ip", "-n", n.target, "addr", "add", nsTargetIP + "/30", "dev", vt},
		{"ip", "-n", n.target, "addr", "add", nsOutsideIP + "/32", "dev", vt},
		{"ip", "-n", n.agent, "addr", "add", nsAgentIP6 + "/64", "dev", va, "nodad"},
		{"ip", "-n", n.proxy, "addr", "add", nsProxyIP6 + "/64", "dev", vpa, "nodad"},
		{"ip", "-n", n.proxy, "addr", "add", nsProxyFarIP6 + "/64", "dev", vpt, "nodad"},
		{"ip", "-n", n.target, "addr", "add", nsTargetIP6 + "/64", "dev", vt, "nodad"},
	}
	for _, l := range []struct{ ns, dev string }{{n.agent, va}, {n.proxy, vpa}, {n.proxy, vpt}, {n.target, vt},
		{n.agent, "lo"}, {n.proxy, "lo"}, {n.target, "lo"}} {
		steps = append(steps, []string{"ip", "-n", l.ns, "link", "set", l.dev, "up"})
	}
	steps = append(steps,
		[]string{"ip", "-n", n.agent, "route", "add", "default", "via", nsProxyIP},
		[]string{"ip", "-n", n.proxy, "route", "add", nsOutsideIP + "/32", "via", nsTargetIP},
		[]string{"ip", "-n", n.target, "route", "add", "default", "via", nsProxyFarIP},
		// Like a container host, the proxy namespace routes: only the firewall keeps the agent in.
		[]string{"ip", "netns", "exec", n.proxy, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		[]string{"ip", "-n", n.agent, "-6", "route", "add", "default", "via", nsProxyIP6},
		[]string{"ip", "-n", n.target, "-6", "route", "add", "default", "via", nsProxyFarIP6},
		[]string{"ip", "netns", "exec", n.proxy, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"},
	)
	for _, s := range steps {
		ipCmd(t, s...)
	}
	return n
}

// inNetns runs fn with the calling goroutine's thread in namespace ns: sockets fn opens and
// processes it starts belong to ns. The thread is moved back afterwards; if that fails it stays
// locked and dies with the goroutine.
func inNetns(t *testing.T, ns string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("open own netns: %v", err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("open netns %s: %v", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Errorf("setns back: %v", err) // the thread stays locked and is discarded
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// targetServer is the target namespace's HTTP and HTTPS server: a page, a dumb-HTTP git
// repository, a PEP 503 simple index with one wheel, and an npm registry document.
type targetServer struct {
	caFile string
	mu     sync.Mutex
	seen   map[string][]string // path -> client addresses
}

func (s *targetServer) remember(r *http.Request) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[r.URL.Path] = append(s.seen[r.URL.Path], host)
}

// reset forgets the requests seen so far.
func (s *targetServer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = map[string][]string{}
}

// clients returns the addresses that requested paths starting with prefix.
func (s *targetServer) clients(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for p, c := range s.seen {
		if strings.HasPrefix(p, prefix) {
			out = append(out, c...)
		}
	}
	return out
}

func startTargetServer(t *testing.T, ns string) *targetServer {
	t.Helper()
	dir := t.TempDir()
	s := &targetServer{seen: map[string][]string{}}

	// A git repository served by plain files (the dumb HTTP protocol).
	work := filepath.Join(dir, "work")
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "-c", "init.defaultBranch=main"}, args...)...)
		cmd.Env = cleanEnv("HOME=" + dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q", work)
	if err := os.WriteFile(filepath.Join(work, "README"), []byte("served from the target namespace\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("-C", work, "add", "README")
	git("-C", work, "commit", "-q", "-m", "first")
	git("clone", "-q", "--bare", work, filepath.Join(dir, "git", "repo.git"))
	git("-C", filepath.Join(dir, "git", "repo.git"), "update-server-info")

	wheelName, wheel := buildWheel(t)
	sum := sha256.Sum256(wheel)
	simple := fmt.Sprintf(`<!DOCTYPE html><html><body><a href="/packages/%s#sha256=%s">%s</a></body></html>`, wheelName, hex.EncodeToString(sum[:]), wheelName)
	packument := fmt.Sprintf(`{"name":"demo-pkg","dist-tags":{"latest":"1.0.0"},"versions":{"1.0.0":{"name":"demo-pkg","version":"1.0.0",`+
		`"dist":{"tarball":"http://%s/npm/demo-pkg/-/demo-pkg-1.0.0.tgz","shasum":"0000000000000000000000000000000000000000"}}},`+
		`"time":{"created":"2026-01-01T00:00:00.000Z","modified":"2026-01-01T00:00:00.000Z","1.0.0":"2026-01-01T00:00:00.000Z"}}`, nsTargetIP)

	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello from the target") })
	mux.Handle("/git/", http.StripPrefix("/git/", http.FileServer(http.Dir(filepath.Join(dir, "git")))))
	mux.HandleFunc("/simple/demo-pkg/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, simple)
	})
	mux.HandleFunc("/packages/"+wheelName, func(w http.ResponseWriter, r *http.Request) { w.Write(wheel) })
	mux.HandleFunc("/npm/demo-pkg", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, packument)
	})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.remember(r)
		mux.ServeHTTP(w, r)
	})

	cert, pemBytes := selfSigned(t, nsTargetIP, nsOutsideIP)
	s.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(s.caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	var plain, secure net.Listener
	inNetns(t, ns, func() {
		var err error
		if plain, err = net.Listen("tcp", ":80"); err != nil {
			t.Fatal(err)
		}
		if secure, err = net.Listen("tcp", ":443"); err != nil {
			plain.Close()
			t.Fatal(err)
		}
	})
	for _, l := range []net.Listener{plain, tls.NewListener(secure, &tls.Config{Certificates: []tls.Certificate{cert}})} {
		// The doctor's HTTPS check fails TLS on purpose (it does not trust the test CA): keep the
		// server's complaint about that out of the output.
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
		done := make(chan struct{})
		go func() { defer close(done); srv.Serve(l) }()
		t.Cleanup(func() { srv.Close(); <-done })
	}
	return s
}

// selfSigned makes a self-signed certificate for the given IP addresses and DNS names and returns
// it with its PEM.
func selfSigned(t *testing.T, hosts ...string) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "swarm-proxy e2e target"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// buildWheel makes a minimal pure-Python wheel, demo_pkg 1.0.
func buildWheel(t *testing.T) (string, []byte) {
	t.Helper()
	files := []struct{ name, body string }{
		{"demo_pkg/__init__.py", "VERSION = '1.0'\n"},
		{"demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\nSummary: served by the swarm-proxy e2e test\n"},
		{"demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: swarm-proxy-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, err := zw.Create(f.name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(f.body))
		sum := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	record.WriteString("demo_pkg-1.0.dist-info/RECORD,,\n")
	w, err := zw.Create("demo_pkg-1.0.dist-info/RECORD")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return "demo_pkg-1.0-py3-none-any.whl", buf.Bytes()
}

// composeProxyCommand reads the proxy command of deploy/compose.yaml and points its --policy and
// --log-file at the test's files, so the test runs the deployment's configuration.
func composeProxyCommand(t *testing.T, policyFile, logFile string) []string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Command     []string `yaml:"command"`
			Healthcheck struct {
				Test []string `yaml:"test"`
			} `yaml:"healthcheck"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	cmd := slices.Clone(c.Services["proxy"].Command)
	for i := 0; i+1 < len(cmd); i++ {
		switch cmd[i] {
		case "--policy":
			cmd[i+1] = policyFile
		case "--log-file":
			cmd[i+1] = logFile
		case "--listen":
			if _, port, _ := net.SplitHostPort(cmd[i+1]); port != nsProxyPort {
				t.Fatalf("compose.yaml proxy listens on port %s; this test expects %s", port, nsProxyPort)
			}
		}
	}
	if !slices.Contains(cmd, "--policy") || !slices.Contains(cmd, "--log-file") {
		t.Fatalf("compose.yaml proxy command %q lacks --policy or --log-file", cmd)
	}
	return cmd
}

// agentShell runs argv in the agent namespace in a shell whose only proxy configuration is the
// output of `swarm-proxy env` (none when proxyURL is empty).
func agentShell(t *testing.T, n *netnsTopology, home, proxyURL string, argv ...string) Result {
	t.Helper()
	return agentShellEnv(t, n, home, proxyURL, nil, argv...)
}

// agentShellEnv is agentShell with more environment variables (none of them proxy settings).
func agentShellEnv(t *testing.T, n *netnsTopology, home, proxyURL string, env []string, argv ...string) Result {
	t.Helper()
	script := `exec "$@"`
	if proxyURL != "" {
		script = `eval "$("$SWARM_PROXY" env --proxy "$PROXY_URL")" && exec "$@"`
	}
	args := append([]string{"netns", "exec", n.agent, "sh", "-c", script, "sh"}, argv...)
	return Run(t, append([]string{"HOME=" + home, "SWARM_PROXY=" + binary, "PROXY_URL=" + proxyURL,
		"GIT_TERMINAL_PROMPT=0", "npm_config_update_notifier=false", "npm_config_cache=" + filepath.Join(home, "npm-cache"),
		"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_CACHE_DIR=1", "PIP_CONFIG_FILE=" + os.DevNull}, env...), "ip", args...)
}

// pythonWithPip returns a Python interpreter that has pip, by absolute path (version-manager shims
// depend on HOME, which the agent's shell changes).
func pythonWithPip(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("python3", "-c", "import pip, sys; print(sys.executable)").Output()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3 with pip is needed: %v", err)
		}
		t.Skipf("python3 with pip is not installed: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// waitLog waits until the access log file has a record matching match.
func waitLog(t *testing.T, logFile, what string, match func(accesslog.Record) bool) accesslog.Record {
	t.Helper()
	var found accesslog.Record
	Eventually(t, "access log record for "+what, func() bool {
		data, err := os.ReadFile(logFile)
		if err != nil {
			return false
		}
		for _, r := range ParseRecords(t, string(data)) {
			if match(r) {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

func TestNetnsSidecar(t *testing.T) {
	requireNetns(t)
	python := pythonWithPip(t)
	n := newNetnsTopology(t)
	target := startTargetServer(t, n.target)
	home := t.TempDir()
	proxyURL := "http://" + net.JoinHostPort(nsProxyIP, nsProxyPort)

	// Without the firewall, the agent reaches the target directly through the routing proxy
	// namespace: this is what the firewall must stop.
	direct := func(host string) Result {
		return agentShell(t, n, home, "", "curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://"+host+"/hello")
	}
	// directRefused checks that the agent cannot reach the target directly over IPv4 or IPv6.
	directRefused := func(t *testing.T, rules string) {
		t.Helper()
		for _, host := range []string{nsTargetIP, "[" + nsTargetIP6 + "]"} {
			if r := direct(host); r.Code == 0 {
				t.Errorf("direct connection to %s succeeded with the %s rules applied: %s", host, rules, r.Stdout)
			} else {
				t.Logf("direct connection to %s refused (%s): exit %d %s", host, rules, r.Code, strings.TrimSpace(r.Stderr))
			}
		}
	}
	directWorks := func(t *testing.T, when string) {
		t.Helper()
		for _, host := range []string{nsTargetIP, "[" + nsTargetIP6 + "]"} {
			if r := direct(host); r.Code != 0 || !strings.Contains(r.Stdout, "hello from the target") {
				t.Fatalf("%s, a direct connection to %s should work (the namespaces route): exit %d %s", when, host, r.Code, r.Stderr)
			}
		}
	}
	directWorks(t, "before the firewall")

	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf("version: 1\nmode: enforce\nallow:\n  - name: e2e-target\n    cidr: %s\n    ports: [80, 443]\n", nsAllowedCIDR)
	if err := os.WriteFile(policyFile, []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "access.log")
	args := composeProxyCommand(t, policyFile, logFile)
	inNetns(t, n.proxy, func() { Start(t, "proxy listening", args...) })
	t.Logf("proxy in %s: %s", n.proxy, strings.Join(args, " "))

	// The compose health check, run where the container would run it.
	if r := Run(t, nil, "ip", "netns", "exec", n.proxy, binary, "health", "--url", "http://127.0.0.1:9090/healthz"); r.Code != 0 {
		t.Fatalf("swarm-proxy health in the proxy namespace: exit %d %s%s", r.Code, r.Stdout, r.Stderr)
	}

	fw := func(args ...string) Result {
		t.Helper()
		full := append([]string{"netns", "exec", n.agent, binary, "firewall", "--proxy", net.JoinHostPort(nsProxyIP, nsProxyPort), "--apply"}, args...)
		r := Run(t, nil, "ip", full...)
		if r.Code != 0 {
			t.Fatalf("firewall %v: exit %d\n%s%s", args, r.Code, r.Stdout, r.Stderr)
		}
		return r
	}
	t.Run("nftables firewall blocks direct connections", func(t *testing.T) {
		for range 2 { // applying twice is harmless
			r := fw("--format", "nftables")
			if !strings.Contains(r.Stdout, "replaced table inet swarm_proxy_egress") {
				t.Errorf("report: %s", r.Stdout)
			}
		}
		directRefused(t, "nftables")
		if r := agentShell(t, n, home, proxyURL, "curl", "-sS", "--max-time", "10", "http://"+nsTargetIP+"/hello"); r.Code != 0 {
			t.Fatalf("through the proxy with nftables rules: exit %d %s", r.Code, r.Stderr)
		}
		ipCmd(t, "ip", "netns", "exec", n.agent, "nft", "delete", "table", "inet", "swarm_proxy_egress")
		directWorks(t, "after removing the nftables table")
	})

	// From here on the iptables rules stay applied.
	first, second := fw(), fw()
	if !strings.Contains(first.Stdout, "inserted a jump") || !strings.Contains(second.Stdout, "OUTPUT already jumps") {
		t.Errorf("iptables reports:\n%s\n%s", first.Stdout, second.Stdout)
	}
	t.Logf("firewall --apply (second run):\n%s", second.Stdout)
	directRefused(t, "iptables")
	if t.Failed() {
		t.FailNow()
	}

	target.reset() // what the target saw so far came from the direct connections above
	allowed := func(method, path string, port int) func(accesslog.Record) bool {
		return func(r accesslog.Record) bool {
			return r.Host == nsTargetIP && r.Port == port && r.Method == method && strings.HasPrefix(r.Path, path) && r.Decision == accesslog.DecisionAllow
		}
	}
	tools := []struct {
		name  string
		argv  []string
		out   string // in stdout on success
		match func(accesslog.Record) bool
		path  string // what the target saw
	}{
		{"curl http", []string{"curl", "-sS", "--max-time", "20", "http://" + nsTargetIP + "/hello"}, "hello from the target", allowed("GET", "/hello", 80), "/hello"},
		{"curl https", []string{"curl", "-sS", "--max-time", "20", "--cacert", target.caFile, "https://" + nsTargetIP + "/hello"}, "hello from the target", allowed("CONNECT", "", 443), "/hello"},
		{"git clone", []string{"git", "clone", "-q", "http://" + nsTargetIP + "/git/repo.git", filepath.Join(home, "clone")}, "", allowed("GET", "/git/repo.git/info/refs", 80), "/git/repo.git/"},
		{"pip download", []string{python, "-m", "pip", "download", "--no-deps", "--index-url", "http://" + nsTargetIP + "/simple/", "--trusted-host", nsTargetIP, "-d", filepath.Join(home, "wheels"), "demo-pkg"}, "Saved", allowed("GET", "/simple/demo-pkg/", 80), "/packages/"},
		{"npm view", []string{"npm", "view", "demo-pkg", "version", "--registry", "http://" + nsTargetIP + "/npm/"}, "1.0.0", allowed("GET", "/npm/demo-pkg", 80), "/npm/demo-pkg"},
	}
	for _, tt := range tools {
		t.Run(tt.name, func(t *testing.T) {
			r := agentShell(t, n, home, proxyURL, tt.argv...)
			if r.Code != 0 || !strings.Contains(r.Stdout+r.Stderr, tt.out) {
				t.Fatalf("exit %d, want success with %q\nstdout: %s\nstderr: %s", r.Code, tt.out, r.Stdout, r.Stderr)
			}
			rec := waitLog(t, logFile, tt.name, tt.match)
			t.Logf("logged: %s %s:%d%s %d %s", rec.Method, rec.Host, rec.Port, rec.Path, rec.Status, rec.Decision)
			for _, c := range target.clients(tt.path) {
				if c != nsProxyFarIP {
					t.Errorf("the target saw %s from %s, want only the proxy %s", tt.path, c, nsProxyFarIP)
				}
			}
			if len(target.clients(tt.path)) == 0 {
				t.Errorf("the target never saw %s", tt.path)
			}
		})
	}
	t.Run("connect as ssh ProxyCommand", func(t *testing.T) {
		// ssh -o ProxyCommand='swarm-proxy connect --proxy URL %h:%p' carries SSH over stdin and
		// stdout the same way; a raw HTTP request stands in for SSH here.
		const req = `printf 'GET /hello HTTP/1.0\r\n\r\n' | "$SWARM_PROXY" connect --proxy "$PROXY_URL" "$0"`
		r := agentShell(t, n, home, proxyURL, "sh", "-c", req, nsTargetIP+":80")
		if r.Code != 0 || !strings.Contains(r.Stdout, "hello from the target") {
			t.Fatalf("connect to the target: exit %d\nstdout: %s\nstderr: %s", r.Code, r.Stdout, r.Stderr)
		}
		waitLog(t, logFile, "connect", func(r accesslog.Record) bool {
			return r.Method == "CONNECT" && r.Host == nsTargetIP && r.Port == 80 && r.Decision == accesslog.DecisionAllow
		})
		r = agentShell(t, n, home, proxyURL, "sh", "-c", req, nsOutsideIP+":22")
		if r.Code == 0 || !strings.Contains(r.Stderr, nsOutsideIP) {
			t.Fatalf("connect to a host outside the policy: exit %d, want a refusal naming it\nstderr: %s", r.Code, r.Stderr)
		}
		t.Logf("connect shows: %s", strings.TrimSpace(r.Stderr))
	})
	if _, err := os.Stat(filepath.Join(home, "clone", "README")); err != nil {
		t.Errorf("git clone did not check out README: %v", err)
	}

	blocked := []struct {
		name string
		argv []string
		want string // the proxy's error as the tool shows it
	}{
		{"curl http", []string{"curl", "-sS", "--max-time", "20", "-f", "http://" + nsOutsideIP + "/hello"}, "403"},
		{"curl http body", []string{"curl", "-sS", "--max-time", "20", "http://" + nsOutsideIP + "/hello"}, "swarm-proxy blocked " + nsOutsideIP + ":80"},
		{"curl http reason", []string{"curl", "-sS", "--max-time", "20", "http://" + nsOutsideIP + "/hello"}, "reason: no allow rule matches " + nsOutsideIP + ":80 (mode: enforce)"},
		// curl hides a refused CONNECT's body but shows its headers with -v.
		{"curl https header", []string{"curl", "-sS", "-v", "--max-time", "20", "--cacert", target.caFile, "https://" + nsOutsideIP + "/hello"}, "code=no_rule_matched"},
		{"curl https", []string{"curl", "-sS", "--max-time", "20", "--cacert", target.caFile, "https://" + nsOutsideIP + "/hello"}, "403"},
		{"git clone", []string{"git", "clone", "-q", "http://" + nsOutsideIP + "/git/repo.git", filepath.Join(home, "blocked-clone")}, "403"},
		// pip hides an index page's error ("from versions: none"), but shows it for a file.
		{"pip download", []string{python, "-m", "pip", "download", "--no-deps", "--retries", "0", "-d", filepath.Join(home, "wheels2"), "http://" + nsOutsideIP + "/packages/demo_pkg-1.0-py3-none-any.whl"}, "HTTP error 403"},
		{"npm view", []string{"npm", "view", "demo-pkg", "version", "--fetch-retries", "0", "--registry", "http://" + nsOutsideIP + "/npm/"}, "403"},
	}
	for _, tt := range blocked {
		t.Run("blocked "+tt.name, func(t *testing.T) {
			r := agentShell(t, n, home, proxyURL, tt.argv...)
			out := r.Stdout + r.Stderr
			if !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want the proxy's error %q in the output:\n%s", r.Code, tt.want, out)
			}
			if !strings.HasPrefix(tt.name, "curl http ") && r.Code == 0 {
				t.Fatalf("exit 0 for a blocked host:\n%s", out)
			}
			t.Logf("%s shows: %s", tt.argv[0], firstLineWith(out, tt.want))
		})
	}
	rec := waitLog(t, logFile, "the blocked host", func(r accesslog.Record) bool {
		return r.Host == nsOutsideIP && r.Method == "GET" && r.Port == 80 && r.Decision == accesslog.DecisionDeny && r.Status == http.StatusForbidden
	})
	t.Logf("blocked: %s %s:%d rule=%q reason=%q error=%q", rec.Method, rec.Host, rec.Port, rec.Rule, rec.Reason, rec.Error)
	if rec.Error != "no_rule_matched" {
		t.Errorf("the blocked host's record has error %q, want no_rule_matched (enforce mode, no rule allows it)", rec.Error)
	}
	waitLog(t, logFile, "the blocked CONNECT", func(r accesslog.Record) bool {
		return r.Host == nsOutsideIP && r.Method == "CONNECT" && r.Port == 443 && r.Decision == accesslog.DecisionDeny && r.Error == "no_rule_matched"
	})
	if c := target.clients(""); slices.Contains(c, nsAgentIP) {
		t.Errorf("the target saw the agent's own address %s: traffic bypassed the proxy", nsAgentIP)
	}

	t.Run("doctor", func(t *testing.T) {
		// The agent runs without CAP_NET_RAW and CAP_NET_ADMIN, as deploy/compose.yaml starts it:
		// setpriv drops them from the bounding set, so root's doctor holds neither.
		doctor := []string{"setpriv", "--bounding-set", "-net_raw,-net_admin", binary, "doctor"}
		ok := agentShellEnv(t, n, home, proxyURL, []string{"SSL_CERT_FILE=" + target.caFile}, append(doctor, "--timeout", "5s",
			"--url", "http://"+nsTargetIP+"/hello", "--url", "https://"+nsTargetIP+"/hello", "--expect", "allow")...)
		if ok.Code != 0 || !strings.Contains(ok.Stdout, "ok    request http://"+nsTargetIP+"/hello: allowed (200)") ||
			!strings.Contains(ok.Stdout, "ok    request https://"+nsTargetIP+"/hello: allowed (200)") {
			t.Errorf("doctor --expect allow: exit %d\n%s%s", ok.Code, ok.Stdout, ok.Stderr)
		}
		t.Logf("doctor inside the agent namespace:\n%s", ok.Stdout)
		if !strings.Contains(ok.Stdout, "ok    capabilities: neither CAP_NET_RAW nor CAP_NET_ADMIN") {
			t.Errorf("doctor without the capabilities does not say so:\n%s", ok.Stdout)
		}
		deny := agentShell(t, n, home, proxyURL, append(doctor, "--timeout", "5s", "--url", "http://"+nsOutsideIP+"/", "--expect", "deny")...)
		if deny.Code != 0 || !strings.Contains(deny.Stdout, "blocked by policy: deny") {
			t.Errorf("doctor --expect deny: exit %d\n%s%s", deny.Code, deny.Stdout, deny.Stderr)
		}
		wrong := agentShell(t, n, home, proxyURL, append(doctor, "--timeout", "5s", "--url", "http://"+nsOutsideIP+"/", "--expect", "allow")...)
		if wrong.Code != 1 || !strings.Contains(wrong.Stdout, "fail  request http://"+nsOutsideIP+"/") {
			t.Errorf("doctor --expect allow on a blocked host: exit %d, want 1\n%s%s", wrong.Code, wrong.Stdout, wrong.Stderr)
		}
		bare := agentShell(t, n, home, "", append(doctor, "--timeout", "5s")...)
		if bare.Code != 1 || !strings.Contains(bare.Stdout, "fail  HTTP_PROXY/http_proxy: not set") {
			t.Errorf("doctor without the variables: exit %d, want 1\n%s", bare.Code, bare.Stdout)
		}
		// An agent that kept CAP_NET_RAW (root with Docker's defaults) is a failed check with the fix.
		raw := agentShell(t, n, home, proxyURL, binary, "doctor", "--timeout", "5s")
		if raw.Code != 1 || !strings.Contains(raw.Stdout, "fail  capabilities: the agent holds CAP_NET_RAW") || !strings.Contains(raw.Stdout, "cap_drop: [ALL]") {
			t.Errorf("doctor as root with CAP_NET_RAW: exit %d, want 1 and a failed capabilities check\n%s", raw.Code, raw.Stdout)
		}
	})
}

// firstLineWith returns the first line of s containing sub.
func firstLineWith(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// Addresses of the shared-namespace (Kubernetes pod) topology.
const (
	podIP       = "10.213.1.1"
	podTargetIP = "10.213.1.2"
	podProxyUID = 65532 // the user of deploy/Dockerfile
)

// TestNetnsSharedNamespaceSidecar is the Kubernetes layout: the proxy shares the agent's network
// namespace, listens on 127.0.0.1 and runs as its own user, which --allow-uid lets out while the
// agent's own connections are refused.
func TestNetnsSharedNamespaceSidecar(t *testing.T) {
	requireNetns(t)
	id := fmt.Sprintf("%x%x", os.Getpid()&0xfffff, nsCounter.Add(1))
	pod, tgt := "sppod-"+id, "sptgt-"+id
	for _, ns := range []string{pod, tgt} {
		ipCmd(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	vp, vt := "vp"+id, "vt"+id
	for _, s := range [][]string{
		{"ip", "link", "add", vp, "netns", pod, "type", "veth", "peer", "name", vt, "netns", tgt},
		{"ip", "-n", pod, "addr", "add", podIP + "/30", "dev", vp},
		{"ip", "-n", tgt, "addr", "add", podTargetIP + "/30", "dev", vt},
		{"ip", "-n", pod, "link", "set", vp, "up"}, {"ip", "-n", pod, "link", "set", "lo", "up"},
		{"ip", "-n", tgt, "link", "set", vt, "up"}, {"ip", "-n", tgt, "link", "set", "lo", "up"},
	} {
		ipCmd(t, s...)
	}
	startTargetServer(t, tgt)

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(fmt.Sprintf("mode: enforce\nallow:\n  - cidr: %s/32\n    ports: [80]\n", podTargetIP)), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "access.log")
	startProxyAs(t, pod, podProxyUID, "proxy listening", "proxy", "--listen", "127.0.0.1:8080", "--admin-listen", "127.0.0.1:9090",
		"--policy", policyFile, "--log-file", logFile)

	home := t.TempDir()
	run := func(proxyURL string, argv ...string) Result {
		script := `exec "$@"`
		if proxyURL != "" {
			script = `eval "$("$SWARM_PROXY" env --proxy "$PROXY_URL")" && exec "$@"`
		}
		return Run(t, []string{"HOME=" + home, "SWARM_PROXY=" + binary, "PROXY_URL=" + proxyURL}, "ip",
			append([]string{"netns", "exec", pod, "sh", "-c", script, "sh"}, argv...)...)
	}
	viaProxy := func() Result {
		return run("http://127.0.0.1:8080", "curl", "-sS", "--max-time", "10", "http://"+podTargetIP+"/hello")
	}
	direct := func() Result {
		return run("", "curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://"+podTargetIP+"/hello")
	}
	firewall := func(args ...string) {
		t.Helper()
		r := Run(t, nil, "ip", append([]string{"netns", "exec", pod, binary, "firewall", "--proxy", "127.0.0.1:8080", "--apply"}, args...)...)
		if r.Code != 0 {
			t.Fatalf("firewall %v: exit %d %s%s", args, r.Code, r.Stdout, r.Stderr)
		}
	}

	// Without --allow-uid the rules also refuse the proxy's own connections: the proxy answers 502.
	firewall("--format", "nftables")
	r := viaProxy()
	if strings.Contains(r.Stdout, "hello from the target") {
		t.Fatalf("the proxy got out without --allow-uid: the uid rule is not what lets it out")
	}
	t.Logf("without --allow-uid the proxy cannot get out either: %s", firstLineWith(r.Stdout+r.Stderr, ""))

	firewall("--format", "nftables", "--allow-uid", fmt.Sprint(podProxyUID))
	if r := viaProxy(); r.Code != 0 || !strings.Contains(r.Stdout, "hello from the target") {
		t.Fatalf("through the proxy with --allow-uid: exit %d %s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := direct(); r.Code == 0 {
		t.Fatalf("the agent (root) got out directly: %s", r.Stdout)
	} else {
		t.Logf("direct connection refused: %s", strings.TrimSpace(r.Stderr))
	}
	// The proxy's admin port on the shared loopback is the proxy's own: the agent is refused, unless
	// --admin-port 0 says it may reach it.
	admin := func() Result {
		return run("", "curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://127.0.0.1:9090/healthz")
	}
	if r := admin(); r.Code == 0 {
		t.Fatalf("the agent reached the proxy's admin port: %s", r.Stdout)
	}
	firewall("--format", "nftables", "--allow-uid", fmt.Sprint(podProxyUID), "--admin-port", "0")
	if r := admin(); r.Code != 0 {
		t.Fatalf("with --admin-port 0 the admin port is not reachable, so the refusal above proves nothing: %s", r.Stderr)
	}
	// The iptables rules refuse it too (the nftables table above, which lets it through, stays).
	firewall("--format", "iptables", "--allow-uid", fmt.Sprint(podProxyUID))
	if r := admin(); r.Code == 0 {
		t.Fatalf("the agent reached the proxy's admin port (iptables): %s", r.Stdout)
	}
	rec := waitLog(t, logFile, "the pod's request", func(r accesslog.Record) bool {
		return r.Host == podTargetIP && r.Path == "/hello" && r.Status == http.StatusOK
	})
	t.Logf("logged: %s %s:%d%s %d from %s", rec.Method, rec.Host, rec.Port, rec.Path, rec.Status, rec.Client)
}
