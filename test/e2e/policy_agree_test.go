package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
)

// TestPolicyToolsAgreeWithProxy: for the same policy and target, `policy explain`, `policy replay`
// of the proxy's own log and the live proxy's access log give the same decision and name the same
// rule, in both modes, for names and addresses, allowed, refused by a rule, refused as loopback and
// allowed but failing to connect. All targets are on loopback; the only name is localhost.
func TestPolicyToolsAgreeWithProxy(t *testing.T) {
	serve := func(addr string) int {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "target")
		}))
		srv.Listener.Close()
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
		return ln.Addr().(*net.TCPAddr).Port
	}
	p1, p2, q := serve("127.0.0.1:0"), serve("127.0.0.1:0"), serve("127.0.0.2:0")

	tests := []struct {
		name    string
		policy  string
		targets []string
	}{
		{
			name: "enforce",
			policy: fmt.Sprintf(`mode: enforce
allow:
  - host: localhost
    ports: [%[1]d]
  - cidr: 127.0.0.0/8
    ports: [%[1]d]
  - host: localhost
    ports: [%[2]d]
  - cidr: 127.0.0.2/32
    ports: [%[3]d]
    name: second-loopback
deny:
  - host: localhost
    ports: [%[3]d]
  - cidr: 127.0.0.3/32
`, p1, p2, q),
			targets: []string{
				fmt.Sprintf("localhost:%d", p1), // the host rule names it, but loopback needs the cidr rule
				fmt.Sprintf("127.0.0.1:%d", p1),
				fmt.Sprintf("localhost:%d", p2), // only a host rule: refused as loopback
				fmt.Sprintf("127.0.0.1:%d", p2),
				fmt.Sprintf("127.0.0.2:%d", q),
				fmt.Sprintf("localhost:%d", q),  // deny host rule
				fmt.Sprintf("127.0.0.3:%d", p1), // deny cidr rule
				fmt.Sprintf("127.0.0.2:%d", p1), // allowed; nothing listens there
			},
		},
		{
			name: "discovery",
			policy: fmt.Sprintf(`mode: discovery
allow:
  - cidr: 127.0.0.2/32
    name: second-loopback
deny:
  - host: localhost
    ports: [%d]
`, q),
			targets: []string{
				fmt.Sprintf("localhost:%d", p1),
				fmt.Sprintf("127.0.0.1:%d", p1),
				fmt.Sprintf("127.0.0.2:%d", q),
				fmt.Sprintf("localhost:%d", q),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := WriteFile(t, "policy.yaml", tt.policy)
			px := StartProxy(t, "--policy", pol)
			live := map[string]string{} // target → "allow RULE" / "deny RULE" as the proxy logged it
			for _, target := range tt.targets {
				Curl(t, "-o", "/dev/null", "-x", "http://"+px.Addr, "http://"+target+"/")
				host, portStr, _ := net.SplitHostPort(target)
				port, _ := strconv.Atoi(portStr)
				rec := px.WaitRecord(func(r accesslog.Record) bool { return r.Host == host && r.Port == port })
				live[target] = string(rec.Decision) + " " + rec.Rule
			}
			logFile := filepath.Join(t.TempDir(), "access.log")
			if err := os.WriteFile(logFile, []byte(px.Stdout()), 0o644); err != nil {
				t.Fatal(err)
			}

			replayed := replayRules(t, pol, logFile)
			for _, target := range tt.targets {
				if got := explainRule(t, pol, target); got != live[target] {
					t.Errorf("%s: policy explain says %q, the proxy logged %q", target, got, live[target])
				}
				if got := replayed[target]; got != live[target] {
					t.Errorf("%s: policy replay says %q, the proxy logged %q", target, got, live[target])
				}
			}
			t.Logf("live decisions: %v", live)
		})
	}
}

// explainRule runs `policy explain` and returns "allow RULE" or "deny RULE" ("" when no rule).
func explainRule(t *testing.T, pol, target string) string {
	t.Helper()
	r := Run(t, nil, binary, "policy", "explain", pol, target)
	if r.Code != 0 {
		t.Fatalf("policy explain %s: exit %d: %s", target, r.Code, r.Stderr)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(r.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			if _, seen := fields[f[0]]; !seen {
				fields[f[0]] = f[1]
			}
		}
	}
	rule := fields["rule"]
	if rule == "none" {
		rule = ""
	}
	return fields["decision"] + " " + rule
}

// replayRules runs `policy replay --json` on the log and returns "allow RULE" / "deny RULE" per
// HOST:PORT.
func replayRules(t *testing.T, pol, logFile string) map[string]string {
	t.Helper()
	r := Run(t, nil, binary, "policy", "replay", "--json", pol, logFile)
	if r.Code != 0 && r.Code != 3 {
		t.Fatalf("policy replay: exit %d: %s", r.Code, r.Stderr)
	}
	type group struct {
		Host  string `json:"host"`
		Ports []int  `json:"ports"`
		Rule  string `json:"rule"`
	}
	var res struct {
		WouldDeny  []group `json:"would_deny"`
		WouldAllow []group `json:"would_allow"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("policy replay --json: %v\n%s", err, r.Stdout)
	}
	out := map[string]string{}
	for decision, groups := range map[string][]group{"deny": res.WouldDeny, "allow": res.WouldAllow} {
		for _, g := range groups {
			for _, p := range g.Ports {
				out[net.JoinHostPort(g.Host, strconv.Itoa(p))] = decision + " " + g.Rule
			}
		}
	}
	return out
}
