package logstats

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/swarm-proxy/swarm-proxy/internal/policy"
)

// generatedHosts generates a policy for one allowed request per host (port 443) and returns the
// host or cidr of each rule, in order.
func generatedHosts(t *testing.T, opts GenerateOptions, hosts ...string) []string {
	t.Helper()
	g, err := NewGenerator(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		g.Add(&Entry{Time: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), Host: h, Port: 443, Decision: "allow", Client: "10.0.0.1"})
	}
	out, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse("generated", out.YAML)
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, r := range p.Allow {
		if r.Host != "" {
			rules = append(rules, r.Host)
		} else {
			rules = append(rules, r.Prefix.String())
		}
	}
	return rules
}

func TestCollapsePublicSuffix(t *testing.T) {
	for _, c := range []struct {
		name     string
		collapse int
		hosts    []string
		want     []string
	}{
		{"off", 0, []string{"a.example.com", "b.example.com", "c.example.com"},
			[]string{"a.example.com", "b.example.com", "c.example.com"}},
		{"three subdomains", 3, []string{"a.example.com", "b.example.com", "c.x.example.com"},
			[]string{"*.example.com"}},
		{"below the threshold", 3, []string{"a.example.com", "b.example.com"},
			[]string{"a.example.com", "b.example.com"}},
		{"the domain itself keeps its own rule", 2, []string{"example.com", "a.example.com", "b.example.com"},
			[]string{"example.com", "*.example.com"}},
		{"never *.co.uk: each name under co.uk is its own registrable domain", 2, []string{"a.co.uk", "b.co.uk", "c.co.uk"},
			[]string{"a.co.uk", "b.co.uk", "c.co.uk"}},
		{"below a registrable domain under co.uk", 2, []string{"www.example.co.uk", "api.example.co.uk"},
			[]string{"*.example.co.uk"}},
		{"never *.github.io: a private public suffix", 2, []string{"alice.github.io", "bob.github.io", "carol.github.io"},
			[]string{"alice.github.io", "bob.github.io", "carol.github.io"}},
		{"below one github.io site", 2, []string{"a.alice.github.io", "b.alice.github.io"},
			[]string{"*.alice.github.io"}},
		{"a public suffix seen as a host", 2, []string{"github.io", "co.uk"},
			[]string{"github.io", "co.uk"}},
		{"single labels and addresses are never collapsed", 2, []string{"localhost", "intranet", "10.0.0.1", "10.0.0.2"},
			[]string{"intranet", "localhost", "10.0.0.1/32", "10.0.0.2/32"}},
		{"separate groups", 2, []string{"a.example.com", "b.example.com", "a.example.org", "b.example.org", "solo.example.net"},
			[]string{"*.example.com", "solo.example.net", "*.example.org"}},
		{"punycode names", 2, []string{"a.xn--mnchen-3ya.de", "b.xn--mnchen-3ya.de"},
			[]string{"*.xn--mnchen-3ya.de"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := generatedHosts(t, GenerateOptions{Collapse: c.collapse}, c.hosts...)
			if !slices.Equal(got, c.want) {
				t.Errorf("rules %q, want %q", got, c.want)
			}
		})
	}
}

func TestGenerateRefusesBadInput(t *testing.T) {
	for _, n := range []int{1, -1} {
		if _, err := NewGenerator(GenerateOptions{Collapse: n}); err == nil {
			t.Errorf("collapse %d accepted", n)
		}
	}
	g, err := NewGenerator(GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Generate(); !errors.Is(err, ErrNoRecords) {
		t.Errorf("empty input: error %v, want ErrNoRecords", err)
	}
	g, err = NewGenerator(GenerateOptions{Merge: []byte("mode: sometimes\n"), MergeName: "bad.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	g.Add(&Entry{Host: "a.example", Port: 443, Decision: "allow"})
	if _, err := g.Generate(); !errors.Is(err, policy.ErrInvalid) || !strings.Contains(err.Error(), "bad.yaml:1") {
		t.Errorf("invalid merge file: error %v, want policy.ErrInvalid naming bad.yaml:1", err)
	}
}

func TestGeneratePrivateAndBlocked(t *testing.T) {
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	entries := []Entry{
		{Time: at, Host: "127.0.0.1", Port: 8080, Decision: "allow"}, // admitted by a cidr rule when recorded
		{Time: at, Host: "169.254.169.254", Port: 80, Decision: "deny", Error: ErrorPrivateAddress},
		{Time: at, Host: "db.internal", Port: 5432, Decision: "deny", Error: ErrorPrivateAddress},
		{Time: at, Host: "new.example", Port: 443, Decision: "deny", Error: "no_rule_matched"},
	}
	for _, c := range []struct {
		exclude bool
		want    []string
	}{
		{false, []string{"new.example", "127.0.0.1/32"}},
		{true, []string{"127.0.0.1/32"}},
	} {
		g, err := NewGenerator(GenerateOptions{ExcludeBlocked: c.exclude})
		if err != nil {
			t.Fatal(err)
		}
		for i := range entries {
			g.Add(&entries[i])
		}
		out, err := g.Generate()
		if err != nil {
			t.Fatal(err)
		}
		p, err := policy.Parse("generated", out.YAML)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range p.Allow {
			got = append(got, r.Host+r.Prefix.String())
			if !r.MatchesPort(r.Ports[0]) || len(r.Ports) != 1 {
				t.Errorf("rule %s ports %v", r.ID(), r.Ports)
			}
		}
		if strings.ReplaceAll(strings.Join(got, " "), "invalid Prefix", "") != strings.Join(c.want, " ") {
			t.Errorf("exclude-blocked=%v: rules %q, want %q", c.exclude, got, c.want)
		}
		if !strings.Contains(string(out.YAML), "a loopback address") {
			t.Errorf("the loopback rule's comment does not say so:\n%s", out.YAML)
		}
		d := p.Decide(policy.Target{Host: "169.254.169.254", Port: 80}, []netip.Addr{netip.MustParseAddr("169.254.169.254")})
		if d.Allow {
			t.Errorf("generated policy allows the metadata address")
		}
	}
}

func TestReplay(t *testing.T) {
	p, err := policy.Parse("candidate.yaml", []byte(`mode: enforce
allow:
  - host: "*.example.com"
    ports: [443]
    name: example
  - cidr: 10.20.0.0/16
    ports: [5432]
deny:
  - host: bad.example.com
`))
	if err != nil {
		t.Fatal(err)
	}
	r := NewReplayer(p)
	for _, e := range []Entry{
		{Host: "a.example.com", Port: 443, Client: "10.0.0.1", Decision: "allow"},
		{Host: "a.example.com", Port: 443, Client: "10.0.0.2", Decision: "allow"},
		{Host: "a.example.com", Port: 80, Client: "10.0.0.1", Decision: "allow"},
		{Host: "bad.example.com", Port: 443, Client: "10.0.0.3", Session: "s9", Decision: "deny"},
		{Host: "10.20.1.1", Port: 5432, Client: "10.0.0.1", Decision: "allow"},
		{Host: "10.30.1.1", Port: 5432, Client: "10.0.0.1", Decision: "allow"},
		// Names that only the cidr rule could admit: decided by the address dialed when recorded.
		{Host: "db.internal", Port: 5432, Client: "10.0.0.1", Decision: "allow", Upstream: "10.20.3.4:5432"},
		{Host: "db2.internal", Port: 5432, Client: "10.0.0.1", Decision: "allow", Upstream: "10.40.3.4:5432"},
		{Host: "new.internal", Port: 5432, Client: "10.0.0.4", Decision: "deny", Error: ErrorPrivateAddress},
	} {
		r.Add(&e)
	}
	res := r.Result()
	if res.Requests != 9 || res.DeniedRequests != 5 {
		t.Fatalf("requests %d denied %d, want 9 and 5", res.Requests, res.DeniedRequests)
	}
	type row struct {
		host, code, rule string
		requests         int64
		pending          bool
	}
	var deny, allow []row
	for _, g := range res.WouldDeny {
		deny = append(deny, row{g.Host, g.Code, g.Rule, g.Requests, g.Pending})
	}
	for _, g := range res.WouldAllow {
		allow = append(allow, row{g.Host, g.Code, g.Rule, g.Requests, g.Pending})
	}
	wantDeny := []row{
		{"10.30.1.1", "private_address", "", 1, false},
		{"a.example.com", "no_rule_matched", "", 1, false},
		{"bad.example.com", "denied_by_rule", "deny#1", 1, false},
		{"db2.internal", "private_address", "", 1, false},
		{"new.internal", "allowed_by_rule", "", 1, true},
	}
	if !slices.Equal(deny, wantDeny) {
		t.Errorf("would deny %+v\nwant %+v", deny, wantDeny)
	}
	if len(allow) != 3 || allow[0] != (row{"a.example.com", "allowed_by_rule", "example", 2, false}) ||
		allow[1].host != "10.20.1.1" || allow[2] != (row{"db.internal", "allowed_by_rule", "allow#2", 1, false}) {
		t.Errorf("would allow %+v", allow)
	}
	if g := res.WouldDeny[2]; !slices.Equal(g.Clients, []string{"10.0.0.3"}) || !slices.Equal(g.Sessions, []string{"s9"}) || g.WasBlocked != 1 {
		t.Errorf("denied group %+v: want client 10.0.0.3, session s9, 1 already blocked", g)
	}
}

func TestFilter(t *testing.T) {
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	e := Entry{Time: at, Host: "a.example", Client: "10.0.0.5", Session: "s1", Decision: "deny"}
	client := func(s string) netip.Prefix {
		p, err := ParseClient(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name string
		f    Filter
		e    Entry
		want bool
	}{
		{"zero filter", Filter{}, e, true},
		{"no host never matches", Filter{}, Entry{Time: at, Decision: "deny"}, false},
		{"since inclusive", Filter{Since: at}, e, true},
		{"since after", Filter{Since: at.Add(time.Second)}, e, false},
		{"until inclusive", Filter{Until: at}, e, true},
		{"until before", Filter{Until: at.Add(-time.Second)}, e, false},
		{"session", Filter{Sessions: []string{"s2", "s1"}}, e, true},
		{"other session", Filter{Sessions: []string{"s2"}}, e, false},
		{"client address", Filter{Clients: []netip.Prefix{client("10.0.0.5")}}, e, true},
		{"client prefix", Filter{Clients: []netip.Prefix{client("10.0.0.0/24")}}, e, true},
		{"other client", Filter{Clients: []netip.Prefix{client("10.0.1.0/24")}}, e, false},
		{"blocked only", Filter{BlockedOnly: true}, e, true},
		{"allowed only", Filter{AllowedOnly: true}, e, false},
	} {
		if got := c.f.Match(&c.e); got != c.want {
			t.Errorf("%s: match %v, want %v", c.name, got, c.want)
		}
	}
	if _, err := ParseClient("10.0.0.0/33"); err == nil {
		t.Error("ParseClient accepted /33")
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2026-11-24T10:00:00Z", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
		{"2026-11-24T12:00:00+02:00", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
		{"2026-11-24", time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), true},
		{"2h", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
		{"-2h", time.Time{}, false},
		{"yesterday", time.Time{}, false},
	} {
		got, err := ParseTime(c.in, now)
		if (err == nil) != c.ok || !got.Equal(c.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v (ok %v)", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for in, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1KiB", 1536: "1.5KiB", 150 << 20: "150MiB", 5 << 30: "5GiB"} {
		if got := HumanBytes(in); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestGenerateNeverWidensFromBadHosts(t *testing.T) {
	got := generatedHosts(t, GenerateOptions{}, "*", "*.com", "a b.example", "\x1b[31mred", "API.GitHub.com.", "[2001:db8::1]")
	if want := []string{"api.github.com", "2001:db8::1/128"}; !slices.Equal(got, want) {
		t.Errorf("rules %q, want %q", got, want)
	}
	g, err := NewGenerator(GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g.Add(&Entry{Host: "*", Port: 443, Decision: "allow"})
	out, err := g.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Notes) != 1 || !strings.Contains(out.Notes[0], `left out 1 request whose host is not a valid name or address ("*")`) || out.Added != 0 {
		t.Errorf("notes %q, added %d", out.Notes, out.Added)
	}
}

// FuzzGenerate feeds arbitrary hosts and ports to the generator: the result always passes
// policy.Parse, and its only wildcards are collapsed registrable domains with enough hosts below.
func FuzzGenerate(f *testing.F) {
	f.Add("a.example.com,b.example.com,c.example.com", uint16(443), uint8(2))
	f.Add("*,*.co.uk,alice.github.io,bob.github.io", uint16(80), uint8(2))
	f.Add("10.0.0.1,[::1],xn--mnchen-3ya.de,ÉCOLE.fr", uint16(0), uint8(0))
	f.Fuzz(func(t *testing.T, hosts string, port uint16, collapse uint8) {
		n := int(collapse % 4)
		if n == 1 {
			n = 0
		}
		g, err := NewGenerator(GenerateOptions{Collapse: n})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range strings.Split(hosts, ",") {
			g.Add(&Entry{Host: h, Port: int(port), Decision: "allow"})
		}
		out, err := g.Generate()
		if errors.Is(err, ErrNoRecords) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p, err := policy.Parse("fuzz", out.YAML)
		if err != nil {
			t.Fatalf("generated policy does not parse: %v\n%s", err, out.YAML)
		}
		for _, r := range p.Allow {
			if r.Host == "*" || len(r.Ports) == 0 {
				t.Fatalf("rule %s is too wide (host %q, ports %v)", r.ID(), r.Host, r.Ports)
			}
			if d, ok := strings.CutPrefix(r.Host, "*."); ok && (n == 0 || registrable(d) != d) {
				t.Fatalf("wildcard %q with collapse %d: not a registrable domain", r.Host, n)
			}
		}
	})
}

func TestTableQuotesControlCharacters(t *testing.T) {
	d := NewDomains()
	d.Add(&Entry{Host: "evil\x1b[2J.example", Port: 443, Decision: "allow", Client: "10.0.0.1\t"})
	var b strings.Builder
	if err := (&DomainReport{Requests: 1, Hosts: d.Rows()}).WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(b.String(), "\x1b\t") || !strings.Contains(b.String(), `"evil\x1b[2J.example"`) {
		t.Errorf("table passes control characters through:\n%q", b.String())
	}
}

// TestGenerateLeavesOutDenied: hosts that a deny rule refused never come back as allow rules, not
// even through a collapsed "*.domain" rule; they are listed in a comment with the rule, and a forged
// rule name cannot write YAML.
func TestGenerateLeavesOutDenied(t *testing.T) {
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	entries := []Entry{
		{Time: at, Host: "api.github.com", Port: 443, Decision: "allow"},
		{Time: at, Host: "evil.test", Port: 443, Decision: "deny", Error: ErrorDeniedByRule, Rule: "no-evil"},
		{Time: at, Host: "x.pastebin.test", Port: 443, Decision: "deny", Error: ErrorDeniedByRule, Rule: "deny#2"},
		{Time: at, Host: "a.pastebin.test", Port: 443, Decision: "allow"}, // before the deny rule was added
		{Time: at, Host: "b.pastebin.test", Port: 443, Decision: "allow"},
		{Time: at, Host: "ssh.example.org", Port: 22, Decision: "deny", Error: ErrorDeniedByRule, Rule: "no-ssh"},
		{Time: at, Host: "ssh.example.org", Port: 443, Decision: "allow"},
		{Time: at, Host: "forged.test", Port: 443, Decision: "deny", Error: ErrorDeniedByRule, Rule: "x\n  - host: '*'\n"},
	}
	generate := func(opts GenerateOptions) (*Generated, *policy.Policy) {
		t.Helper()
		g, err := NewGenerator(opts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range entries {
			g.Add(&entries[i])
		}
		out, err := g.Generate()
		if err != nil {
			t.Fatal(err)
		}
		p, err := policy.Parse("generated", out.YAML)
		if err != nil {
			t.Fatalf("%v\n%s", err, out.YAML)
		}
		return out, p
	}
	allows := func(p *policy.Policy, host string, port int) bool {
		return p.Decide(policy.Target{Host: host, Port: port}, []netip.Addr{netip.MustParseAddr("93.184.215.14")}).Allow
	}

	out, p := generate(GenerateOptions{Collapse: 2})
	for _, hp := range []struct {
		host string
		port int
	}{{"evil.test", 443}, {"x.pastebin.test", 443}, {"ssh.example.org", 22}, {"forged.test", 443}, {"anything.test", 443}} {
		if allows(p, hp.host, hp.port) {
			t.Errorf("the generated policy allows %s:%d:\n%s", hp.host, hp.port, out.YAML)
		}
	}
	for _, hp := range []struct {
		host string
		port int
	}{{"api.github.com", 443}, {"a.pastebin.test", 443}, {"ssh.example.org", 443}} {
		if !allows(p, hp.host, hp.port) {
			t.Errorf("the generated policy does not allow %s:%d:\n%s", hp.host, hp.port, out.YAML)
		}
	}
	for _, w := range []string{
		"# Left out: refused by a deny rule of the policy in force when logged (policy generate --include-denied puts them back):",
		"# evil.test:443 denied by no-evil\n", "# ssh.example.org:22 denied by no-ssh\n", "# x.pastebin.test:443 denied by deny#2\n",
		`# forged.test:443 denied by "x\n  - host: '*'\n"`,
	} {
		if !strings.Contains(string(out.YAML), w) {
			t.Errorf("generated policy lacks %q:\n%s", w, out.YAML)
		}
	}
	if strings.Contains(string(out.YAML), "*.pastebin.test") {
		t.Errorf("collapsed into a rule that allows the denied x.pastebin.test back:\n%s", out.YAML)
	}

	// --include-denied puts them back.
	_, p = generate(GenerateOptions{IncludeDenied: true})
	if !allows(p, "evil.test", 443) || !allows(p, "ssh.example.org", 22) {
		t.Error("--include-denied did not put the denied hosts back")
	}

	// --merge with the policy in force keeps its deny rules, which win over anything generated.
	inForce := "mode: discovery\ndeny:\n  - host: evil.test\n    name: no-evil\n  - host: \"*.pastebin.test\"\n"
	out, p = generate(GenerateOptions{IncludeDenied: true, Merge: []byte(inForce), MergeName: "policy.yaml"})
	if len(p.Deny) != 2 || allows(p, "evil.test", 443) || allows(p, "x.pastebin.test", 443) || allows(p, "a.pastebin.test", 443) {
		t.Errorf("merged policy lost its deny rules:\n%s", out.YAML)
	}
}
