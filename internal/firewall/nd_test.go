package firewall

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// sendICMPv6 writes one ICMPv6 message of type typ with hop limit hl to dst out of interface
// ifindex through a raw socket, as an agent with CAP_NET_RAW can; it returns the send error
// (EPERM when the output hook refused it).
func sendICMPv6(t *testing.T, ifindex int, dst netip.Addr, hl int, typ byte) error {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	defer unix.Close(fd)
	for _, opt := range []int{unix.IPV6_UNICAST_HOPS, unix.IPV6_MULTICAST_HOPS} {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, opt, hl); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifindex); err != nil {
		t.Fatal(err)
	}
	target := netip.MustParseAddr("fd00:ed::2").As16()
	msg := append([]byte{typ, 0, 0, 0, 0, 0, 0, 0}, target[:]...)
	msg = append(msg, "data carried off-link"...)
	return unix.Sendto(fd, msg, 0, &unix.SockaddrInet6{Addr: dst.As16(), ZoneId: uint32(ifindex)})
}

// TestNeighbourDiscoveryRestricted: with the rules applied, a raw socket (CAP_NET_RAW) can send the
// neighbour solicitations and advertisements that neighbour discovery needs, and nothing else: not
// to an off-link address, not with another hop limit, not another ICMPv6 type. The namespace is the
// test's own; the only link is a veth pair inside it, and 2001:db8::/32 is routed onto it.
func TestNeighbourDiscoveryRestricted(t *testing.T) {
	requireRoot(t)
	const ns, na, echo = 135, 136, 128
	cases := []struct {
		dst  string
		hl   int
		typ  byte
		sent bool
	}{
		{"ff02::1:ff00:2", 255, ns, true}, // solicited-node multicast
		{"fe80::1", 255, ns, true},        // a link-local neighbour
		{"ff02::1", 255, na, true},        // unsolicited advertisement
		{"fe80::1", 255, na, true},        // answer to a link-local neighbour
		{"2001:db8::1", 255, ns, false},   // off-link: the old rules let this carry data out
		{"2001:db8::1", 255, na, false},
		{"ff02::1:ff00:2", 64, ns, false}, // not hop limit 255
		{"fe80::1", 1, na, false},
		{"fe80::1", 255, echo, false}, // not neighbour discovery
	}
	for _, format := range []Format{FormatIPTables, FormatNFTables} {
		t.Run(string(format), func(t *testing.T) {
			inNewNetns(t, func() {
				for _, args := range [][]string{
					{"link", "set", "lo", "up"},
					{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
					{"link", "set", "v0", "up"}, {"link", "set", "v1", "up"},
					{"addr", "add", "fd00:ed::1/64", "dev", "v0", "nodad"},
					{"-6", "route", "add", "2001:db8::/32", "dev", "v0"},
				} {
					if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
						t.Errorf("ip %v: %v %s", args, err, out)
						return
					}
				}
				if _, err := Apply(t.Context(), format, testConfig, nil); err != nil {
					t.Errorf("apply: %v", err)
					return
				}
				ifi, err := net.InterfaceByName("v0")
				if err != nil {
					t.Errorf("v0: %v", err)
					return
				}
				for _, c := range cases {
					err := sendICMPv6(t, ifi.Index, netip.MustParseAddr(c.dst), c.hl, c.typ)
					switch {
					case c.sent && err != nil:
						t.Errorf("type %d to %s hop limit %d: %v, want it sent", c.typ, c.dst, c.hl, err)
					case !c.sent && !errors.Is(err, unix.EPERM):
						t.Errorf("type %d to %s hop limit %d: %v, want EPERM (refused by the rules)", c.typ, c.dst, c.hl, err)
					}
				}
			})
		})
	}
}
