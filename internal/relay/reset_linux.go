package relay

import (
	"net"

	"golang.org/x/sys/unix"
)

// canSplice: io.Copy between two *net.TCPConn uses splice(2) on Linux.
const canSplice = true

// wasReset reports whether a TCP connection that has just ended with EOF, and on which no FIN of
// ours has gone out, was in fact reset by its peer. A reset is reported as an error only once, to
// whichever system call comes first: when the relay's other direction wrote to the connection in
// between, its read here sees a clean end. The connection's state tells them apart: the peer's FIN
// leaves it in CLOSE_WAIT, a reset in CLOSE. (After a FIN of ours, a FIN too ends in CLOSE.)
func wasReset(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	reset := false
	rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		reset = err == nil && info.State == unix.BPF_TCP_CLOSE
	})
	return reset
}
