//go:build !linux

package doctor

import "net"

// segmentSize is the maximum segment size of a TCP connection, 0 when unknown: only Linux, where
// transparent capture runs, says.
func segmentSize(net.Conn) int { return 0 }
