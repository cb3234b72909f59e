package hostaddr

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeSource is an injected address list that counts reads.
type fakeSource struct {
	mu    sync.Mutex
	addrs []netip.Addr
	err   error
	reads int
}

func (f *fakeSource) read() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return f.addrs, f.err
}

func (f *fakeSource) set(err error, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs, f.err = nil, err
	for _, a := range addrs {
		f.addrs = append(f.addrs, netip.MustParseAddr(a))
	}
}

func TestOwnsInjected(t *testing.T) {
	src := &fakeSource{}
	src.set(nil, "192.31.196.1", "2001:4:112::1", "fe80::1%eth0")
	s := &Set{Read: src.read, MaxAge: time.Hour}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"192.31.196.1", true},
		{"::ffff:192.31.196.1", true},
		{"2001:4:112::1", true},
		{"fe80::1", true},
		{"192.31.196.2", false},
	} {
		if got := s.Owns(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Owns(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if src.reads != 1 {
		t.Errorf("%d reads within MaxAge, want 1", src.reads)
	}

	// After MaxAge the list is read again; a failed read keeps the last list.
	s.MaxAge = time.Nanosecond
	src.set(nil, "192.31.196.2")
	if !s.Owns(netip.MustParseAddr("192.31.196.2")) || s.Owns(netip.MustParseAddr("192.31.196.1")) {
		t.Error("a new address was not picked up after MaxAge")
	}
	src.set(errors.New("netlink: busy"))
	if !s.Owns(netip.MustParseAddr("192.31.196.2")) {
		t.Error("a failed read dropped the last list")
	}
}

func TestOwnsConcurrent(t *testing.T) {
	src := &fakeSource{}
	src.set(nil, "192.31.196.1")
	s := &Set{Read: src.read, MaxAge: time.Nanosecond}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if !s.Owns(netip.MustParseAddr("192.31.196.1")) {
					t.Error("Owns = false")
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkOwns is the cost a dial pays per resolved address: on Linux one non-blocking recvfrom
// on the netlink socket and a map lookup.
func BenchmarkOwns(b *testing.B) {
	s := Default()
	a := netip.MustParseAddr("192.31.196.1")
	s.Owns(a)
	for b.Loop() {
		s.Owns(a)
	}
}
