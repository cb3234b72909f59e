package policy

import "net/netip"

// specialRange is an address range that is refused unless a cidr allow rule covers it.
type specialRange struct {
	prefix netip.Prefix
	what   string
}

var specialRanges = func() []specialRange {
	list := []struct{ cidr, what string }{
		{"0.0.0.0/8", "unspecified"},
		{"10.0.0.0/8", "private"},
		{"100.64.0.0/10", "carrier-grade NAT"},
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local"},
		{"172.16.0.0/12", "private"},
		{"192.0.0.0/24", "IETF protocol assignments"},
		{"192.168.0.0/16", "private"},
		{"198.18.0.0/15", "benchmarking"},
		{"224.0.0.0/4", "multicast"},
		{"240.0.0.0/4", "reserved"},
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"64:ff9b:1::/48", "local-use NAT64"},
		{"fc00::/7", "private (ULA)"},
		{"fe80::/10", "link-local"},
		{"ff00::/8", "multicast"},
	}
	out := make([]specialRange, len(list))
	for i, r := range list {
		out[i] = specialRange{netip.MustParsePrefix(r.cidr), r.what}
	}
	return out
}()

// metadataAddrs are the cloud instance-metadata endpoints, named in reasons because they are the
// classic SSRF target.
var metadataAddrs = map[netip.Addr]bool{
	netip.MustParseAddr("169.254.169.254"): true,
	netip.MustParseAddr("fd00:ec2::254"):   true,
	netip.MustParseAddr("169.254.170.2"):   true,
	netip.MustParseAddr("100.100.100.200"): true,
}

// SpecialKind says why addr is not a public destination ("loopback", "private", "link-local", ...),
// or returns "" for a public unicast address.
func SpecialKind(addr netip.Addr) string {
	addr = addr.Unmap()
	if metadataAddrs[addr] {
		return "cloud metadata"
	}
	for _, r := range specialRanges {
		if r.prefix.Contains(addr) {
			return r.what
		}
	}
	return ""
}
