package hostaddr

import (
	"errors"

	"golang.org/x/sys/unix"
)

// netlinkWatcher is a non-blocking rtnetlink socket subscribed to address changes: a message (or a
// lost one, ENOBUFS) since the last look means the list must be read again. Looking costs one
// recvfrom that does not block; no goroutine is needed.
type netlinkWatcher struct {
	fd  int
	buf []byte
}

// newChangeWatcher subscribes to IPv4 and IPv6 address changes, or returns nil when it cannot.
func newChangeWatcher() changeWatcher {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil
	}
	// The socket lives as long as the Set, which is process-wide.
	return &netlinkWatcher{fd: fd, buf: make([]byte, 8192)}
}

func (w *netlinkWatcher) changed() bool {
	changed := false
	for {
		n, _, err := unix.Recvfrom(w.fd, w.buf, 0)
		switch {
		case err == nil && n > 0:
			changed = true
		case err == nil:
			return true
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			return changed
		default:
			// ENOBUFS: messages were lost, so something changed; any other error: assume so too.
			return true
		}
	}
}
