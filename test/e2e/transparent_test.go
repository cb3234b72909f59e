package e2e

// Transparent capture and the DNS guard, with the layout of a sidecar that shares the agent's
// network namespace (docs/agents.md):
//
//	agent ns  10.213.2.1 ──veth── 10.213.2.2   allowed.test (HTTP :80, HTTPS :443)
//	  swarm-proxy proxy as uid 65532:           10.213.2.3   denied.test, and a host no name
//	  --listen 127.0.0.1:8080                                 allowed by the policy (HTTP, HTTPS)
//	  --transparent-listen :15001                10.213.2.53  the test's DNS server (:53)
//	  --dns-listen :15053                       target ns
//	  firewall --transparent applied;
//	  curl, python, openssl, dig with no proxy variables
//
// The agent's tools have no proxy configuration: the firewall redirects their TCP to the
// transparent listener and their DNS to the guard. The target namespace has no route anywhere
// else, so no packet leaves the test's namespaces.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

const (
	tpAgentIP   = "10.213.2.1"
	tpAllowedIP = "10.213.2.2"
	tpOtherIP   = "10.213.2.3"
	tpDNSIP     = "10.213.2.53"
	tpProxyUID  = 65532
)

// tpZone is the test DNS server's data.
var tpZone = map[string]string{
	"allowed.test.":      tpAllowedIP,
	"www.allowed.test.":  tpAllowedIP,
	"denied.test.":       tpOtherIP,
	"elsewhere.example.": tpOtherIP,
}

// tpRecord is an access-log line of either kind: a request (status is a number) or a DNS query
// (status is the response code's name).
type tpRecord struct {
	Method      string          `json:"method"`
	Host        string          `json:"host"`
	Port        int             `json:"port"`
	Path        string          `json:"path"`
	Status      json.RawMessage `json:"status"`
	Decision    string          `json:"decision"`
	Rule        string          `json:"rule"`
	Reason      string          `json:"reason"`
	Error       string          `json:"error"`
	Transparent bool            `json:"transparent"`
	OriginalDst string          `json:"original_dst"`
	DNSType     string          `json:"dns_type"`
	Answers     []string        `json:"answers"`
	Flags       []string        `json:"flags"`
	Client      string          `json:"client"`
}

func tpWaitLog(t *testing.T, logFile, what string, match func(tpRecord) bool) tpRecord {
	t.Helper()
	var found tpRecord
	Eventually(t, "access log record for "+what, func() bool {
		data, err := os.ReadFile(logFile)
		if err != nil {
			return false
		}
		for _, line := range strings.Split(string(data), "\n") {
			var r tpRecord
			if json.Unmarshal([]byte(line), &r) == nil && match(r) {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// tpServe starts, in namespace ns, HTTP on ip:80 and HTTPS on ip:443 that answer with who they are.
func tpServe(t *testing.T, ns, ip, who string, cert tls.Certificate) {
	t.Helper()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s answers %s%s\n", who, r.Host, r.URL.Path)
	})
	var plain, secure net.Listener
	inNetns(t, ns, func() {
		var err error
		if plain, err = net.Listen("tcp", ip+":80"); err != nil {
			t.Fatal(err)
		}
		if secure, err = net.Listen("tcp", ip+":443"); err != nil {
			t.Fatal(err)
		}
	})
	for _, l := range []net.Listener{plain, tls.NewListener(secure, &tls.Config{Certificates: []tls.Certificate{cert}})} {
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
		done := make(chan struct{})
		go func() { defer close(done); srv.Serve(l) }()
		t.Cleanup(func() { srv.Close(); <-done })
	}
}

// tpDNS starts the test's DNS server on tpDNSIP:53 (UDP and TCP) in namespace ns.
func tpDNS(t *testing.T, ns string) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		q := r.Question[0]
		ip, ok := tpZone[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR(fmt.Sprintf("%s 300 IN A %s", q.Name, ip))
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	inNetns(t, ns, func() {
		var err error
		if pc, err = net.ListenPacket("udp", tpDNSIP+":53"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", tpDNSIP+":53"); err != nil {
			t.Fatal(err)
		}
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { defer close(done); s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { s.Shutdown(); <-done })
	}
}

// startProxyAs runs the binary in namespace ns as uid through `ip netns exec` (so that it reads the
// namespace's /etc/netns/NS/resolv.conf) and setpriv, and waits for readyMsg on its stderr.
func startProxyAs(t *testing.T, ns string, uid int, readyMsg string, args ...string) {
	t.Helper()
	startProxyAsEnv(t, ns, uid, nil, readyMsg, args...)
}

// startProxyAsEnv is startProxyAs with env added to the process's environment; it returns a function
// that gives what the process wrote to stderr so far.
func startProxyAsEnv(t *testing.T, ns string, uid int, env []string, readyMsg string, args ...string) (stderr func() string) {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "swarm-proxy")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprint(uid)
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "setpriv", "--reuid", id, "--regid", id, "--clear-groups", bin}, args...)...)
	cmd.Env = cleanEnv(env...)
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out bytes.Buffer
	ready, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(errPipe)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), readyMsg) {
				once.Do(func() { close(ready) })
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("proxy stderr:\n%s", out.String())
			mu.Unlock()
		}
	})
	select {
	case <-ready:
	case <-done:
		t.Fatalf("proxy exited before it was ready:\n%s", out.String())
	case <-time.After(waitTimeout):
		t.Fatalf("proxy not ready after %s", waitTimeout)
	}
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		return out.String()
	}
}

func requireCaptureTools(t *testing.T) {
	t.Helper()
	requireNetns(t)
	for _, tool := range []string{"dig", "openssl", "python3", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (scripts/test.sh installs it) and CI is set", tool)
			}
			t.Skip(tool + " is not installed (scripts/test.sh installs it)")
		}
	}
}

func TestTransparentCapture(t *testing.T) {
	requireCaptureTools(t)
	for _, format := range []string{"nftables", "iptables"} {
		t.Run(format, func(t *testing.T) { testTransparentCapture(t, format) })
	}
}

// tpNamespaces makes the agent and target namespaces of a capture test, joined by a veth pair: the
// agent at tpAgentIP with a default route to the target, the target at tpAllowedIP, tpOtherIP,
// tpDNSIP and extra. A resolver given for a namespace becomes its /etc/netns resolv.conf, which
// `ip netns exec` shows the processes run there.
func tpNamespaces(t *testing.T, agentResolver, targetResolver string, extra ...string) (agent, tgt string) {
	t.Helper()
	id := fmt.Sprintf("%x%x", os.Getpid()&0xfffff, nsCounter.Add(1))
	agent, tgt = "spca-"+id, "spct-"+id
	for ns, resolver := range map[string]string{agent: agentResolver, tgt: targetResolver} {
		ipCmd(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		if resolver == "" {
			continue
		}
		etc := filepath.Join("/etc/netns", ns)
		if err := os.MkdirAll(etc, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(etc) })
		if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+resolver+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	va, vt := "va"+id, "vt"+id
	cmds := [][]string{
		{"ip", "link", "add", va, "netns", agent, "type", "veth", "peer", "name", vt, "netns", tgt},
		{"ip", "-n", agent, "addr", "add", tpAgentIP + "/24", "dev", va},
	}
	for _, ip := range append([]string{tpAllowedIP, tpOtherIP, tpDNSIP}, extra...) {
		cmds = append(cmds, []string{"ip", "-n", tgt, "addr", "add", ip + "/24", "dev", vt})
	}
	cmds = append(cmds,
		[]string{"ip", "-n", agent, "link", "set", va, "up"}, []string{"ip", "-n", agent, "link", "set", "lo", "up"},
		[]string{"ip", "-n", tgt, "link", "set", vt, "up"}, []string{"ip", "-n", tgt, "link", "set", "lo", "up"},
		[]string{"ip", "-n", agent, "route", "add", "default", "via", tpAllowedIP})
	for _, c := range cmds {
		ipCmd(t, c...)
	}
	return agent, tgt
}

func testTransparentCapture(t *testing.T, format string) {
	// `ip netns exec` shows the agent's tools and the proxy this resolv.conf. The tools' queries
	// go to the guard whatever it names (the firewall redirects port 53, loopback included); the
	// proxy's own (uid 65532, not redirected) find nothing on 127.0.0.1:53, so every name the
	// transparent listener accepts was checked against the guard's answers to the client.
	agent, tgt := tpNamespaces(t, "127.0.0.1", "")
	cert, certPEM := selfSigned(t, "allowed.test", "www.allowed.test", "denied.test")
	tpServe(t, tgt, tpAllowedIP, "allowed", cert)
	tpServe(t, tgt, tpOtherIP, "other", cert)
	tpDNS(t, tgt)

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	policyFile := filepath.Join(dir, "policy.yaml")
	logFile := filepath.Join(dir, "access.log")
	// The test's servers are on private addresses, which the proxy refuses unless a cidr rule
	// covers them; 10.213.2.3 is covered too, so that only the name check refuses allowed.test there.
	policyYAML := fmt.Sprintf(`mode: enforce
allow:
  - host: allowed.test
  - host: "*.allowed.test"
  - cidr: %s/32
    ports: [80, 443]
  - cidr: %s/32
    ports: [80, 443]
deny:
  - host: denied.test
`, tpAllowedIP, tpOtherIP)
	for f, content := range map[string][]byte{caFile: certPEM, policyFile: []byte(policyYAML)} {
		if err := os.WriteFile(f, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startProxyAs(t, agent, tpProxyUID, "proxy listening", "proxy", "--listen", "127.0.0.1:8080", "--admin-listen", "",
		"--transparent-listen", "[::]:15001", "--dns-listen", "[::]:15053", "--dns-upstream", tpDNSIP+":53",
		"--policy", policyFile, "--log-file", logFile)

	run := func(argv ...string) Result {
		return Run(t, []string{"HOME=" + dir}, "ip", append([]string{"netns", "exec", agent}, argv...)...)
	}
	// Before the rules, the agent reaches the target directly (the proxy sees nothing).
	if r := run("curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://"+tpAllowedIP+"/before"); r.Code != 0 {
		t.Fatalf("the agent cannot reach the target even without the rules: %s", r.Stderr)
	}
	fwArgs := []string{binary, "firewall", "--transparent", "--proxy-port", "15001", "--dns-port", "15053",
		"--allow-uid", fmt.Sprint(tpProxyUID), "--format", format, "--apply"}
	if format == "nftables" {
		// One of the two runs has the agent's users on the capture route: every check below then
		// also shows that nothing breaks with it.
		fwArgs = append(fwArgs, "--capture-route")
	}
	fw := run(fwArgs...)
	if fw.Code != 0 {
		t.Fatalf("firewall --apply: exit %d\n%s%s", fw.Code, fw.Stdout, fw.Stderr)
	}
	if format == "nftables" && !strings.Contains(fw.Stdout, "ip -4: the agent's users (2 uid ranges, all but --allow-uid) route by table 21328") {
		t.Fatalf("firewall --apply --capture-route did not report the capture route:\n%s", fw.Stdout)
	}
	t.Logf("firewall --apply:\n%s", fw.Stdout)

	t.Run("curl https to an allowed name", func(t *testing.T) {
		r := run("curl", "-sS", "--max-time", "20", "--noproxy", "*", "--cacert", caFile, "https://allowed.test/hello")
		if r.Code != 0 || r.Stdout != "allowed answers allowed.test/hello\n" {
			t.Fatalf("exit %d\nstdout: %q\nstderr: %s", r.Code, r.Stdout, r.Stderr)
		}
		dnsRec := tpWaitLog(t, logFile, "the lookup", func(r tpRecord) bool { return r.Method == "DNS" && r.Host == "allowed.test" && r.DNSType == "A" })
		if string(dnsRec.Status) != `"NOERROR"` || !slices.Equal(dnsRec.Answers, []string{tpAllowedIP}) || dnsRec.Decision != "allow" ||
			dnsRec.Rule != "allow#1" || dnsRec.Client != "127.0.0.1" { // the query went to the resolver on loopback
			t.Errorf("DNS record %+v", dnsRec)
		}
		rec := tpWaitLog(t, logFile, "the tunnel", func(r tpRecord) bool { return r.Host == "allowed.test" && r.Port == 443 && r.Transparent })
		if rec.Decision != "allow" || rec.OriginalDst != tpAllowedIP+":443" || rec.Method != "CONNECT" || rec.Client != tpAgentIP {
			t.Errorf("record %+v", rec)
		}
		t.Logf("records: DNS %+v\ntunnel %+v", dnsRec, rec)
	})
	t.Run("denied name", func(t *testing.T) {
		r := run("curl", "-sS", "--max-time", "20", "--noproxy", "*", "--cacert", caFile, "https://denied.test/")
		if r.Code == 0 || strings.Contains(r.Stdout, "answers") {
			t.Fatalf("exit %d: %s", r.Code, r.Stdout)
		}
		t.Logf("curl shows: %s", strings.TrimSpace(r.Stderr))
		tpWaitLog(t, logFile, "the refused lookup", func(r tpRecord) bool {
			return r.Method == "DNS" && r.Host == "denied.test" && string(r.Status) == `"REFUSED"` && r.Error == "denied_by_rule"
		})
		// Given the address by other means, the connection is refused on its name.
		r = run("curl", "-sS", "--max-time", "20", "--noproxy", "*", "--cacert", caFile, "--resolve", "denied.test:443:"+tpOtherIP, "https://denied.test/")
		if r.Code == 0 || strings.Contains(r.Stdout, "answers") {
			t.Fatalf("with --resolve: exit %d: %s", r.Code, r.Stdout)
		}
		rec := tpWaitLog(t, logFile, "the refused tunnel", func(r tpRecord) bool { return r.Host == "denied.test" && r.Transparent })
		if rec.Decision != "deny" || rec.Error != "denied_by_rule" || rec.Rule != "deny#1" {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("raw socket HTTP decided by Host", func(t *testing.T) {
		const script = `import socket, sys
host, ip = sys.argv[1], socket.gethostbyname(sys.argv[2])
s = socket.create_connection((ip, 80), timeout=20)
s.sendall(("GET /raw HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode(errors="replace"))
`
		r := run("python3", "-c", script, "www.allowed.test", "www.allowed.test")
		if r.Code != 0 || !strings.HasPrefix(r.Stdout, "HTTP/1.1 200") || !strings.Contains(r.Stdout, "allowed answers www.allowed.test/raw") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		rec := tpWaitLog(t, logFile, "the raw request", func(r tpRecord) bool { return r.Path == "/raw" && r.Host == "www.allowed.test" })
		if !rec.Transparent || rec.Method != "GET" || rec.OriginalDst != tpAllowedIP+":80" || rec.Rule != "allow#3" { // the cidr rule that lets a private address be dialed decides
			t.Errorf("record %+v", rec)
		}
		// The same raw client naming the denied host at its address gets the proxy's 403.
		r = run("python3", "-c", strings.Replace(script, "gethostbyname(sys.argv[2])", "sys.argv[2]", 1), "denied.test", tpOtherIP)
		if !strings.HasPrefix(r.Stdout, "HTTP/1.1 403") || !strings.Contains(r.Stdout, "denied.test") || strings.Contains(r.Stdout, "other answers") {
			t.Fatalf("denied Host: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		t.Logf("the denied raw request got: %s", firstLineWith(r.Stdout, "HTTP/1.1"))
	})
	t.Run("openssl SNI of an allowed name to another address", func(t *testing.T) {
		cmd := exec.Command("ip", "netns", "exec", agent, "openssl", "s_client", "-connect", tpOtherIP+":443", "-servername", "allowed.test", "-CAfile", caFile)
		cmd.Stdin = strings.NewReader("")
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		go func() { <-ctx.Done(); cmd.Process.Kill() }()
		out, _ := cmd.CombinedOutput()
		if strings.Contains(string(out), "Server certificate") || !strings.Contains(string(out), "no peer certificate available") || !strings.Contains(string(out), "alert") {
			t.Fatalf("openssl got through or saw no alert:\n%s", out)
		}
		t.Logf("openssl shows: %s", firstLineWith(string(out), "alert"))
		rec := tpWaitLog(t, logFile, "the mismatch", func(r tpRecord) bool { return r.Error == accesslog.ErrorSNIMismatch })
		if rec.Host != "allowed.test" || rec.OriginalDst != tpOtherIP+":443" || rec.Decision != "deny" || !rec.Transparent {
			t.Errorf("record %+v", rec)
		}
		t.Logf("record: %+v", rec)
	})
	t.Run("dig", func(t *testing.T) {
		r := run("dig", "+time=5", "+tries=1", "denied.test")
		if !strings.Contains(r.Stdout, "status: REFUSED") {
			t.Fatalf("dig denied.test:\n%s", r.Stdout)
		}
		long := strings.Repeat("a", 60) + ".allowed.test"
		r = run("dig", "+time=5", "+tries=1", long)
		if !strings.Contains(r.Stdout, "status: REFUSED") {
			t.Fatalf("dig %s:\n%s", long, r.Stdout)
		}
		rec := tpWaitLog(t, logFile, "the flagged lookup", func(r tpRecord) bool { return r.Host == long })
		if !slices.Contains(rec.Flags, "dns_suspicious") || rec.Decision != "deny" || rec.Error != "dns_suspicious" {
			t.Errorf("record %+v", rec)
		}
		r = run("dig", "+tcp", "+time=5", "+tries=1", "allowed.test")
		if !strings.Contains(r.Stdout, "status: NOERROR") || !strings.Contains(r.Stdout, tpAllowedIP) {
			t.Fatalf("dig +tcp allowed.test:\n%s", r.Stdout)
		}
	})
	t.Run("the explicit proxy keeps working", func(t *testing.T) {
		r := run("curl", "-sS", "--max-time", "20", "-x", "http://127.0.0.1:8080", "http://"+tpAllowedIP+"/explicit")
		if r.Code != 0 || r.Stdout != "allowed answers "+tpAllowedIP+"/explicit\n" {
			t.Fatalf("exit %d %q %s", r.Code, r.Stdout, r.Stderr)
		}
		rec := tpWaitLog(t, logFile, "the explicit request", func(r tpRecord) bool { return r.Path == "/explicit" })
		if rec.Transparent || rec.Decision != "allow" {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("doctor", func(t *testing.T) {
		r := run(binary, "doctor", "--timeout", "5s")
		line := firstLineWith(r.Stdout, "capture:")
		if !strings.HasPrefix(line, "ok    capture: captured") {
			t.Fatalf("doctor in the captured namespace without variables:\n%s%s", r.Stdout, r.Stderr)
		}
		// Without the capture route doctor says what it would change; with it, it says nothing.
		if hint := "its segments are 1448 bytes, sized by the route it dialed: `swarm-proxy firewall --transparent --capture-route`"; strings.Contains(line, hint) != (format == "iptables") {
			t.Errorf("doctor's capture line, format %s (capture route: %v): %s", format, format == "nftables", line)
		}
		t.Logf("doctor: %s", line)
	})
	t.Run("logs domains", func(t *testing.T) {
		r := Run(t, nil, binary, "logs", "domains", logFile)
		if r.Code != 0 || !strings.Contains(r.Stdout, "DNS LOOKUPS") || !strings.Contains(firstLineWith(r.Stdout, strings.Repeat("a", 60)), "looked up only") {
			t.Fatalf("exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		t.Logf("logs domains:\n%s", r.Stdout)
		raw, _ := os.ReadFile(logFile)
		t.Logf("access log:\n%s", raw)
	})
}

// TestTransparentCaptureBroker is broker mode: the worker's sidecar has a session ticket instead of
// a route out, so its captured connections and its DNS guard's queries (over TCP) go through the
// broker and the session's provider. The broker and the provider run in the target namespace.
func TestTransparentCaptureBroker(t *testing.T) {
	requireCaptureTools(t)
	const brokerIP = "10.213.2.4"
	agent, tgt := tpNamespaces(t, tpDNSIP, tpDNSIP, brokerIP)
	cert, certPEM := selfSigned(t, "allowed.test")
	tpServe(t, tgt, tpAllowedIP, "allowed", cert)
	tpDNS(t, tgt)

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", string(certPEM), 0o644)
	secret := write("secret", "e2e-secret-0123456789-0123456789-0123456789\n", 0o600)
	brokerPolicy := write("broker-policy.yaml", "mode: enforce\nallow:\n  - host: allowed.test\n  - cidr: 10.213.2.0/24\n    ports: [53, 443]\n", 0o644)
	sidecarPolicy := write("sidecar-policy.yaml", "mode: enforce\nallow:\n  - host: allowed.test\n  - cidr: 10.213.2.0/24\n    ports: [443]\n", 0o644)
	brokerLog, sidecarLog := filepath.Join(dir, "broker.log"), filepath.Join(dir, "sidecar.log")

	startProxyAs(t, tgt, 0, "proxy listening", "broker", "--listen", brokerIP+":8081", "--provider-listen", "127.0.0.1:7000",
		"--admin-listen", "", "--secret-file", secret, "--insecure-plaintext", "--policy", brokerPolicy, "--log-file", brokerLog)
	providerTicket := filepath.Join(dir, "provider.json")
	if r := Run(t, nil, binary, "ticket", "--role", "provider", "--session", "w1", "--secret-file", secret, "--out", providerTicket); r.Code != 0 {
		t.Fatalf("provider ticket: %s%s", r.Stdout, r.Stderr)
	}
	startProxyAs(t, tgt, 0, "connected to broker", "provider", "--ticket", providerTicket, "--broker", "127.0.0.1:7000",
		"--insecure-plaintext", "--allow-targets", "any")
	r := Run(t, nil, binary, "ticket", "--session", "w1", "--broker", brokerIP+":8081", "--secret-file", secret, "--json")
	if r.Code != 0 {
		t.Fatalf("worker ticket: %s", r.Stderr)
	}
	workerTicket := write("worker.json", r.Stdout, 0o644)

	startProxyAs(t, agent, tpProxyUID, "proxy listening", "proxy", "--listen", "127.0.0.1:8080", "--admin-listen", "",
		"--transparent-listen", "[::]:15001", "--dns-listen", "[::]:15053", "--dns-upstream", tpDNSIP+":53",
		"--ticket", workerTicket, "--policy", sidecarPolicy, "--log-file", sidecarLog)
	run := func(argv ...string) Result {
		return Run(t, []string{"HOME=" + dir}, "ip", append([]string{"netns", "exec", agent}, argv...)...)
	}
	if fw := run(binary, "firewall", "--transparent", "--proxy-port", "15001", "--dns-port", "15053",
		"--allow-uid", fmt.Sprint(tpProxyUID), "--format", "nftables", "--apply"); fw.Code != 0 {
		t.Fatalf("firewall --apply: exit %d\n%s%s", fw.Code, fw.Stdout, fw.Stderr)
	}

	r = run("curl", "-sS", "--max-time", "20", "--noproxy", "*", "--cacert", caFile, "https://allowed.test/hello")
	if r.Code != 0 || r.Stdout != "allowed answers allowed.test/hello\n" {
		t.Fatalf("exit %d\nstdout: %q\nstderr: %s", r.Code, r.Stdout, r.Stderr)
	}
	dnsRec := tpWaitLog(t, sidecarLog, "the sidecar's lookup", func(r tpRecord) bool { return r.Method == "DNS" && r.Host == "allowed.test" && r.DNSType == "A" })
	if !slices.Equal(dnsRec.Answers, []string{tpAllowedIP}) {
		t.Errorf("DNS record %+v", dnsRec)
	}
	rec := tpWaitLog(t, sidecarLog, "the sidecar's tunnel", func(r tpRecord) bool { return r.Host == "allowed.test" && r.Transparent })
	if rec.Decision != "allow" || rec.OriginalDst != tpAllowedIP+":443" {
		t.Errorf("sidecar record %+v", rec)
	}
	// The broker saw both in session w1: the DNS guard's query over TCP and the captured tunnel.
	var session struct {
		Session string `json:"session"`
	}
	for what, match := range map[string]func(tpRecord) bool{
		"the guard's DNS over TCP": func(r tpRecord) bool { return r.Host == tpDNSIP && r.Port == 53 && r.Decision == "allow" },
		"the captured tunnel":      func(r tpRecord) bool { return r.Host == "allowed.test" && r.Port == 443 && r.Decision == "allow" },
	} {
		tpWaitLog(t, brokerLog, what, match)
	}
	data, _ := os.ReadFile(brokerLog)
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if json.Unmarshal([]byte(line), &session) != nil || session.Session != "w1" {
			t.Errorf("broker record outside session w1: %s", line)
		}
	}
	t.Logf("broker log:\n%s", data)
}
