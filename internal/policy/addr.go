package policy

import (
	"net/netip"
	"slices"
	"strings"
)

// This file is swarm-proxy's one address classifier: the proxy, SOCKS5, a provider's
// --allow-targets, `policy explain` and `policy generate` all ask Classify whether an address is a
// public destination. The tables below follow the IANA IPv4 and IPv6 Special-Purpose Address
// Registries: an entry whose "Globally Reachable" column is False or N/A is refused unless an allow
// cidr rule covers the address; an entry marked True inside a larger refused block (the anycast
// services in 192.0.0.0/24 and 2001::/23) is public. Address forms that carry an IPv4 address
// inside an IPv6 one are refused when the IPv4 address they carry is, because that is where a
// translator or relay delivers the packets: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4 and Teredo
// are otherwise judged by that address alone (the table marks them global), while local-use
// NAT64, IPv4-compatible and IPv4-translated addresses are refused in any case. A policy adds the
// NAT64 prefixes of its own network (nat64_prefixes, RFC 6052), and matches its deny cidr rules
// against the carried IPv4 address as well as the IPv6 one (Policy.Classify, Policy.Carried).

// embedding says where an IPv6 range carries an IPv4 address.
type embedding int

const (
	embedNone   embedding = iota
	embedLow32            // the last 32 bits (NAT64 /96, IPv4-compatible, IPv4-translated)
	embed6to4             // bits 16 to 47 (2002:V4ADDR::/48)
	embedTeredo           // the last 32 bits inverted: the Teredo client's public address
)

// addrRange is one entry of the classifier's table.
type addrRange struct {
	prefix netip.Prefix
	kind   string // what the range is, as in "a <kind> address"
	global bool   // IANA "Globally Reachable": true means a public destination
	embed  embedding
}

// addrRanges lists the IANA special-purpose entries, the multicast blocks, the deprecated
// site-local block and the IPv4-embedding forms. Classify picks the longest prefix that contains an
// address, so the global anycast entries inside refused blocks win over the block.
var addrRanges = func() []addrRange {
	list := []struct {
		cidr, kind string
		global     bool
		embed      embedding
	}{
		// IPv4 Special-Purpose Address Registry.
		{"0.0.0.0/8", "this-network", false, embedNone},
		{"0.0.0.0/32", "unspecified", false, embedNone},
		{"10.0.0.0/8", "private", false, embedNone},
		{"100.64.0.0/10", "carrier-grade NAT", false, embedNone},
		{"127.0.0.0/8", "loopback", false, embedNone},
		{"169.254.0.0/16", "link-local", false, embedNone},
		{"172.16.0.0/12", "private", false, embedNone},
		{"192.0.0.0/24", "IETF protocol assignment", false, embedNone},
		{"192.0.0.0/29", "IPv4 service continuity (DS-Lite)", false, embedNone},
		{"192.0.0.8/32", "IPv4 dummy", false, embedNone},
		{"192.0.0.9/32", "PCP anycast", true, embedNone},
		{"192.0.0.10/32", "TURN anycast", true, embedNone},
		{"192.0.0.170/31", "NAT64/DNS64 discovery", false, embedNone},
		{"192.0.2.0/24", "documentation (TEST-NET-1)", false, embedNone},
		{"192.31.196.0/24", "AS112", true, embedNone},
		{"192.52.193.0/24", "AMT", true, embedNone},
		{"192.88.99.0/24", "deprecated 6to4 relay anycast", false, embedNone},
		{"192.168.0.0/16", "private", false, embedNone},
		{"192.175.48.0/24", "AS112 direct delegation", true, embedNone},
		{"198.18.0.0/15", "benchmarking", false, embedNone},
		{"198.51.100.0/24", "documentation (TEST-NET-2)", false, embedNone},
		{"203.0.113.0/24", "documentation (TEST-NET-3)", false, embedNone},
		{"240.0.0.0/4", "reserved", false, embedNone},
		{"255.255.255.255/32", "limited broadcast", false, embedNone},
		// Not in the registry, never a unicast destination.
		{"224.0.0.0/4", "multicast", false, embedNone},

		// IPv6 Special-Purpose Address Registry.
		{"::/128", "unspecified", false, embedNone},
		{"::1/128", "loopback", false, embedNone},
		{"::ffff:0:0/96", "IPv4-mapped", true, embedLow32},
		{"64:ff9b::/96", "NAT64", true, embedLow32},
		{"64:ff9b:1::/48", "local-use NAT64", false, embedLow32},
		{"100::/64", "discard-only", false, embedNone},
		{"100:0:0:1::/64", "dummy IPv6", false, embedNone},
		{"2001::/23", "IETF protocol assignment", false, embedNone},
		{"2001::/32", "Teredo", true, embedTeredo},
		{"2001:1::1/128", "PCP anycast", true, embedNone},
		{"2001:1::2/128", "TURN anycast", true, embedNone},
		{"2001:1::3/128", "DNS-SD SRP anycast", true, embedNone},
		{"2001:2::/48", "benchmarking", false, embedNone},
		{"2001:3::/32", "AMT", true, embedNone},
		{"2001:4:112::/48", "AS112", true, embedNone},
		{"2001:10::/28", "deprecated ORCHID", false, embedNone},
		{"2001:20::/28", "ORCHIDv2", true, embedNone},
		{"2001:30::/28", "drone remote ID", true, embedNone},
		{"2001:db8::/32", "documentation", false, embedNone},
		{"2002::/16", "6to4", true, embed6to4},
		{"2620:4f:8000::/48", "AS112 direct delegation", true, embedNone},
		{"3fff::/20", "documentation", false, embedNone},
		{"5f00::/16", "segment routing SID", false, embedNone},
		{"fc00::/7", "private (ULA)", false, embedNone},
		{"fe80::/10", "link-local", false, embedNone},
		// Deprecated or outside the registry, and never a public destination.
		{"::/96", "IPv4-compatible", false, embedLow32},
		{"::ffff:0:0:0/96", "IPv4-translated", false, embedLow32},
		{"fec0::/10", "site-local (deprecated)", false, embedNone},
		{"ff00::/8", "multicast", false, embedNone},
	}
	out := make([]addrRange, len(list))
	for i, r := range list {
		out[i] = addrRange{netip.MustParsePrefix(r.cidr), r.kind, r.global, r.embed}
	}
	return out
}()

// ranges4 and ranges6 are addrRanges by family, longest prefix first, so that the first range
// that contains an address is the most specific (two ranges of one length never overlap).
var ranges4, ranges6 = func() (v4, v6 []addrRange) {
	for _, r := range addrRanges {
		if r.prefix.Addr().Is4() {
			v4 = append(v4, r)
		} else {
			v6 = append(v6, r)
		}
	}
	longestFirst := func(a, b addrRange) int { return b.prefix.Bits() - a.prefix.Bits() }
	slices.SortStableFunc(v4, longestFirst)
	slices.SortStableFunc(v6, longestFirst)
	return v4, v6
}()

// metadataAddrs are the cloud instance-metadata endpoints, named in reasons because they are the
// classic SSRF target.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("169.254.170.2"),
	netip.MustParseAddr("100.100.100.200"),
}

// ThisMachine is how a reason names an address assigned to the dialing machine's own interfaces.
const ThisMachine = "an address of this machine"

// Class is what the classifier says about one address.
type Class struct {
	// Kind says why the address is not a public destination ("loopback", "private",
	// "documentation", ...); "" for a public unicast address.
	Kind string
	// Via names the IPv6 form that carried the IPv4 address the verdict is about ("NAT64",
	// "6to4", "Teredo", ...); "" when the address was judged as it is.
	Via string
	// Embedded is the IPv4 address found inside the IPv6 one when Via is set.
	Embedded netip.Addr
}

// Refused reports whether the address is refused unless an allow cidr rule covers it.
func (c Class) Refused() bool { return c.Kind != "" }

// Phrase describes the address for a reason: "a loopback address", or "a NAT64 address that
// carries 127.0.0.1, a loopback address"; "" for a public address.
func (c Class) Phrase() string {
	switch {
	case c.Kind == "":
		return ""
	case c.Via == "":
		return article(c.Kind) + " address"
	}
	return article(c.Via) + " address that carries " + c.Embedded.String() + ", " + article(c.Kind) + " address"
}

// Classify says whether addr is a public destination, and if not, why.
func Classify(addr netip.Addr) Class {
	if !addr.IsValid() {
		return Class{Kind: "invalid"}
	}
	addr = addr.WithZone("")
	if slices.Contains(metadataAddrs, addr) {
		return Class{Kind: "cloud metadata"}
	}
	r := longestMatch(addr)
	if r == nil {
		return Class{}
	}
	if r.embed != embedNone {
		v4 := embedded(addr, r.embed)
		if inner := Classify(v4); inner.Refused() {
			return Class{Kind: inner.Kind, Via: r.kind, Embedded: v4}
		}
	}
	if r.global {
		return Class{}
	}
	return Class{Kind: r.kind}
}

// Carried returns the IPv4 address that an IPv6 address is delivered to, in the forms of the table
// that reach the IPv4 internet (NAT64 64:ff9b::/96, 6to4, Teredo), and the form's name; an invalid
// address and "" for any other address. The forms refused in any case (local-use NAT64,
// IPv4-compatible, IPv4-translated) are not among them: only a rule for the IPv6 address admits one.
func Carried(addr netip.Addr) (netip.Addr, string) {
	if !addr.Is6() || addr.Is4In6() {
		return netip.Addr{}, ""
	}
	if r := longestMatch(addr.WithZone("")); r != nil && r.embed != embedNone && r.global {
		return embedded(addr, r.embed), r.kind
	}
	return netip.Addr{}, ""
}

// nat64Lengths are the prefix lengths RFC 6052 defines for IPv4-embedded IPv6 addresses.
var nat64Lengths = []int{32, 40, 48, 56, 64, 96}

// nat64Embedded extracts the IPv4 address that addr carries under a NAT64 prefix of bits bits
// (one of nat64Lengths), as RFC 6052 section 2.2 lays it out: the 32 bits follow the prefix,
// skipping bits 64 to 71 (the "u" octet).
func nat64Embedded(addr netip.Addr, bits int) netip.Addr {
	b := addr.As16()
	var v4 [4]byte
	i := bits / 8
	for n := range v4 {
		if i == 8 {
			i++
		}
		v4[n] = b[i]
		i++
	}
	return netip.AddrFrom4(v4)
}

// SpecialKind says why addr is not a public destination, or returns "" for a public unicast
// address. It is Classify(addr) in a few words, for reasons and comments.
func SpecialKind(addr netip.Addr) string {
	c := Classify(addr)
	if c.Via != "" {
		return c.Kind + " (via " + c.Via + " " + c.Embedded.String() + ")"
	}
	return c.Kind
}

func longestMatch(addr netip.Addr) *addrRange {
	table := ranges6
	if addr.Is4() {
		table = ranges4
	}
	for i := range table {
		if table[i].prefix.Contains(addr) {
			return &table[i]
		}
	}
	return nil
}

// embedded extracts the IPv4 address that an IPv6 address carries in the way e says.
func embedded(a netip.Addr, e embedding) netip.Addr {
	b := a.As16()
	var v4 [4]byte
	switch e {
	case embed6to4:
		copy(v4[:], b[2:6])
	case embedTeredo:
		for i := range v4 {
			v4[i] = ^b[12+i]
		}
	default:
		copy(v4[:], b[12:16])
	}
	return netip.AddrFrom4(v4)
}

// article puts "a" or "an" before a noun phrase.
func article(s string) string {
	if s != "" && strings.ContainsRune("aeiouAEIOU", rune(s[0])) {
		return "an " + s
	}
	return "a " + s
}
