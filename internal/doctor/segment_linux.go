package doctor

import (
	"net"
	"syscall"
)

// segmentSize is the maximum segment size of a TCP connection, 0 when unknown.
func segmentSize(c net.Conn) int {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var mss int
	raw.Control(func(fd uintptr) {
		if v, err := syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG); err == nil {
			mss = v
		}
	})
	return mss
}
