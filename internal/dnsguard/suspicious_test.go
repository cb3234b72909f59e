package dnsguard

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestSuspicion(t *testing.T) {
	tests := []struct {
		name         string
		qname        string
		qtype        uint16
		named, exact bool
		want         string // substring of the reason; "" for not suspicious
	}{
		{"ordinary", "registry.npmjs.org", dns.TypeA, true, false, ""},
		{"ordinary AAAA unnamed", "files.pythonhosted.org", dns.TypeAAAA, false, false, ""},
		{"long label", strings.Repeat("a", 60) + ".allowed.test", dns.TypeA, true, false, "60 characters long"},
		{"label of 40 is fine", strings.Repeat("a", 40) + ".allowed.test", dns.TypeA, true, false, ""},
		{"long name", strings.Repeat("abcdefghij.", 12) + "test", dns.TypeA, true, false, "name is 136 characters"},
		{"base32 label", "mfrggzdfmztwq2lknnwg23tpobyxe43u.t.example", dns.TypeA, true, false, "entropy"},
		{"hex label stays under the entropy bar", "0123456789abcdef0123456789ab.t.example", dns.TypeA, true, false, ""},
		{"the zone is not measured", "x.mfrggzdfmztwq2lknnwg23tpobyxe43u", dns.TypeA, true, false, ""},
		{"TXT under an unnamed name", "x.tunnel.example", dns.TypeTXT, false, false, "TXT query"},
		{"NULL under an unnamed name", "x.tunnel.example", dns.TypeNULL, false, false, "NULL query"},
		{"ANY under an unnamed name", "x.tunnel.example", dns.TypeANY, false, false, "ANY query"},
		{"TXT under a named name", "_acme.allowed.test", dns.TypeTXT, true, false, ""},
		{"written out by the operator", strings.Repeat("a", 60) + ".allowed.test", dns.TypeA, true, true, ""},
		{"TXT written out still needs naming", "x.test", dns.TypeTXT, false, false, "TXT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := suspicion(tt.qname, tt.qtype, tt.named, tt.exact)
			if (got == "") != (tt.want == "") || !strings.Contains(got, tt.want) {
				t.Fatalf("suspicion(%q) = %q, want %q", tt.qname, got, tt.want)
			}
		})
	}
}
