package e2e

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

var updateDiscovery = flag.Bool("update-discovery", false, "rewrite the discovery golden files from the current output")

// discoveryGoldenDir holds the goldens of this test next to the logstats fixtures they complement.
const discoveryGoldenDir = "../../internal/logstats/testdata/e2e"

// serveOn starts the ping handler on a loopback address such as 127.0.0.2, which Linux routes to
// the loopback interface like 127.0.0.1.
func serveOn(t *testing.T, ip string) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	srv := httptest.NewUnstartedServer(pingServer(t).Config.Handler)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// swarm runs the built binary with args (not a server) and returns its output and exit code.
func swarm(t *testing.T, args ...string) Result {
	t.Helper()
	return Run(t, nil, binary, args...)
}

// logRecords reads the access log file; a missing file has no records yet.
func logRecords(t *testing.T, path string) []accesslog.Record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return ParseRecords(t, string(data))
}

// step is one client request of the recorded workload.
type step struct {
	name   string
	url    string
	extra  []string // more curl arguments
	status int      // expected HTTP status (CONNECT failures show as curl's response code)
}

// drive runs steps through the proxy one at a time, waiting after each for its access-log record
// so that the log's order (and the goldens) do not depend on timing.
func drive(t *testing.T, proxyAddr, logFile string, steps []step) {
	t.Helper()
	for _, s := range steps {
		before := len(logRecords(t, logFile))
		args := append([]string{"-o", "/dev/null", "-w", "%{http_code}", "-x", "http://" + proxyAddr}, s.extra...)
		r := Curl(t, append(args, s.url)...)
		if got := strings.TrimSpace(r.Stdout); got != strconv.Itoa(s.status) {
			t.Fatalf("%s: status %s, want %d (curl exit %d: %s)", s.name, got, s.status, r.Code, r.Stderr)
		}
		Eventually(t, "the access-log record of "+s.name, func() bool { return len(logRecords(t, logFile)) > before })
	}
}

// TestDiscoveryRoundTrip is the workflow of docs/discovery.md: run in discovery mode, drive
// traffic to several loopback hosts, report and generate a policy from the proxy's own log,
// replay it, restart in enforce mode with it: the same traffic passes and a new host is blocked.
func TestDiscoveryRoundTrip(t *testing.T) {
	a := serveOn(t, "127.0.0.1")
	b := serveOn(t, "127.0.0.2")
	// The goldens map each server's port to a fixed number, so the ports must differ; the kernel
	// may hand out the same number on two addresses.
	for i := 0; port(t, b) == port(t, a); i++ {
		if i == 10 {
			t.Fatal("no distinct port for 127.0.0.2")
		}
		b = serveOn(t, "127.0.0.2")
	}
	tlsSrv, ca := TLSServer(t, a.Config.Handler)
	newPort := serveOn(t, "127.0.0.1")
	pa, pb, pc := port(t, a), port(t, b), port(t, tlsSrv)
	// newHost's port must be one that no generated cidr rule allows: see newName.
	newHost := serveOn(t, "127.0.0.3")
	for i := 0; port(t, newHost) == pb || port(t, newHost) == pc || port(t, newHost) == pa; i++ {
		if i == 10 {
			t.Fatal("no distinct port for 127.0.0.3")
		}
		newHost = serveOn(t, "127.0.0.3")
	}
	// A name the workload never used, on a port no cidr rule allows: enforce mode refuses it by rule
	// (no_rule_matched) before any lookup, so it needs no DNS (.test is reserved and never resolved).
	newName := fmt.Sprintf("new-host.test:%d", port(t, newHost))

	dir := t.TempDir()
	// Loopback targets are refused unless a cidr rule admits them: discovery mode plus one cidr rule.
	discovery := filepath.Join(dir, "discovery.yaml")
	if err := os.WriteFile(discovery, []byte(LoopbackPolicy("discovery", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	discoveryLog := filepath.Join(dir, "access.log")
	p := StartProxy(t, "--policy", discovery, "--log-file", discoveryLog)

	workload := []step{
		{"plain HTTP to 127.0.0.1", a.URL + "/ping.txt", nil, 200},
		{"plain HTTP to 127.0.0.1 again", a.URL + "/ping.txt", nil, 200},
		{"plain HTTP to 127.0.0.2", b.URL + "/ping.txt", nil, 200},
		{"a name: localhost", fmt.Sprintf("http://localhost:%d/ping.txt", pa), nil, 200},
		{"HTTPS through CONNECT", tlsSrv.URL + "/ping.txt", []string{"--cacert", ca}, 200},
		{"POST with a body", a.URL + "/ping.txt", []string{"--data-binary", "hello"}, 200},
	}
	metadata := step{"the metadata address (refused, never dialed)", "http://169.254.169.254/latest/meta-data/", nil, 403}
	drive(t, p.Addr, discoveryLog, append(workload, metadata))
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(); code != 0 {
		t.Fatalf("discovery proxy exited %d", code)
	}

	t.Run("goldens", func(t *testing.T) {
		norm := normaliseLog(t, discoveryLog, dir, map[int]int{pa: 8001, pb: 8002, pc: 8443})
		normFile := filepath.Join(dir, "normalised.log")
		if err := os.WriteFile(normFile, norm, 0o644); err != nil {
			t.Fatal(err)
		}
		discoveryGolden(t, "access.log", norm)
		for _, c := range []struct {
			golden string
			args   []string
		}{
			{"domains.txt", []string{"logs", "domains", normFile}},
			{"domains.json", []string{"logs", "domains", "--json", normFile}},
			{"domains-by-session.txt", []string{"logs", "domains", "--by", "session", normFile}},
			{"policy.yaml", []string{"policy", "generate", normFile}},
		} {
			r := swarm(t, c.args...)
			if r.Code != 0 {
				t.Fatalf("%v: exit %d: %s", c.args, r.Code, r.Stderr)
			}
			discoveryGolden(t, c.golden, []byte(r.Stdout))
		}
	})

	// Generate from the real log, check and replay it.
	pol := filepath.Join(dir, "policy.yaml")
	r := swarm(t, "policy", "generate", "-o", pol, discoveryLog)
	if r.Code != 0 || !strings.Contains(r.Stderr, "left out 1 host refused as private, loopback or metadata addresses (169.254.169.254)") {
		t.Fatalf("generate: exit %d: %s", r.Code, r.Stderr)
	}
	if r := swarm(t, "policy", "check", pol); r.Code != 0 || !strings.Contains(r.Stdout, "ok (mode enforce, 3 allow rules") {
		t.Fatalf("check: exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	r = swarm(t, "policy", "replay", pol, discoveryLog)
	if r.Code != 3 || !strings.Contains(r.Stderr, "1 of 7 observed requests (to 1 host) would be denied") {
		t.Fatalf("replay: exit %d, want 3: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := swarm(t, "policy", "replay", "--exclude-blocked", pol, discoveryLog); r.Code != 0 {
		t.Fatalf("replay --exclude-blocked: exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}

	// Enforce with the generated policy: the same traffic passes, new destinations are refused.
	enforceLog := filepath.Join(dir, "enforce.log")
	e := StartProxy(t, "--policy", pol, "--log-file", enforceLog)
	if !strings.Contains(e.Stderr(), "mode=enforce") {
		t.Errorf("enforce proxy did not start in enforce mode:\n%s", e.Stderr())
	}
	drive(t, e.Addr, enforceLog, append(workload,
		metadata,
		step{"a new loopback address", newHost.URL + "/ping.txt", nil, 403},
		step{"a known host on a new port", newPort.URL + "/ping.txt", nil, 403},
		step{"a new host name", "http://" + newName + "/ping.txt", nil, 403},
	))
	recs := logRecords(t, enforceLog)
	for i, rec := range recs {
		wantAllow := i < len(workload)
		if (rec.Decision == accesslog.DecisionAllow) != wantAllow || rec.Mode != "enforce" {
			t.Errorf("enforce record %d (%s:%d): decision %s mode %s, want allow=%v", i, rec.Host, rec.Port, rec.Decision, rec.Mode, wantAllow)
		}
	}
	// The generated policy admits what it saw, by the generated rules and nothing else.
	for _, rec := range recs[:len(workload)] {
		if rec.Rule == "" || rec.Rule == "test-loopback" {
			t.Errorf("%s:%d allowed by rule %q, want a generated rule", rec.Host, rec.Port, rec.Rule)
		}
	}
	if rec := recs[len(recs)-3]; rec.Host != "127.0.0.3" || rec.Error != "private_address" {
		t.Errorf("new loopback address record %+v, want 127.0.0.3 refused as private_address", rec)
	}
	// Refused because no rule allows it, not because of its address.
	if rec := recs[len(recs)-1]; rec.Host != "new-host.test" || rec.Error != "no_rule_matched" || rec.Upstream != "" {
		t.Errorf("new host name record %+v, want new-host.test refused as no_rule_matched without a lookup", rec)
	}

	// Replaying the enforce log against the same policy shows the two new destinations.
	r = swarm(t, "policy", "replay", "--json", pol, enforceLog)
	var res struct {
		WouldDeny []struct {
			Host    string   `json:"host"`
			Ports   []int    `json:"ports"`
			Clients []string `json:"clients"`
		} `json:"would_deny"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || r.Code != 3 {
		t.Fatalf("replay of the enforce log: exit %d, %v: %s", r.Code, err, r.Stdout)
	}
	var denied []string
	for _, d := range res.WouldDeny {
		denied = append(denied, fmt.Sprintf("%s:%v:%v", d.Host, d.Ports, d.Clients))
	}
	want := []string{
		fmt.Sprintf("127.0.0.1:[%d]:[127.0.0.1]", port(t, newPort)),
		fmt.Sprintf("127.0.0.3:[%d]:[127.0.0.1]", port(t, newHost)),
		"169.254.169.254:[80]:[127.0.0.1]",
		fmt.Sprintf("new-host.test:[%d]:[127.0.0.1]", port(t, newHost)),
	}
	if strings.Join(denied, " ") != strings.Join(want, " ") {
		t.Errorf("replay would deny %v, want %v", denied, want)
	}
	if r := swarm(t, "policy", "explain", pol, fmt.Sprintf("127.0.0.3:%d", port(t, newHost))); r.Code != 0 ||
		!strings.Contains(r.Stdout, "a loopback address, which is refused unless an allow rule with a cidr covers it") {
		t.Errorf("explain of the new host: exit %d:\n%s", r.Code, r.Stdout)
	}
	if r := swarm(t, "policy", "explain", pol, newName); r.Code != 0 || !strings.Contains(r.Stdout, "no allow rule matches "+newName) {
		t.Errorf("explain of the new host name: exit %d:\n%s", r.Code, r.Stdout)
	}
}

// normaliseLog rewrites what differs from run to run in the proxy's log: timestamps become one
// second apart, request ids a counter, durations 1 ms, the servers' kernel-chosen ports fixed
// numbers, TLS byte counts (which vary with the handshake) fixed values, a reset by curl at the end
// of a finished TLS tunnel no error, and the temporary directory "/tmp/test".
func normaliseLog(t *testing.T, path, tmpDir string, ports map[int]int) []byte {
	t.Helper()
	base := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	w := accesslog.NewWriter(&out)
	replacer := []string{tmpDir, "/tmp/test"}
	for from, to := range ports {
		replacer = append(replacer, ":"+strconv.Itoa(from), ":"+strconv.Itoa(to))
	}
	repl := strings.NewReplacer(replacer...)
	for i, rec := range logRecords(t, path) {
		rec.Timestamp = base.Add(time.Duration(i) * time.Second)
		rec.RequestID = fmt.Sprintf("req-%02d", i+1)
		rec.DurationMS = 1
		if p, ok := ports[rec.Port]; ok {
			rec.Port = p
		}
		rec.Upstream, rec.Reason = repl.Replace(rec.Upstream), repl.Replace(rec.Reason)
		if rec.Method == "CONNECT" && rec.BytesIn > 0 {
			rec.BytesIn, rec.BytesOut = 4096, 1024
		}
		if rec.Method == "CONNECT" && rec.Error == "client_closed" && strings.Contains(rec.Reason, "connection reset by peer") {
			// curl may reset a finished TLS connection instead of closing it.
			rec.Error, rec.Reason = "", "allowed by rule test-loopback (cidr 127.0.0.0/8, /tmp/test/discovery.yaml line 3)"
		}
		if err := w.Write(&rec); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

func discoveryGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(discoveryGoldenDir, name)
	if *updateDiscovery {
		if err := os.MkdirAll(discoveryGoldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./test/e2e -run TestDiscoveryRoundTrip -update-discovery creates it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden (rerun with -update-discovery after review):\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}
