//go:build !linux

package relay

import "net"

// canSplice is false where io.Copy between sockets is a user-space copy anyway: copyBuffered then
// tells a failed read from a failed write.
const canSplice = false

// wasReset cannot tell a reset from a FIN without TCP_INFO: a reset that a read reports as a
// clean end is passed on as one.
func wasReset(net.Conn) bool { return false }
