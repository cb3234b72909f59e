package policy

import (
	"slices"
	"testing"
)

func TestDecideName(t *testing.T) {
	enforce := mustParse(t, `mode: enforce
allow:
  - host: "*.allowed.test"
  - host: api.github.com
    ports: [443]
  - cidr: 10.20.0.0/16
    ports: [5432]
  - host: "*"
    ports: [8443]
deny:
  - host: denied.test
  - host: smtp.allowed.test
    ports: [25]
  - cidr: 10.20.9.0/24
`)
	noCIDR := mustParse(t, "mode: enforce\nallow:\n  - host: a.test\n")
	discovery := mustParse(t, "mode: discovery\ndeny:\n  - host: \"*.evil.test\"\n")
	tests := []struct {
		name    string
		p       *Policy
		host    string
		addrs   []string // nil: name stage
		allow   bool
		pending bool
		code    Code
		rule    string
		kept    []string
	}{
		{"denied name", enforce, "denied.test", nil, false, false, CodeDeniedByRule, "deny#1", nil},
		{"denied name, address stage too", enforce, "denied.test", []string{"10.20.0.1"}, false, false, CodeDeniedByRule, "deny#1", nil},
		{"deny rule with ports leaves the name", enforce, "smtp.allowed.test", nil, true, false, CodeAllowedByRule, "allow#1", nil},
		{"wildcard host rule", enforce, "x.allowed.test", nil, true, false, CodeAllowedByRule, "allow#1", nil},
		{"host rule with ports still names it", enforce, "api.github.com", nil, true, false, CodeAllowedByRule, "allow#2", nil},
		{"host rule keeps every address", enforce, "x.allowed.test", []string{"127.0.0.1", "10.20.9.1"}, true, false, CodeAllowedByRule, "allow#1", []string{"127.0.0.1", "10.20.9.1"}},
		// "*" with ports is a host rule too: it matches every name.
		{"catch-all with ports", enforce, "other.test", nil, true, false, CodeAllowedByRule, "allow#4", nil},
		{"no host rule, no cidr rule", noCIDR, "b.test", nil, false, false, CodeNoRule, "", nil},
		{"no host rule, covered addresses kept", mustParse(t, "mode: enforce\nallow:\n  - cidr: 10.20.0.0/16\ndeny:\n  - cidr: 10.20.9.0/24\n"),
			"db.internal", []string{"10.20.1.1", "10.20.9.9", "192.0.2.1"}, true, false, CodeAllowedByRule, "allow#1", []string{"10.20.1.1"}},
		{"no host rule, pending", mustParse(t, "mode: enforce\nallow:\n  - cidr: 10.20.0.0/16\n"), "db.internal", nil, true, true, CodeAllowedByRule, "", nil},
		{"no host rule, nothing covered", mustParse(t, "mode: enforce\nallow:\n  - cidr: 10.20.0.0/16\n"), "db.internal", []string{"192.0.2.1"}, false, false, CodeNoRule, "", nil},
		{"discovery answers", discovery, "anything.test", nil, true, false, CodeDiscovery, "", nil},
		{"discovery deny", discovery, "a.evil.test", nil, false, false, CodeDeniedByRule, "deny#1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in []string
			d := tt.p.DecideName(tt.host, nil)
			if tt.addrs != nil {
				in = tt.addrs
				d = tt.p.DecideName(tt.host, addrs(in...))
			}
			if d.Allow != tt.allow || d.Pending != tt.pending || d.Code != tt.code || d.RuleID() != tt.rule {
				t.Fatalf("DecideName(%q, %v) = allow %v pending %v code %s rule %q (%s); want %v %v %s %q",
					tt.host, in, d.Allow, d.Pending, d.Code, d.RuleID(), d.Reason, tt.allow, tt.pending, tt.code, tt.rule)
			}
			var kept []string
			for _, a := range d.Addrs {
				kept = append(kept, a.String())
			}
			if !slices.Equal(kept, tt.kept) {
				t.Errorf("kept %v, want %v", kept, tt.kept)
			}
			if !d.Allow && (d.Reason == "" || d.Fix == "") {
				t.Errorf("a refusal without reason or fix: %+v", d)
			}
		})
	}
}

func TestNamingRule(t *testing.T) {
	p := mustParse(t, "mode: enforce\nallow:\n  - host: \"*\"\n  - host: \"*.a.test\"\ndeny:\n  - host: b.test\n")
	for host, want := range map[string]string{"x.a.test": "allow#2", "b.test": "deny#1", "c.test": "", "a.test": ""} {
		if got := p.NamingRule(host).ID(); got != want {
			t.Errorf("NamingRule(%q) = %q, want %q", host, got, want)
		}
	}
}
