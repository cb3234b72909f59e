package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/logstats"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// The hand-written access logs of the logstats tests: a rotated gzip file and the current one.
const (
	fixtureRotated = "../logstats/testdata/access-2026-11-24T10-00-00.000.log.gz"
	fixtureCurrent = "../logstats/testdata/access.log"
)

type cliResult struct {
	stdout, stderr string
	err            error
}

func runCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return cliResult{out.String(), errb.String(), err}
}

func TestLogsDomains(t *testing.T) {
	current, err := os.ReadFile(fixtureCurrent)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := os.ReadFile(fixtureRotated)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		stdin   string
		args    []string
		hosts   []string // the JSON report's hosts, in order; nil to skip
		first   bool     // hosts are only the first ones of the report
		stdout  []string // substrings of stdout
		stderr  string   // substring of stderr, "" for empty stderr
		wantErr string
	}{
		{name: "files, rotated and gzip", args: []string{"--json", fixtureRotated, fixtureCurrent},
			hosts: []string{"api.github.com", "169.254.169.254", "2001:db8::7"}, first: true},
		{name: "stdin when no files", stdin: string(current), args: []string{"--json", "--blocked-only"},
			hosts: []string{"169.254.169.254", "evil.example.org", "intranet.corp.example"}},
		{name: "gzip on stdin via -", stdin: string(rotated), args: []string{"--json", "-"},
			hosts: []string{"api.github.com", "codeload.github.com", "files.pythonhosted.org", "pypi.org"}},
		{name: "since and until", args: []string{"--json", "--since", "2026-11-24T10:00:10Z", "--until", "2026-11-24T10:00:11Z", fixtureCurrent},
			hosts: []string{"assets.publishing.service.gov.uk", "www.gov.uk"}},
		{name: "session", args: []string{"--json", "--session", "agent-42", fixtureCurrent},
			hosts: []string{"avatars.githubusercontent.com", "objects.githubusercontent.com", "raw.githubusercontent.com", "registry.npmjs.org", "telemetry.example.net"}},
		{name: "client prefix", args: []string{"--json", "--client", "10.0.0.8/32", fixtureCurrent},
			hosts: []string{"2001:db8::7", "203.0.113.7"}},
		{name: "table", args: []string{fixtureCurrent},
			stdout: []string{"HOST  ", "REQUESTS", "api.github.com", "20 hosts, 22 requests (3 blocked), 2026-11-24T10:00:00Z to 2026-11-24T10:00:21Z\n"}},
		{name: "by session", args: []string{"--by", "session", fixtureCurrent},
			stdout: []string{"session agent-42: 5 requests (0 blocked) to 5 hosts\n", "client 10.0.0.5: "}},
		{name: "malformed lines are reported, not fatal", stdin: string(current) + "oops\n{\"timestamp\":\n",
			args: []string{"--json"}, hosts: []string{"api.github.com"}, first: true,
			stderr: "swarm-proxy logs domains: warning: skipped 2 malformed lines of 25 (stdin:24, stdin:25; first: "},
		{name: "bad --by", args: []string{"--by", "agent"}, wantErr: `--by "agent": want host, session or client`},
		{name: "bad --since", args: []string{"--since", "last week"}, wantErr: "--since: time \"last week\""},
		{name: "until before since", args: []string{"--since", "2026-11-24", "--until", "2026-11-23"}, wantErr: "is before --since"},
		{name: "missing file", args: []string{"nope.log"}, wantErr: "nope.log"},
		{name: "directory", args: []string{"."}, wantErr: "is a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, c.stdin, append([]string{"logs", "domains"}, c.args...)...)
			if c.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), c.wantErr) {
					t.Fatalf("error %v, want %q", r.err, c.wantErr)
				}
				return
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if c.stderr == "" && r.stderr != "" || !strings.Contains(r.stderr, c.stderr) {
				t.Errorf("stderr %q, want %q", r.stderr, c.stderr)
			}
			for _, s := range c.stdout {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
				}
			}
			if c.hosts != nil {
				var rep logstats.DomainReport
				if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, h := range rep.Hosts {
					got = append(got, h.Host)
				}
				if c.first && len(got) > len(c.hosts) {
					got = got[:len(c.hosts)]
				}
				if strings.Join(got, " ") != strings.Join(c.hosts, " ") {
					t.Errorf("hosts %q, want %q (first only: %v)", got, c.hosts, c.first)
				}
			}
		})
	}
}

func TestPolicyGenerateReplayRoundTrip(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	existing, err := os.ReadFile("../logstats/testdata/existing-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, existing, 0o644); err != nil {
		t.Fatal(err)
	}

	r := runCLI(t, "", "policy", "generate", "--collapse", "3", "--merge", pol, "-o", pol, fixtureRotated, fixtureCurrent)
	if r.err != nil || r.stdout != "" {
		t.Fatalf("generate: %v, stdout %q", r.err, r.stdout)
	}
	for _, want := range []string{"note: mode changed from discovery to enforce", "wrote " + pol + " with 17 new allow rules"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if r := runCLI(t, "", "policy", "check", pol); r.err != nil || !strings.Contains(r.stdout, "ok (mode enforce, 19 allow rules, 1 deny rules)") {
		t.Fatalf("check: %v %s", r.err, r.stdout)
	}

	// The metadata address, the host an existing rule denies, and a name that only the mirror cidr
	// rule could admit but whose log records show no address in it would be denied: exit 3.
	r = runCLI(t, "", "policy", "replay", "--json", pol, fixtureRotated, fixtureCurrent)
	if ExitCode(r.err) != ExitReplayDenied || !strings.Contains(r.err.Error(), "3 of 26 observed requests (to 3 hosts) would be denied") {
		t.Fatalf("replay: exit %d, error %v", ExitCode(r.err), r.err)
	}
	var res logstats.ReplayResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatal(err)
	}
	if res.DeniedRequests != 3 || len(res.WouldDeny) != 3 || res.Mode != "enforce" {
		t.Errorf("replay result %+v", res)
	}
	pending := false
	for _, g := range res.WouldDeny {
		pending = pending || g.Host == "intranet.corp.example" && g.Pending
	}
	if !pending {
		t.Errorf("intranet.corp.example is not a pending denial: %+v", res.WouldDeny)
	}
	// The denied ones were already refused when recorded: without them, everything passes.
	r = runCLI(t, "", "policy", "replay", "--exclude-blocked", pol, fixtureRotated, fixtureCurrent)
	if r.err != nil || !strings.Contains(r.stdout, "would deny: 0 requests to 0 hosts") {
		t.Fatalf("replay --exclude-blocked: %v\n%s", r.err, r.stdout)
	}
	if got := strings.Join(strings.Fields(r.stdout), " "); !strings.Contains(got, "c.example.co.uk 8443 1 allow#15") ||
		!strings.Contains(got, "codeload.github.com 443 1 github") {
		t.Errorf("replay table lacks the collapsed and the existing rule:\n%s", r.stdout)
	}

	// Generating to stdout from stdin; the merge file is unchanged by a failed run.
	r = runCLI(t, "", "policy", "generate", "--collapse", "1")
	if r.err == nil || !strings.Contains(r.err.Error(), "collapse 1") {
		t.Errorf("--collapse 1: %v", r.err)
	}
	r = runCLI(t, "", "policy", "generate")
	if r.err == nil || !strings.Contains(r.err.Error(), "no records") {
		t.Errorf("empty input: %v", r.err)
	}
	if r := runCLI(t, "", "policy", "replay"); r.err == nil || ExitCode(r.err) != ExitUsage {
		t.Errorf("replay without POLICY: %v", r.err)
	}
}

func TestPolicyExplain(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(`mode: enforce
allow:
  - host: "*.github.com"
    ports: [443]
    name: github
    comment: reviewed 2026-11-01
  - host: api.github.com
  - cidr: 10.20.0.0/16
    ports: [5432]
    name: db
deny:
  - host: gist.github.com
    name: no-gists
`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		target string
		want   []string
	}{
		{"api.github.com", []string{
			"target        api.github.com:443 (a name: the proxy resolves it when it dials",
			"decision      allow\n", "rule          github (host *.github.com, ports [443], " + pol + " line 3)",
			"comment       reviewed 2026-11-01", "also matches  allow#2 (host api.github.com, " + pol + " line 7)",
			"note          if api.github.com resolves to a private"}},
		{"gist.github.com:443", []string{"decision      deny\n", "rule          no-gists", "fix           remove or narrow rule no-gists",
			"also matches  github (host *.github.com"}},
		{"example.org:80", []string{"decision      deny\n", "rule          none (no_rule_matched)", "fix           to allow it, add to allow in"}},
		{"169.254.169.254:80", []string{"(an IP address: a cloud metadata address)", "decision      deny\n",
			"rule          none (private_address)", "reason        169.254.169.254 is a cloud metadata address, which is refused unless an allow rule with a cidr covers it"}},
		{"10.20.3.4:5432", []string{"(an IP address: a private address)", "decision      allow\n", "rule          db (cidr 10.20.0.0/16",
			"note          10.20.3.4 is a private address: it is allowed only because an allow cidr rule covers it"}},
		{"db.internal:5432", []string{"decision      allow only if every address it resolves to is in an allow cidr rule, else deny",
			"              db (cidr 10.20.0.0/16, ports [5432]"}},
		{"[::1]:8080", []string{"target        [::1]:8080 (an IP address: a loopback address)", "decision      deny\n"}},
		{"[64:ff9b::a9fe:a9fe]:80", []string{"(an IP address: a NAT64 address that carries 169.254.169.254, a cloud metadata address)",
			"decision deny\n", "rule none (private_address)"}},
		{"[2002:7f00:1::1]:443", []string{"(an IP address: a 6to4 address that carries 127.0.0.1, a loopback address)", "decision deny\n"}},
		{"[fec0::1]:443", []string{"(an IP address: a site-local (deprecated) address)", "decision deny\n"}},
	} {
		t.Run(c.target, func(t *testing.T) {
			r := runCLI(t, "", "policy", "explain", pol, c.target)
			if r.err != nil {
				t.Fatal(r.err)
			}
			// Column widths depend on the keys present: compare with runs of spaces squeezed.
			squeeze := func(s string) string { return strings.Join(strings.Fields(s), " ") }
			for _, w := range c.want {
				if !strings.Contains(squeeze(r.stdout), squeeze(w)) {
					t.Errorf("output lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
	for _, args := range [][]string{{pol}, {pol, "a b"}, {pol, "host:99999"}, {"missing.yaml", "a.example"}} {
		if r := runCLI(t, "", append([]string{"policy", "explain"}, args...)...); r.err == nil {
			t.Errorf("explain %q succeeded", args)
		}
	}
	if _, err := policy.Load(pol); err != nil {
		t.Fatal(err)
	}
}

// ownMachine is an injected list of the machine's own addresses.
type ownMachine []netip.Addr

func (m ownMachine) Owns(a netip.Addr) bool { return slices.Contains(m, a) }

// explainWants runs explain for target on a machine that owns own, with the policy src, and checks
// that the output, its white space squeezed, holds every one of wants.
func explainWants(t *testing.T, src string, target policy.Target, own ownMachine, wants ...string) {
	t.Helper()
	p, err := policy.Parse("policy.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := explain(&b, p, target, own, nil); err != nil {
		t.Fatal(err)
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, b.String())
		}
	}
}

// TestPolicyExplainOwnAddress: explain refuses an address of the machine it runs on, as the proxy does.
func TestPolicyExplainOwnAddress(t *testing.T) {
	explainWants(t, "mode: discovery\n", policy.Target{Host: "192.31.196.1", Port: 9393}, ownMachine{netip.MustParseAddr("192.31.196.1")},
		"(an IP address: an address of this machine)", "decision deny",
		"reason 192.31.196.1 is an address of this machine, which is refused unless an allow rule with a cidr covers it")
}

// TestPolicyGenerateDenied: the documented `policy generate access.log` leaves out what a deny rule
// refused, and --include-denied puts it back.
func TestPolicyGenerateDenied(t *testing.T) {
	log := `{"timestamp":"2026-11-24T10:00:00Z","client":"10.0.0.5","method":"CONNECT","host":"api.github.com","port":443,"status":200,"decision":"allow","mode":"discovery"}
{"timestamp":"2026-11-24T10:00:01Z","client":"10.0.0.5","method":"CONNECT","host":"evil.test","port":443,"status":403,"decision":"deny","mode":"discovery","rule":"deny#1","error":"denied_by_rule"}
`
	r := runCLI(t, log, "policy", "generate")
	if r.err != nil || strings.Contains(r.stdout, "host: evil.test") || !strings.Contains(r.stdout, "# evil.test:443 denied by deny#1") ||
		!strings.Contains(r.stderr, "left out 1 target (host and port) that a deny rule refused") {
		t.Errorf("generate: %v\n%s\n%s", r.err, r.stdout, r.stderr)
	}
	r = runCLI(t, log, "policy", "generate", "--include-denied")
	if r.err != nil || !strings.Contains(r.stdout, "host: evil.test") {
		t.Errorf("generate --include-denied: %v\n%s", r.err, r.stdout)
	}
}

// TestPolicyExplainNAT64Prefix: explain judges an address under the policy's own NAT64 prefix by
// the IPv4 address it carries, as the proxy does.
func TestPolicyExplainNAT64Prefix(t *testing.T) {
	explainWants(t, "mode: discovery\nnat64_prefixes: [\"2a01:4f8:64::/96\"]\n", policy.Target{Host: "2a01:4f8:64::a9fe:a9fe", Port: 80}, nil,
		"(an IP address: a NAT64 address that carries 169.254.169.254, a cloud metadata address)", "decision deny")
}

// TestPolicyExplainCarriedDeny: explain lists every deny rule that holds against a NAT64 address
// through the IPv4 address it carries, not only the one that decided.
func TestPolicyExplainCarriedDeny(t *testing.T) {
	explainWants(t, "mode: discovery\ndeny:\n  - cidr: 8.8.8.0/24\n    name: first\n  - cidr: 8.8.0.0/16\n    name: second\n",
		policy.Target{Host: "64:ff9b::808:808", Port: 53}, nil,
		"decision deny", "rule first (cidr 8.8.8.0/24", "reason 64:ff9b::808:808 (NAT64 for 8.8.8.8) is denied by rule first",
		"also matches second (cidr 8.8.0.0/16")
}
