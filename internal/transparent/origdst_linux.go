package transparent

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h.
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination that c had before the firewall redirected it to this
// listener (iptables REDIRECT or nftables redirect: SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST for
// IPv6). A connection that was not redirected returns its own local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	v4 := local != nil && local.IP.To4() != nil
	var ap netip.AddrPort
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		if v4 {
			// sockaddr_in is 16 bytes, the size of an IPv6Mreq: family, port, address, padding.
			m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.IPPROTO_IP, unix.SO_ORIGINAL_DST)
			if err != nil {
				sockErr = err
				return
			}
			b := m.Multiaddr
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			return
		}
		// sockaddr_in6 (28 bytes) is the head of an IPv6MTUInfo.
		m, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.IPPROTO_IPV6, ip6tSOOriginalDst)
		if err != nil {
			sockErr = err
			return
		}
		// The port field holds the bytes of network order.
		var port [2]byte
		binary.NativeEndian.PutUint16(port[:], m.Addr.Port)
		ap = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr).Unmap(), binary.BigEndian.Uint16(port[:]))
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination (SO_ORIGINAL_DST): %w", err)
	}
	return ap, nil
}
