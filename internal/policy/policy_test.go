package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

const examplePolicy = `mode: enforce            # or: discovery
allow:
  - host: api.github.com
  - host: "*.npmjs.org"
    ports: [443]
  - cidr: 10.20.0.0/16
    ports: [5432]
  - host: bücher.example
    name: books
deny:
  - host: "*.pastebin.com"
  - cidr: 10.20.9.0/24
`

func mustParse(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Parse("policy.yaml", []byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

func addrs(list ...string) []netip.Addr {
	out := make([]netip.Addr, len(list))
	for i, s := range list {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestDecide(t *testing.T) {
	enforce := mustParse(t, examplePolicy)
	discovery := mustParse(t, "mode: discovery\ndeny:\n  - host: evil.example\n")
	tests := []struct {
		name     string
		p        *Policy
		host     string
		port     int
		addrs    []netip.Addr // nil: name stage only
		allow    bool
		code     Code
		rule     string
		dialable []netip.Addr
		pending  bool
	}{
		{"exact host allowed", enforce, "api.github.com", 443, nil, true, CodeAllowedByRule, "allow#1", nil, false},
		{"exact host public addr", enforce, "api.github.com", 443, addrs("140.82.112.6"), true, CodeAllowedByRule, "allow#1", addrs("140.82.112.6"), false},
		{"exact host resolving to loopback", enforce, "api.github.com", 443, addrs("127.0.0.1"), false, CodeSpecialAddr, "", nil, false},
		{"mixed addresses keep the public one", enforce, "api.github.com", 443, addrs("10.0.0.1", "140.82.112.6"), true, CodeAllowedByRule, "allow#1", addrs("140.82.112.6"), false},
		{"wildcard matches subdomain", enforce, "registry.npmjs.org", 443, nil, true, CodeAllowedByRule, "allow#2", nil, false},
		{"wildcard matches deep subdomain", enforce, "a.b.npmjs.org", 443, nil, true, CodeAllowedByRule, "allow#2", nil, false},
		{"wildcard does not match apex", enforce, "npmjs.org", 443, nil, false, CodeNoRule, "", nil, false},
		{"wildcard does not match suffix trick", enforce, "evilnpmjs.org", 443, nil, false, CodeNoRule, "", nil, false},
		{"wildcard port limit", enforce, "registry.npmjs.org", 80, nil, false, CodeNoRule, "", nil, false},
		{"deny wins over allow", mustParse(t, "mode: enforce\nallow:\n  - host: x.pastebin.com\ndeny:\n  - host: '*.pastebin.com'\n"), "x.pastebin.com", 443, nil, false, CodeDeniedByRule, "deny#1", nil, false},
		{"no rule in enforce", enforce, "example.com", 443, nil, false, CodeNoRule, "", nil, false},
		{"cidr rule name stage is pending", enforce, "db.internal", 5432, nil, true, CodeAllowedByRule, "", nil, true},
		{"cidr rule covers private address", enforce, "db.internal", 5432, addrs("10.20.1.5"), true, CodeAllowedByRule, "allow#3", addrs("10.20.1.5"), false},
		{"cidr rule wrong port", enforce, "db.internal", 5433, nil, false, CodeNoRule, "", nil, false},
		{"deny cidr inside allow cidr", enforce, "db.internal", 5432, addrs("10.20.9.1"), false, CodeDeniedByRule, "deny#2", nil, false},
		{"ip literal in cidr", enforce, "10.20.1.5", 5432, nil, true, CodeAllowedByRule, "allow#3", addrs("10.20.1.5"), false},
		{"ip literal private", enforce, "10.1.1.1", 5432, nil, false, CodeSpecialAddr, "", nil, false},
		{"idn rule matches punycode", enforce, "xn--bcher-kva.example", 443, nil, true, CodeAllowedByRule, "books", nil, false},
		{"discovery allows public", discovery, "example.com", 443, addrs("93.184.215.14"), true, CodeDiscovery, "", addrs("93.184.215.14"), false},
		{"discovery denies rule", discovery, "evil.example", 443, nil, false, CodeDeniedByRule, "deny#1", nil, false},
		{"discovery refuses metadata", discovery, "169.254.169.254", 80, nil, false, CodeSpecialAddr, "", nil, false},
		{"discovery refuses ec2 v6 metadata", discovery, "fd00:ec2::254", 80, nil, false, CodeSpecialAddr, "", nil, false},
		{"discovery refuses rebinding name", discovery, "rebind.example", 80, addrs("127.0.0.1"), false, CodeSpecialAddr, "", nil, false},
		{"discovery refuses cgnat", discovery, "100.64.1.1", 80, nil, false, CodeSpecialAddr, "", nil, false},
		{"discovery refuses mapped loopback", discovery, "x.example", 80, addrs("::ffff:127.0.0.1"), false, CodeSpecialAddr, "", nil, false},
		{"discovery refuses unspecified", discovery, "0.0.0.0", 80, nil, false, CodeSpecialAddr, "", nil, false},
		{"discovery refuses multicast", discovery, "ff02::1", 80, nil, false, CodeSpecialAddr, "", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.p.Decide(Target{Host: tt.host, Port: tt.port}, tt.addrs)
			if d.Allow != tt.allow || d.Code != tt.code || d.RuleID() != tt.rule || d.Pending != tt.pending {
				t.Fatalf("Decide = allow %v code %s rule %q pending %v (%s); want allow %v code %s rule %q pending %v",
					d.Allow, d.Code, d.RuleID(), d.Pending, d.Reason, tt.allow, tt.code, tt.rule, tt.pending)
			}
			if d.Reason == "" {
				t.Error("decision has no reason")
			}
			if !d.Allow && d.Fix == "" {
				t.Error("denial has no fix")
			}
			if tt.dialable != nil && !equalAddrs(d.Addrs, tt.dialable) {
				t.Errorf("Addrs = %v, want %v", d.Addrs, tt.dialable)
			}
		})
	}
}

func equalAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDenyReasonNamesRuleAndLine(t *testing.T) {
	p := mustParse(t, examplePolicy)
	d := p.Decide(Target{Host: "x.pastebin.com", Port: 443}, nil)
	if want := "denied by rule deny#1 (host *.pastebin.com, policy.yaml line 11)"; d.Reason != want {
		t.Errorf("reason = %q, want %q", d.Reason, want)
	}
}

func TestParseReportsEveryProblemWithLine(t *testing.T) {
	src := `mode: enforce
allow:
  - host: "api.*.com"
  - cidr: 10.0.0.1/8
  - host: ok.example
    cidr: 10.0.0.0/8
  - ports: [0]
deny:
  - host: "bad host"
`
	_, err := Parse("p.yaml", []byte(src))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	for _, want := range []string{
		"p.yaml:3: allow#1: host \"api.*.com\"",
		"p.yaml:4: allow#2: cidr \"10.0.0.1/8\" has host bits set: did you mean 10.0.0.0/8?",
		"p.yaml:5: allow#3: a rule takes host or cidr, not both",
		"p.yaml:7: allow#4: a rule needs host or cidr; port 0 is not from 1 to 65535",
		"p.yaml:9: deny#1: host \"bad host\"",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"empty", "", "the file is empty"},
		{"no mode", "allow: []\n", "p.yaml:1: mode is missing"},
		{"bad mode", "mode: block\n", "p.yaml:1: mode \"block\" is not valid"},
		{"unknown key", "mode: enforce\nalow:\n  - host: x\n", `p.yaml:2: unknown key "alow" (a policy file has: version, mode, allow, deny, nat64_prefixes)`},
		{"bad yaml", "mode: enforce\nallow: [\n", "p.yaml:2: did not find expected node content"},
		{"wrong type", "mode: enforce\nallow:\n  - host: x\n    ports: 443\n", "p.yaml:4: ports must be a list, e.g. ports: [443]"},
		{"future version", "version: 2\nmode: enforce\n", "p.yaml:1: version 2 is not supported"},
		{"wildcard ip", "mode: enforce\nallow:\n  - host: '*.10.0.0.1'\n", "wildcards apply to names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"Example.COM.", "example.com", ""},
		{"bücher.example", "xn--bcher-kva.example", ""},
		{"[::1]", "::1", ""},
		{"::ffff:127.0.0.1", "127.0.0.1", ""},
		{"[fe80::1%eth0]", "", "zoned"},
		{"", "", "empty"},
		{"a..b", "", "label"},
		{"exa mple.com", "", "disallowed rune"},
		{"[example.com]", "", "brackets"},
		{strings.Repeat("a", 64) + ".com", "", "label"},
		{strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 61), strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 61), ""},
		{strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 62), "", "longer than 253"},
		// 251 bytes of UTF-8, but 363 characters in punycode: the limit applies to what is dialed.
		{strings.Repeat("àaâaä.", 27) + "àaâaä", "", "longer than 253"},
	}
	for _, tt := range tests {
		got, err := NormalizeHost(tt.in)
		if tt.err != "" {
			if err == nil || !errors.Is(err, ErrBadHost) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("NormalizeHost(%q) err = %v, want ErrBadHost containing %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		defPort int
		want    Target
		ok      bool
	}{
		{"example.com:443", 0, Target{"example.com", 443}, true},
		{"[::1]:8080", 0, Target{"::1", 8080}, true},
		{"example.com", 80, Target{"example.com", 80}, true},
		{"example.com", 0, Target{}, false},
		{"example.com:0", 0, Target{}, false},
		{"example.com:65536", 0, Target{}, false},
		{"example.com:+80", 0, Target{}, false},
		{"example.com:http", 0, Target{}, false},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.in, tt.defPort)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseTarget(%q, %d) = %v, %v; want %v ok=%v", tt.in, tt.defPort, got, err, tt.want, tt.ok)
		}
	}
}

func TestForTargets(t *testing.T) {
	loop, _ := ForTargets(TargetsLoopback)
	if d := loop.Decide(Target{"127.0.0.1", 22}, nil); !d.Allow {
		t.Errorf("loopback targets refuse 127.0.0.1: %s", d.Reason)
	}
	if d := loop.Decide(Target{"example.com", 443}, addrs("93.184.215.14")); d.Allow {
		t.Error("loopback targets allow a public address")
	}
	pub, _ := ForTargets(TargetsPublic)
	if d := pub.Decide(Target{"127.0.0.1", 22}, nil); d.Allow {
		t.Error("public targets allow loopback")
	}
	anyT, _ := ForTargets(TargetsAny)
	if d := anyT.Decide(Target{"10.0.0.1", 22}, nil); !d.Allow {
		t.Errorf("any targets refuse a private address: %s", d.Reason)
	}
	if _, err := ForTargets("all"); err == nil {
		t.Error("ForTargets accepted an unknown name")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(examplePolicy))
	f.Add([]byte("mode: discovery\n"))
	f.Add([]byte("mode: enforce\nallow:\n  - cidr: ::/0\n    ports: [1, 65535]\n"))
	f.Add([]byte("mode: enforce\nallow: {a: b}\n"))
	f.Add([]byte(inspectPolicy))
	f.Add([]byte("mode: enforce\nallow:\n  - {host: x, ports: 443}\n  - y\ndeny: {host: z}\n"))
	f.Add([]byte("version: [1]\nmode: [enforce]\nallow:\n  - host: {a: b}\n    inspect: 3\n    http: [x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if strings.Contains(err.Error(), "unmarshal") {
				t.Fatalf("a type error in yaml's words: %v", err)
			}
			return
		}
		if p.Mode != Enforce && p.Mode != Discovery {
			t.Fatalf("accepted mode %q", p.Mode)
		}
		for _, r := range append(p.Allow, p.Deny...) {
			if (r.Host == "") == !r.Prefix.IsValid() {
				t.Fatalf("rule %s has neither or both of host and cidr", r.ID())
			}
			p.Decide(Target{Host: "example.com", Port: 443}, addrs("1.1.1.1"))
			if len(r.HTTP) > 0 && !r.Inspects() {
				t.Fatalf("rule %s has http entries but does not inspect", r.ID())
			}
			p.DecideRequest(Decision{Allow: true, Rule: &r}, "GET", "/a/b")
		}
	})
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{"example.com", "Example.COM.", "bücher.example", "[::1]", "::ffff:1.2.3.4", "a..b", "xn--bcher-kva.example", "*.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeHost(s)
		if err != nil {
			return
		}
		again, err := NormalizeHost(n)
		if err != nil || again != n {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, n, again, err)
		}
		if strings.ContainsAny(n, " /\\@#?*") {
			t.Fatalf("normalised host %q has a forbidden character", n)
		}
	})
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"example.com:443", "[::1]:80", "1.2.3.4:1", "x:65535", "x:", ":80", "[::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tgt, err := ParseTarget(s, 0)
		if err != nil {
			return
		}
		if tgt.Port < 1 || tgt.Port > 65535 {
			t.Fatalf("port %d out of range", tgt.Port)
		}
		back, err := ParseTarget(tgt.String(), 0)
		if err != nil || back != tgt {
			t.Fatalf("round trip %q -> %v -> %v, %v", s, tgt, back, err)
		}
	})
}

// TestRuleNaming: the rule a decision names is the same before and after the name is resolved,
// unless the address is one only an allow cidr rule may admit; then it is that cidr rule. policy
// explain and replay (which may have no addresses) and the live proxy (which has them) agree.
func TestRuleNaming(t *testing.T) {
	p := mustParse(t, `mode: enforce
allow:
  - host: localhost
    ports: [18081]
  - cidr: 127.0.0.0/8
    ports: [18081]
  - host: api.example
    ports: [443]
  - cidr: 140.82.112.0/20
    ports: [443]
`)
	tests := []struct {
		host      string
		port      int
		addrs     []netip.Addr
		nameRule  string // the name-stage decision's rule
		finalRule string // with the addresses
	}{
		{"localhost", 18081, addrs("127.0.0.1"), "allow#1", "allow#2"},
		{"localhost", 18081, LoopbackAddrs("localhost"), "allow#1", "allow#2"},
		{"api.example", 443, addrs("140.82.112.6"), "allow#3", "allow#3"},
		{"api.example", 443, addrs("10.0.0.1", "140.82.112.6"), "allow#3", "allow#3"},
		{"other.example", 443, addrs("140.82.112.6"), "", "allow#4"},
		{"127.0.0.9", 18081, nil, "allow#2", "allow#2"},
	}
	for _, tt := range tests {
		tg := Target{Host: tt.host, Port: tt.port}
		if got := p.Decide(tg, nil).RuleID(); got != tt.nameRule {
			t.Errorf("%s %v: name stage names %q, want %q", tg, tt.addrs, got, tt.nameRule)
		}
		if got := p.Decide(tg, tt.addrs).RuleID(); got != tt.finalRule {
			t.Errorf("%s %v: names %q, want %q", tg, tt.addrs, got, tt.finalRule)
		}
	}
}

func TestLoopbackAddrs(t *testing.T) {
	for host, want := range map[string]int{"localhost": 2, "a.b.localhost": 2, "localhost.example": 0, "notlocalhost": 0, "xlocalhost": 0} {
		if got := LoopbackAddrs(host); len(got) != want || want > 0 && !got[0].IsLoopback() {
			t.Errorf("LoopbackAddrs(%q) = %v", host, got)
		}
	}
}

// TestParseTypeErrors: a value of the wrong type is reported in the policy's words, with the line
// and an example of the right form, never as yaml's "cannot unmarshal".
func TestParseTypeErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"ports scalar", "mode: enforce\nallow:\n  - host: x\n    ports: 443\n", "p.yaml:4: ports must be a list, e.g. ports: [443]"},
		{"ports in flow rule", "mode: enforce\nallow:\n  - {host: x, ports: 8080}\n", "p.yaml:3: ports must be a list, e.g. ports: [8080]"},
		{"port not a number", "mode: enforce\nallow:\n  - host: x\n    ports: [80, https]\n", `p.yaml:4: ports: "https" is not a port number; write the number, e.g. ports: [443]`},
		{"host list", "mode: enforce\nallow:\n  - host: [a.example, b.example]\n", "p.yaml:3: host must be a single value, not a list; e.g. host: api.github.com"},
		{"rule not a mapping", "mode: enforce\nallow:\n  - api.github.com.example\n", `p.yaml:3: each entry of allow must be a mapping, not "api.github.com.example"; e.g. allow: [{host: api.github.com, ports: [443]}]`},
		{"deny not a list", "mode: enforce\ndeny:\n  host: evil.example\n", `p.yaml:3: deny must be a list, e.g. deny: [{host: "*.pastebin.com"}]`},
		{"inspect not a bool", "mode: enforce\nallow:\n  - host: x\n    inspect: maybe\n", `p.yaml:4: inspect must be true or false, not "maybe"`},
		{"version not a number", "version: one\nmode: enforce\n", "p.yaml:1: version must be a number, e.g. version: 1"},
		{"file not a mapping", "- mode: enforce\n", `p.yaml:1: a policy file is a mapping of version, mode, allow, deny and nat64_prefixes, e.g. "mode: enforce"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "unmarshal") {
				t.Fatalf("err = %v\nwant %q", err, tt.want)
			}
		})
	}
}

// TestParseReportsEveryProblem: where the YAML parses, one Parse reports every problem of the
// file, in line order: types, unknown keys and rule checks together.
func TestParseReportsEveryProblem(t *testing.T) {
	src := `mode: enforse
allow:
  - host: api.github.com
    ports: 443
  - cidr: 10.0.0.1/8
  - hots: example.com
    ports: [80]
  - host: "a.*.example"
deny:
  host: evil.example
`
	_, err := Parse("p.yaml", []byte(src))
	want := `invalid policy:
p.yaml:1: mode "enforse" is not valid: use enforce or discovery
p.yaml:4: ports must be a list, e.g. ports: [443]
p.yaml:5: allow#2: cidr "10.0.0.1/8" has host bits set: did you mean 10.0.0.0/8?
p.yaml:6: unknown key "hots" (a rule has: host, cidr, ports, name, comment, http, access, inspect, inject, secrets)
p.yaml:6: allow#3: a rule needs host or cidr
p.yaml:8: allow#4: host "a.*.example": a wildcard is only allowed as a leading "*." ("*.example.com") or as "*"
p.yaml:10: deny must be a list, e.g. deny: [{host: "*.pastebin.com"}]`
	if err == nil || err.Error() != want {
		t.Fatalf("err =\n%v\nwant\n%s", err, want)
	}
	// Broken YAML cannot be checked further: its one problem is reported alone.
	if _, err := Parse("p.yaml", []byte("mode: enforce\nallow: [\n")); err == nil || strings.Count(err.Error(), "p.yaml:") != 1 {
		t.Fatalf("broken YAML: %v", err)
	}
}
