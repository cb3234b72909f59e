package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// registryCases lists every entry of the IANA IPv4 and IPv6 Special-Purpose Address Registries (and
// the classifier's other ranges) with an address inside it and the verdict: want is the Kind, ""
// for a public destination.
var registryCases = []struct {
	cidr, addr, want string
}{
	// IPv4 Special-Purpose Address Registry.
	{"0.0.0.0/8", "0.1.2.3", "this-network"},
	{"0.0.0.0/32", "0.0.0.0", "unspecified"},
	{"10.0.0.0/8", "10.1.2.3", "private"},
	{"100.64.0.0/10", "100.127.255.254", "carrier-grade NAT"},
	{"127.0.0.0/8", "127.0.0.1", "loopback"},
	{"169.254.0.0/16", "169.254.1.1", "link-local"},
	{"172.16.0.0/12", "172.31.255.1", "private"},
	{"192.0.0.0/24", "192.0.0.100", "IETF protocol assignment"},
	{"192.0.0.0/29", "192.0.0.1", "IPv4 service continuity (DS-Lite)"},
	{"192.0.0.8/32", "192.0.0.8", "IPv4 dummy"},
	{"192.0.0.9/32", "192.0.0.9", ""},
	{"192.0.0.10/32", "192.0.0.10", ""},
	{"192.0.0.170/31", "192.0.0.171", "NAT64/DNS64 discovery"},
	{"192.0.2.0/24", "192.0.2.1", "documentation (TEST-NET-1)"},
	{"192.31.196.0/24", "192.31.196.1", ""},
	{"192.52.193.0/24", "192.52.193.1", ""},
	{"192.88.99.0/24", "192.88.99.1", "deprecated 6to4 relay anycast"},
	{"192.168.0.0/16", "192.168.1.1", "private"},
	{"192.175.48.0/24", "192.175.48.1", ""},
	{"198.18.0.0/15", "198.19.0.1", "benchmarking"},
	{"198.51.100.0/24", "198.51.100.1", "documentation (TEST-NET-2)"},
	{"203.0.113.0/24", "203.0.113.1", "documentation (TEST-NET-3)"},
	{"240.0.0.0/4", "250.1.1.1", "reserved"},
	{"255.255.255.255/32", "255.255.255.255", "limited broadcast"},
	{"224.0.0.0/4", "239.255.255.250", "multicast"},

	// IPv6 Special-Purpose Address Registry.
	{"::/128", "::", "unspecified"},
	{"::1/128", "::1", "loopback"},
	{"::ffff:0:0/96", "::ffff:127.0.0.1", "loopback"},
	{"64:ff9b::/96", "64:ff9b::7f00:1", "loopback"},
	{"64:ff9b:1::/48", "64:ff9b:1::808:808", "local-use NAT64"},
	{"100::/64", "100::1", "discard-only"},
	{"100:0:0:1::/64", "100:0:0:1::1", "dummy IPv6"},
	{"2001::/23", "2001:100::1", "IETF protocol assignment"},
	{"2001::/32", "2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"}, // client ^0x80fffffe = 127.0.0.1
	{"2001:1::1/128", "2001:1::1", ""},
	{"2001:1::2/128", "2001:1::2", ""},
	{"2001:1::3/128", "2001:1::3", ""},
	{"2001:2::/48", "2001:2::1", "benchmarking"},
	{"2001:3::/32", "2001:3::1", ""},
	{"2001:4:112::/48", "2001:4:112::1", ""},
	{"2001:10::/28", "2001:10::1", "deprecated ORCHID"},
	{"2001:20::/28", "2001:20::1", ""},
	{"2001:30::/28", "2001:30::1", ""},
	{"2001:db8::/32", "2001:db8::1", "documentation"},
	{"2002::/16", "2002:7f00:1::1", "loopback"},
	{"2620:4f:8000::/48", "2620:4f:8000::1", ""},
	{"3fff::/20", "3fff:fff::1", "documentation"},
	{"5f00::/16", "5f00::1", "segment routing SID"},
	{"fc00::/7", "fd12:3456::1", "private (ULA)"},
	{"fe80::/10", "fe80::1", "link-local"},

	// Outside the registries.
	{"::/96", "::7f00:1", "loopback"},
	{"::ffff:0:0:0/96", "::ffff:0:7f00:1", "loopback"},
	{"fec0::/10", "fec0::1", "site-local (deprecated)"},
	{"ff00::/8", "ff02::1", "multicast"},
}

func TestClassifyRegistry(t *testing.T) {
	listed := map[netip.Prefix]bool{}
	for _, tc := range registryCases {
		listed[netip.MustParsePrefix(tc.cidr)] = true
		t.Run(tc.cidr, func(t *testing.T) {
			a := netip.MustParseAddr(tc.addr)
			if !netip.MustParsePrefix(tc.cidr).Contains(a) {
				t.Fatalf("test case: %s is not in %s", a, tc.cidr)
			}
			if got := Classify(a); got.Kind != tc.want {
				t.Errorf("Classify(%s) = %+v, want kind %q", a, got, tc.want)
			}
		})
	}
	// An entry added to the classifier needs a row here.
	for _, r := range addrRanges {
		if !listed[r.prefix] {
			t.Errorf("range %s (%s) has no test case", r.prefix, r.kind)
		}
	}
}

func TestClassifyEmbedded(t *testing.T) {
	tests := []struct {
		addr, kind, via, embedded string
	}{
		// The forms that reached a private, loopback or metadata address before.
		{"64:ff9b::7f00:1", "loopback", "NAT64", "127.0.0.1"},
		{"64:ff9b::a9fe:a9fe", "cloud metadata", "NAT64", "169.254.169.254"},
		{"64:ff9b::a00:1", "private", "NAT64", "10.0.0.1"},
		{"2002:7f00:1::1", "loopback", "6to4", "127.0.0.1"},
		{"2002:a9fe:a9fe::1", "cloud metadata", "6to4", "169.254.169.254"},
		{"::7f00:1", "loopback", "IPv4-compatible", "127.0.0.1"},
		{"::ffff:0:7f00:1", "loopback", "IPv4-translated", "127.0.0.1"},
		{"::ffff:169.254.169.254", "cloud metadata", "IPv4-mapped", "169.254.169.254"},
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", "private", "Teredo", "10.0.0.1"},
		{"64:ff9b:1::a00:1", "private", "local-use NAT64", "10.0.0.1"},
		{"fec0::1", "site-local (deprecated)", "", ""},
		// Public IPv4 inside the forms that are routed as such: judged by that address.
		{"64:ff9b::808:808", "", "", ""},
		{"2002:808:808::1", "", "", ""},
		{"2001:0:4136:e378:8000:63bf:f7f7:f7f7", "", "", ""}, // client 8.8.8.8
		{"::ffff:8.8.8.8", "", "", ""},
		// Public IPv4 inside forms that are never a public destination.
		{"::808:808", "IPv4-compatible", "", ""},
		{"::ffff:0:808:808", "IPv4-translated", "", ""},
		{"64:ff9b:1::808:808", "local-use NAT64", "", ""},
		// Ordinary public addresses.
		{"140.82.112.6", "", "", ""},
		{"2606:4700::1111", "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			c := Classify(netip.MustParseAddr(tc.addr))
			var emb string
			if c.Embedded.IsValid() {
				emb = c.Embedded.String()
			}
			if c.Kind != tc.kind || c.Via != tc.via || emb != tc.embedded {
				t.Errorf("Classify(%s) = %+v, want kind %q via %q embedded %q", tc.addr, c, tc.kind, tc.via, tc.embedded)
			}
		})
	}
}

func TestClassPhrase(t *testing.T) {
	if got, want := Classify(netip.MustParseAddr("64:ff9b::7f00:1")).Phrase(), "a NAT64 address that carries 127.0.0.1, a loopback address"; got != want {
		t.Errorf("Phrase = %q, want %q", got, want)
	}
	if got, want := Classify(netip.MustParseAddr("::1")).Phrase(), "a loopback address"; got != want {
		t.Errorf("Phrase = %q, want %q", got, want)
	}
	if got := Classify(netip.MustParseAddr("2606:4700::1111")).Phrase(); got != "" {
		t.Errorf("Phrase of a public address = %q", got)
	}
}

// TestDecideEmbedded checks the reasons the proxy, SOCKS5 and the provider give, through Decide.
func TestDecideEmbedded(t *testing.T) {
	p := Default()
	for _, host := range []string{"64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "::7f00:1", "::ffff:0:7f00:1", "fec0::1"} {
		d := p.Decide(Target{Host: host, Port: 80}, nil)
		if d.Allow || d.Code != CodeSpecialAddr || !strings.Contains(d.Reason, "which is refused unless an allow rule with a cidr covers it") {
			t.Errorf("%s: %+v, want refused as a special address", host, d)
		}
	}
	// A name whose AAAA record is one of them.
	d := p.Decide(Target{Host: "nat64.example", Port: 443}, []netip.Addr{netip.MustParseAddr("64:ff9b::a9fe:a9fe")})
	if d.Allow || !strings.Contains(d.Reason, "nat64.example resolves to 64:ff9b::a9fe:a9fe, a NAT64 address that carries 169.254.169.254, a cloud metadata address") {
		t.Errorf("name resolving to NAT64 metadata: %+v", d)
	}
	// A provider's --allow-targets public is the same classifier.
	public, err := ForTargets(TargetsPublic)
	if err != nil {
		t.Fatal(err)
	}
	if d := public.Decide(Target{Host: "2002:a9fe:a9fe::1", Port: 80}, nil); d.Allow || d.Code != CodeSpecialAddr {
		t.Errorf("--allow-targets public: 6to4 metadata %+v", d)
	}
	// An allow cidr rule covering the form lets it through.
	allow := mustParse(t, "mode: discovery\nallow:\n  - cidr: 64:ff9b::/96\n")
	if d := allow.Decide(Target{Host: "64:ff9b::7f00:1", Port: 80}, nil); !d.Allow {
		t.Errorf("covered by an allow cidr rule: %+v", d)
	}
}

// embedForms are the IPv6 forms that carry an IPv4 address, as functions building one.
var embedForms = []struct {
	name string
	make func(v4 [4]byte, salt [8]byte) netip.Addr
}{
	{"IPv4-mapped", func(v [4]byte, _ [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: v[0], 13: v[1], 14: v[2], 15: v[3]})
	}},
	{"NAT64", func(v [4]byte, _ [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0, 1: 0x64, 2: 0xff, 3: 0x9b, 12: v[0], 13: v[1], 14: v[2], 15: v[3]})
	}},
	{"local-use NAT64", func(v [4]byte, s [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0, 1: 0x64, 2: 0xff, 3: 0x9b, 4: 0, 5: 1, 6: s[0], 7: s[1], 8: s[2], 12: v[0], 13: v[1], 14: v[2], 15: v[3]})
	}},
	{"6to4", func(v [4]byte, s [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0x20, 1: 0x02, 2: v[0], 3: v[1], 4: v[2], 5: v[3], 6: s[0], 7: s[1], 8: s[2], 9: s[3], 10: s[4], 11: s[5], 12: s[6], 13: s[7], 15: 1})
	}},
	{"Teredo", func(v [4]byte, s [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 4: s[0], 5: s[1], 6: s[2], 7: s[3], 8: s[4], 9: s[5], 10: s[6], 11: s[7], 12: ^v[0], 13: ^v[1], 14: ^v[2], 15: ^v[3]})
	}},
	{"IPv4-compatible", func(v [4]byte, _ [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{12: v[0], 13: v[1], 14: v[2], 15: v[3]})
	}},
	{"IPv4-translated", func(v [4]byte, _ [8]byte) netip.Addr {
		return netip.AddrFrom16([16]byte{8: 0xff, 9: 0xff, 12: v[0], 13: v[1], 14: v[2], 15: v[3]})
	}},
}

// FuzzEmbeddedRefused checks that an IPv6 address carrying a refused IPv4 address (private,
// loopback, metadata, ...) in any embedding form is refused too, whatever the other bits are.
func FuzzEmbeddedRefused(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "10.0.0.1", "169.254.169.254", "192.168.1.1", "100.64.0.1", "0.0.0.0", "8.8.8.8", "172.16.0.1", "224.0.0.1"} {
		b := netip.MustParseAddr(s).As4()
		f.Add(uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]), uint64(0x0123456789abcdef))
	}
	f.Fuzz(func(t *testing.T, v4n uint32, salt uint64) {
		v4 := [4]byte{byte(v4n >> 24), byte(v4n >> 16), byte(v4n >> 8), byte(v4n)}
		var s [8]byte
		for i := range s {
			s[i] = byte(salt >> (8 * i))
		}
		inner := Classify(netip.AddrFrom4(v4))
		for _, form := range embedForms {
			a := form.make(v4, s)
			c := Classify(a)
			if inner.Refused() && !c.Refused() {
				t.Errorf("%s %s carries %s (%s) but is not refused", form.name, a, netip.AddrFrom4(v4), inner.Kind)
			}
			d := Default().Decide(Target{Host: a.String(), Port: 443}, nil)
			if inner.Refused() && d.Allow {
				t.Errorf("%s %s carries %s (%s) but Decide allows it: %+v", form.name, a, netip.AddrFrom4(v4), inner.Kind, d)
			}
		}
	})
}

// BenchmarkClassify is the classifier's cost per resolved address.
func BenchmarkClassify(b *testing.B) {
	addrs := []netip.Addr{netip.MustParseAddr("140.82.112.6"), netip.MustParseAddr("2606:4700::1111"), netip.MustParseAddr("64:ff9b::7f00:1")}
	for b.Loop() {
		for _, a := range addrs {
			Classify(a)
		}
	}
}
