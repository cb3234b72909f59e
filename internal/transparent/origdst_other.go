//go:build !linux

package transparent

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst returns the destination that c had before the firewall redirected it; only Linux
// (netfilter's SO_ORIGINAL_DST) is supported.
func OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: transparent capture needs Linux (SO_ORIGINAL_DST)")
}
