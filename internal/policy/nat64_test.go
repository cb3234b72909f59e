package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// TestNAT64Embedded checks the extraction against the examples of RFC 6052 section 2.4: 192.0.2.33
// under 2001:db8:122:344::/N for every length N.
func TestNAT64Embedded(t *testing.T) {
	for _, c := range []struct {
		bits int
		addr string
	}{
		{32, "2001:db8:c000:221::"},
		{40, "2001:db8:1c0:2:21::"},
		{48, "2001:db8:122:c000:2:2100::"},
		{56, "2001:db8:122:3c0:0:221::"},
		{64, "2001:db8:122:344:c0:2:2100:0"},
		{96, "2001:db8:122:344::c000:221"},
	} {
		if got := nat64Embedded(netip.MustParseAddr(c.addr), c.bits); got != netip.MustParseAddr("192.0.2.33") {
			t.Errorf("/%d %s carries %s, want 192.0.2.33", c.bits, c.addr, got)
		}
	}
}

// TestCidrRulesMatchCarriedAddress: a deny cidr rule for an IPv4 range holds against the IPv6 forms
// that deliver to its addresses (NAT64, 6to4, Teredo), for IP literals and for names (DNS64
// answers). Before, a deny rule for 8.8.8.0/24 let [64:ff9b::808:808] through in discovery mode.
// An allow cidr rule does not reach through them: the carried address is another machine's view.
func TestCidrRulesMatchCarriedAddress(t *testing.T) {
	p := mustParse(t, "mode: discovery\ndeny:\n  - cidr: 8.8.8.0/24\n    name: no-dns\n")
	for _, host := range []string{"8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7", "::ffff:8.8.8.8"} {
		d := p.Decide(Target{Host: host, Port: 53}, nil)
		if d.Allow || d.Code != CodeDeniedByRule || d.RuleID() != "no-dns" {
			t.Errorf("%s: %+v, want denied by no-dns", host, d)
		}
	}
	d := p.Decide(Target{Host: "dns.example", Port: 443}, addrs("64:ff9b::808:804"))
	if d.Allow || d.RuleID() != "no-dns" || !strings.Contains(d.Reason, "64:ff9b::808:804 (NAT64 for 8.8.8.4) is denied by rule no-dns") {
		t.Errorf("a DNS64 answer: %+v", d)
	}
	if d := p.Decide(Target{Host: "64:ff9b::909:909", Port: 53}, nil); !d.Allow {
		t.Errorf("a NAT64 address outside the rule: %+v", d)
	}

	// An allow cidr rule for a private IPv4 range does not admit its NAT64 form, nor does a
	// provider's --allow-targets loopback admit the forms of 127.0.0.1, which leave the machine.
	p = mustParse(t, "mode: enforce\nallow:\n  - cidr: 10.20.0.0/16\n    name: db\n")
	if d := p.Decide(Target{Host: "64:ff9b::a14:304", Port: 5432}, nil); d.Allow || d.Code != CodeSpecialAddr {
		t.Errorf("NAT64 form of 10.20.3.4: %+v, want refused as private", d)
	}
	loopback, err := ForTargets(TargetsLoopback)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"64:ff9b::7f00:1", "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:80ff:fffe"} {
		if d := loopback.Decide(Target{Host: host, Port: 22}, nil); d.Allow {
			t.Errorf("--allow-targets loopback admits %s: %+v", host, d)
		}
	}
}

// TestDecideNameCarried: the DNS guard leaves out of an answer the NAT64 addresses whose IPv4
// address a deny rule covers.
func TestDecideNameCarried(t *testing.T) {
	p := mustParse(t, "mode: enforce\nallow:\n  - cidr: 64:ff9b::/96\ndeny:\n  - cidr: 8.8.8.0/24\n")
	d := p.DecideName("dns64.example", addrs("64:ff9b::808:808", "64:ff9b::909:909"))
	if !d.Allow || len(d.Addrs) != 1 || d.Addrs[0] != netip.MustParseAddr("64:ff9b::909:909") {
		t.Errorf("DecideName: %+v, want only 64:ff9b::909:909", d)
	}
}

// TestNAT64Prefixes: the network's own NAT64 prefix makes its addresses carry an IPv4 address, so
// metadata and private addresses behind it are refused and cidr rules match them.
func TestNAT64Prefixes(t *testing.T) {
	const metadata = "2a01:4f8:64::a9fe:a9fe" // 169.254.169.254 under 2a01:4f8:64::/96
	without := mustParse(t, "mode: discovery\n")
	if d := without.Decide(Target{Host: metadata, Port: 80}, nil); !d.Allow {
		t.Fatalf("without the prefix %s is a public address: %+v", metadata, d)
	}
	p := mustParse(t, "mode: discovery\nnat64_prefixes: [\"2a01:4f8:64::/96\", \"2a01:4f8:65::/48\"]\ndeny:\n  - cidr: 8.8.8.0/24\n")
	if len(p.NAT64) != 2 {
		t.Fatalf("NAT64 prefixes %v", p.NAT64)
	}
	d := p.Decide(Target{Host: metadata, Port: 80}, nil)
	if d.Allow || d.Code != CodeSpecialAddr || !strings.Contains(d.Reason, metadata+" is a NAT64 address that carries 169.254.169.254, a cloud metadata address") {
		t.Errorf("metadata under the prefix: %+v", d)
	}
	// Under the /48, the IPv4 address is split around the u octet: 127.0.0.1 is 2a01:4f8:65:7f00:0:100::.
	if d := p.Decide(Target{Host: "app.example", Port: 80}, addrs("2a01:4f8:65:7f00:0:100::")); d.Allow || !strings.Contains(d.Reason, "carries 127.0.0.1, a loopback address") {
		t.Errorf("loopback under the /48: %+v", d)
	}
	if d := p.Decide(Target{Host: "2a01:4f8:64::808:808", Port: 53}, nil); d.Allow || d.Code != CodeDeniedByRule {
		t.Errorf("a denied IPv4 address under the prefix: %+v", d)
	}
	if d := p.Decide(Target{Host: "2a01:4f8:64::909:909", Port: 53}, nil); !d.Allow {
		t.Errorf("a public IPv4 address under the prefix: %+v", d)
	}
	if c := p.Classify(netip.MustParseAddr("2a01:4f8:64::a00:1")); c.Kind != "private" || c.Via != "NAT64" {
		t.Errorf("Classify: %+v", c)
	}
}

func TestNAT64PrefixErrors(t *testing.T) {
	for _, c := range []struct{ value, want string }{
		{`["10.0.0.0/8"]`, "nat64_prefixes#1: 10.0.0.0/8 is not an IPv6 prefix"},
		{`["2001:db8::/33"]`, "nat64_prefixes#1: 2001:db8::/33: a NAT64 prefix is /32, /40, /48, /56, /64 or /96 (RFC 6052)"},
		{`["2001:db8::1/96"]`, "nat64_prefixes#1: 2001:db8::1/96 has bits set after the prefix length; did you mean 2001:db8::/96?"},
		{`["2001:db8::/96", "nat64"]`, `nat64_prefixes#2: "nat64" is not a prefix such as 2001:db8:64::/96`},
	} {
		_, err := Parse("p.yaml", []byte("mode: enforce\nnat64_prefixes: "+c.value+"\n"))
		if err == nil || !strings.Contains(err.Error(), "p.yaml:2: "+c.want) {
			t.Errorf("%s: %v, want %q", c.value, err, c.want)
		}
	}
}

// TestCarriedForms: only the forms that reach the IPv4 internet carry an address for rule matching.
func TestCarriedForms(t *testing.T) {
	for _, c := range []struct{ addr, v4, form string }{
		{"64:ff9b::a00:1", "10.0.0.1", "NAT64"},
		{"2002:a00:1::1", "10.0.0.1", "6to4"},
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1", "Teredo"},
		{"64:ff9b:1::a00:1", "", ""},
		{"::a00:1", "", ""},
		{"::ffff:0:a00:1", "", ""},
		{"2a01:4f8::1", "", ""},
		{"10.0.0.1", "", ""},
	} {
		v4, form := Carried(netip.MustParseAddr(c.addr))
		if (c.v4 == "") != !v4.IsValid() || (v4.IsValid() && v4.String() != c.v4) || form != c.form {
			t.Errorf("Carried(%s) = %v, %q; want %q, %q", c.addr, v4, form, c.v4, c.form)
		}
	}
	// An allow rule for 10.0.0.0/8 does not admit the IPv4-compatible form, refused whatever it carries.
	p := mustParse(t, "mode: enforce\nallow:\n  - cidr: 10.0.0.0/8\n")
	if d := p.Decide(Target{Host: "::a00:1", Port: 80}, nil); d.Allow {
		t.Errorf("IPv4-compatible ::a00:1 admitted by an IPv4 rule: %+v", d)
	}
}
