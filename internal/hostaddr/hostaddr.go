// Package hostaddr knows the addresses assigned to this machine's network interfaces, so that the
// dialer can refuse them like loopback: a service bound to [::] or 0.0.0.0 (the admin endpoint, a
// database) answers on every one of them, not only on 127.0.0.1. The list is read again when the
// kernel reports an address change (Linux) and in any case when it is older than MaxAge.
package hostaddr

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultMaxAge bounds how old the list may be when the system cannot report changes.
const DefaultMaxAge = 2 * time.Second

// Set is the machine's own addresses, kept current. Its methods are safe for concurrent use.
type Set struct {
	// MaxAge bounds how long a list is trusted; zero means DefaultMaxAge.
	MaxAge time.Duration
	// Read lists the addresses; nil means the addresses of every interface (net.InterfaceAddrs).
	Read func() ([]netip.Addr, error)

	mu      sync.Mutex
	addrs   map[netip.Addr]struct{}
	readAt  time.Time
	changes changeWatcher // nil until first use, or when the system cannot report changes
	started bool
}

// changeWatcher reports whether the machine's addresses may have changed since it last said so.
type changeWatcher interface {
	changed() bool
}

var (
	defaultOnce sync.Once
	defaultSet  *Set
)

// Default returns the process-wide Set of this machine's interface addresses.
func Default() *Set {
	defaultOnce.Do(func() { defaultSet = &Set{} })
	return defaultSet
}

// Owns reports whether a is assigned to one of this machine's interfaces. When the list cannot be
// read, it keeps the last one it had.
func (s *Set) Owns(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		s.started = true
		if s.Read == nil {
			s.changes = newChangeWatcher()
		}
	}
	maxAge := s.MaxAge
	if maxAge == 0 {
		maxAge = DefaultMaxAge
	}
	// Ask the watcher first, so that a change reported while reading is seen next time.
	stale := s.addrs == nil || time.Since(s.readAt) >= maxAge
	if s.changes != nil && s.changes.changed() {
		stale = true
	}
	if stale {
		s.refresh()
	}
	_, ok := s.addrs[a]
	return ok
}

func (s *Set) refresh() {
	read := s.Read
	if read == nil {
		read = interfaceAddrs
	}
	list, err := read()
	if err != nil && s.addrs != nil {
		return
	}
	m := make(map[netip.Addr]struct{}, len(list))
	for _, a := range list {
		m[a.Unmap().WithZone("")] = struct{}{}
	}
	s.addrs, s.readAt = m, time.Now()
}

func interfaceAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifaddrs))
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a)
			}
		}
	}
	return out, nil
}
